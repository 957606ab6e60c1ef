"""The throwaway KB an eval trains in, and the few things done to it that a normal KB never sees.

The scratch home is a temporary folder with its own SQLite file, adapters and index. The user's
settings contribute only the backbone choice (and, read-only, an already converted SmolLM2 under
their models folder), so an eval never writes to the user's KB_HOME or database.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import delete, select, update

from kb_pipeline.config import Settings
from kb_pipeline.evaluation.split import GoldDoc
from kb_pipeline.store.db import get_engine, session_factory, upgrade
from kb_pipeline.store.queries import gold_tags_by_document
from kb_pipeline.store.schema import Document, DocumentAcl, GoldLabel, GoldTag


def scratch_backbone(settings: Settings) -> tuple[str, str | None]:
    """(KB_BACKBONE value for the scratch KB, a note for the report or None).

    A SmolLM2 already converted under the user's models folder is used from there (read only);
    otherwise the scratch KB converts its own copy, which costs time but writes nothing of the user's.
    """
    if settings.backbone != "smollm2":
        return settings.backbone, None
    from kb_pipeline.backbone.gguf import is_converted

    target = settings.models_dir / "smollm2"
    if is_converted(target):
        return str(target), None
    return "smollm2", (
        f"SmolLM2 was not yet converted under {settings.models_dir}; the eval converted a temporary copy "
        "(any other kb command converts it once for good)"
    )


@contextmanager
def scratch_kb(settings: Settings, keep: bool = False) -> Iterator[Settings]:
    """Settings for a new, initialised SQLite KB in a temporary folder, removed afterwards unless `keep`."""
    home = Path(tempfile.mkdtemp(prefix="kb-eval-")).resolve()
    backbone, _ = scratch_backbone(settings)
    scratch = settings.with_(home=home, database_url=f"sqlite:///{home / 'kb.sqlite3'}", backbone=backbone)
    try:
        upgrade(scratch.database_url)
        yield scratch
    finally:
        get_engine(scratch.database_url).dispose()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


def read_gold(settings: Settings) -> list[GoldDoc]:
    """Every active document with its gold labels, in id order."""
    with session_factory(settings)() as session:
        tags = gold_tags_by_document(session)
        rows = session.execute(
            select(Document.id, Document.uri, Document.title, Document.text, GoldLabel.category, GoldLabel.summary)
            .outerjoin(GoldLabel, GoldLabel.document_id == Document.id)
            .where(Document.status == "active")
            .order_by(Document.id)
        ).all()
    return [
        GoldDoc(doc_id, uri, title, text, category or None, tuple(tags.get(doc_id, ())), summary or None)
        for doc_id, uri, title, text, category, summary in rows
    ]


def withhold_labels(settings: Settings, doc_ids: Sequence[int]) -> None:
    """Delete the gold labels of the held-out documents (scratch KB only): nothing downstream can see them."""
    ids = list(doc_ids)
    with session_factory(settings).begin() as session:
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            session.execute(delete(GoldTag).where(GoldTag.document_id.in_(batch)))
            session.execute(delete(GoldLabel).where(GoldLabel.document_id.in_(batch)))


@contextmanager
def hidden(settings: Settings, doc_ids: Sequence[int]) -> Iterator[None]:
    """Documents invisible to training and enrichment for the block (status 'deleted', chunks kept)."""
    ids = list(doc_ids)
    _set_status(settings, ids, "deleted")
    try:
        yield
    finally:
        _set_status(settings, ids, "active")


def _set_status(settings: Settings, ids: list[int], status: str) -> None:
    with session_factory(settings).begin() as session:
        for start in range(0, len(ids), 500):
            session.execute(update(Document).where(Document.id.in_(ids[start : start + 500])).values(status=status))


def acl_groups(settings: Settings) -> tuple[str, ...] | None:
    """Every group named in an ACL, so an eval's searches may read every document (None: no ACLs at all)."""
    with session_factory(settings)() as session:
        groups = sorted(set(session.scalars(select(DocumentAcl.group_name))))
    return tuple(groups) or None


def predictions(settings: Settings, doc_ids: Sequence[int]) -> dict[int, dict]:
    """doc id -> {"category", "tags", "summary"} as enrichment stored them (via `kb export`'s rows)."""
    from kb_pipeline.search.export import export_rows

    wanted = set(doc_ids)
    out = {}
    with session_factory(settings)() as session:
        for row in export_rows(session):
            if row["id"] in wanted:
                p = row["predicted"]
                out[row["id"]] = {
                    "category": p["category"],
                    "category_score": p["category_score"],
                    "needs_review": row.get("needs_review", False),
                    "tags": tuple(t["tag"] for t in p["tags"]),
                    "summary": p["summary"],
                }
    return out


def training_history(settings: Settings, version_ids: dict[str, int]) -> dict[str, dict]:
    """task -> the registered version's history (per-step losses, per-epoch validation metrics)."""
    from kb_pipeline.store.schema import AdapterVersion

    out = {}
    with session_factory(settings)() as session:
        for task, version_id in version_ids.items():
            row = session.get(AdapterVersion, version_id)
            if row is not None:
                out[task] = dict(row.history or {}) | {
                    "path": row.path, "train_documents": row.train_documents, "val_documents": row.val_documents,
                    "train_config": dict(row.train_config or {}), "adapter_config": dict(row.adapter_config or {}),
                }
    return out
