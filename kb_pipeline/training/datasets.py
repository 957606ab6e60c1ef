"""Database rows -> training examples, with a deterministic train/validation split by document id.

The split hashes the document id, so a document stays on the same side across runs and machines
(adding documents never moves old ones between train and validation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from kb_pipeline.store.queries import gold_tags_by_document
from kb_pipeline.store.schema import Chunk, Document, GoldLabel
from kb_pipeline.tasks.chunks import CLASSIFY_CHUNKS
from kb_pipeline.tasks.encoding import model_input
from kb_pipeline.training.base import ClassifyExample, SummaryExample

VAL_SHARE = 0.2

T = TypeVar("T")


@dataclass
class Split(Generic[T]):
    train: list[T] = field(default_factory=list)
    val: list[T] = field(default_factory=list)
    train_docs: int = 0
    val_docs: int = 0


def split_fraction(key: int | str, salt: str = "kb-split") -> float:
    """A stable number in [0, 1) for a key: the one hash split (training's, and `kb eval`'s with its own salt)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_ids(
    doc_ids: Sequence[int], share: float = VAL_SHARE, keys: dict[int, str] | None = None
) -> set[int]:
    """Documents whose hash falls below `share`; at least one when there are two or more documents.

    `keys` (document id -> path relative to its source, see document_keys) makes the split depend on
    the files rather than on database ids, so the same folder splits the same way in any database
    (SQLite or Postgres, ingested in any order or in parallel).
    """
    fraction = (lambda d: split_fraction(keys[d])) if keys is not None else split_fraction  # noqa: E731
    val = {d for d in doc_ids if fraction(d) < share}
    if not val and len(doc_ids) >= 2:
        val = {min(doc_ids, key=fraction)}
    if len(val) == len(doc_ids) and len(doc_ids) >= 2:
        val.discard(max(doc_ids, key=fraction))
    return val


def document_keys(session: Session, doc_ids: Sequence[int]) -> dict[int, str]:
    """document id -> its path relative to its source: the stable identity the split and order use."""
    wanted = set(doc_ids)
    rows = session.execute(select(Document.id, Document.uri))
    return {doc_id: uri for doc_id, uri in rows if doc_id in wanted}


def classify_data(session: Session) -> Split[ClassifyExample]:
    """Documents with a gold category (front matter, else a person's review): title + text, and their chunks
    as stored, up to CLASSIFY_CHUNKS (what the classifier reads)."""
    from kb_pipeline.store.queries import gold_categories

    categories = gold_categories(session)
    rows = session.execute(
        select(Document.id, Document.title, Document.text).where(Document.status == "active").order_by(Document.id)
    ).all()
    rows = [r for r in rows if r[0] in categories]
    tags = gold_tags_by_document(session)
    first = _chunk_rows(session, [r[0] for r in rows], max_ordinal=CLASSIFY_CHUNKS)
    examples = {
        doc_id: ClassifyExample(
            model_input(title, text), categories[doc_id][0], tuple(tags.get(doc_id, ())),
            tuple(chunk_text for chunk_text, _, _ in first.get(doc_id, ())),
        )
        for doc_id, title, text in rows
    }
    return _split(examples, session)


def summarise_data(session: Session) -> Split[SummaryExample]:
    """Documents with a gold summary, with their chunks' char spans (sentences are read inside them)."""
    rows = session.execute(
        select(Document.id, Document.text, GoldLabel.summary)
        .join(GoldLabel, GoldLabel.document_id == Document.id)
        .where(Document.status == "active", GoldLabel.summary.is_not(None), GoldLabel.summary != "")
        .order_by(Document.id)
    ).all()
    chunks = _chunk_rows(session, [r[0] for r in rows])
    return _split(
        {
            doc_id: SummaryExample(text, summary, tuple((a, b) for _, a, b in chunks.get(doc_id, ())))
            for doc_id, text, summary in rows
        },
        session,
    )


def _chunk_rows(
    session: Session, doc_ids: Sequence[int], max_ordinal: int | None = None
) -> dict[int, list[tuple[str, int, int]]]:
    """document id -> [(text, char_start, char_end)] of its chunks in order (only the first max_ordinal)."""
    query = select(Chunk.document_id, Chunk.text, Chunk.char_start, Chunk.char_end).order_by(
        Chunk.document_id, Chunk.ordinal
    )
    if max_ordinal is not None:
        query = query.where(Chunk.ordinal < max_ordinal)
    wanted = set(doc_ids)
    out: dict[int, list[tuple[str, int, int]]] = {}
    for doc_id, text, start, end in session.execute(query):
        if doc_id in wanted:
            out.setdefault(doc_id, []).append((text, start, end))
    return out


def _split(examples: dict[int, T], session: Session) -> Split[T]:
    keys = document_keys(session, list(examples))
    val_ids = validation_ids(list(examples), keys=keys)
    split: Split[T] = Split()
    for doc_id in sorted(examples, key=lambda d: keys[d]):  # file order, not insertion order
        (split.val if doc_id in val_ids else split.train).append(examples[doc_id])
    split.val_docs = len(val_ids)
    split.train_docs = len(examples) - len(val_ids)
    return split
