"""The cached allowed set: any write that changes what a user may see is seen by the very next search.

The Searcher caches, per (groups, filters), the chunk ids a search may rank, keyed by the KB's search
generation (database triggers, migration 0007). These tests make writes through plain ORM rows, as any
write path might, and check that the next dense search on the SAME Searcher follows them (SQLite and Postgres).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from kb_pipeline.enrich.shared_pass import enrich, load_task_models
from kb_pipeline.indexing import sync
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.search.hybrid import Filters, Searcher
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import (
    Document,
    DocumentAcl,
    GoldTag,
    PredictedLabel,
    ReviewLabel,
    SearchGeneration,
    User,
)
from tiny_models import single_threaded, tiny_bert_backbone

WORDS = ["leave", "deploy", "invoice", "contract", "laptop", "incident"]


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def backbone():
    return tiny_bert_backbone()


def write_doc(root: Path, i: int, acl: str = "") -> None:
    word = WORDS[i % len(WORDS)]
    front = f"---\ntitle: Note {i}\ntags: [{word}]\n{acl}---\n"
    body = " ".join(f"The {word} procedure step {j} for team {i}." for j in range(12))
    (root / f"doc-{i}.md").write_text(f"{front}{body}\n", encoding="utf-8")


@pytest.fixture
def kb(settings, tmp_path, backbone):
    root = tmp_path / "c"
    root.mkdir()
    for i in range(8):
        write_doc(root, i, "acl: [hr]\n" if i == 7 else "")
    ingest(settings, [root])
    models = load_task_models(settings, backbone)
    enrich(settings, models=models)
    searcher = Searcher(models.embed, sync.load_live_index(settings, models.embed_key))
    return settings, models, searcher, root


def titles(settings, searcher, filters: Filters | None = None, k=20, mode="dense") -> set[str]:
    with session_factory(settings)() as s:
        return {r["title"] for r in searcher.search(s, "procedure step", k=k, mode=mode, filters=filters or Filters())}


def doc_id(settings, title: str) -> int:
    with session_factory(settings)() as s:
        return s.scalar(select(Document.id).where(Document.title == title))


def test_acl_deletion_and_label_changes_are_seen_by_the_next_search(kb):
    settings, _, searcher, _ = kb
    everyone = {f"Note {i}" for i in range(7)}
    assert titles(settings, searcher) == everyone
    assert titles(settings, searcher) == everyone and searcher.allowed.hits >= 1  # the second search used the cache
    three = doc_id(settings, "Note 3")

    with session_factory(settings).begin() as s:  # an ACL added behind the search's back
        s.add(DocumentAcl(document_id=three, group_name="finance"))
    assert titles(settings, searcher) == everyone - {"Note 3"}
    assert "Note 3" in titles(settings, searcher, Filters(groups=("finance",)))

    with session_factory(settings).begin() as s:  # and removed again
        s.execute(delete(DocumentAcl).where(DocumentAcl.document_id == three))
    assert titles(settings, searcher) == everyone

    with session_factory(settings).begin() as s:  # a document deleted (its vectors are still in the index)
        s.execute(update(Document).where(Document.id == three).values(status="deleted"))
    assert titles(settings, searcher) == everyone - {"Note 3"}

    leave = Filters(tags=("leave",))  # docs 0 and 6 carry the tag in front matter
    assert titles(settings, searcher, leave) == {"Note 0", "Note 6"}
    one = doc_id(settings, "Note 1")
    with session_factory(settings).begin() as s:  # a model's applied tag
        s.add(PredictedLabel(document_id=one, kind="tag", label="leave", score=0.9, adapter_version=1,
                             document_version=1, status="applied"))
    assert titles(settings, searcher, leave) == {"Note 0", "Note 1", "Note 6"}
    with session_factory(settings).begin() as s:  # rejected by a reviewer
        s.add(ReviewLabel(document_id=one, kind="tag", label="leave", verdict="reject", reviewer="ana",
                          document_version=1, content_sha256="0" * 64))
    assert titles(settings, searcher, leave) == {"Note 0", "Note 6"}
    with session_factory(settings).begin() as s:  # a gold tag taken away
        s.execute(delete(GoldTag).where(GoldTag.document_id == doc_id(settings, "Note 6")))
    assert titles(settings, searcher, leave) == {"Note 0"}


def test_a_new_document_is_found_by_the_next_search(kb):
    settings, models, searcher, root = kb
    assert titles(settings, searcher, Filters(tags=("invoice",))) == {"Note 2"}
    write_doc(root, 8)  # "invoice" again
    ingest(settings, [root])
    enrich(settings, models=models)
    searcher.index = sync.load_live_index(settings, models.embed_key)  # same Searcher, same cache
    assert titles(settings, searcher, Filters(tags=("invoice",))) == {"Note 2", "Note 8"}
    assert "Note 8" in titles(settings, searcher)


def test_every_relevant_write_changes_the_generation_and_others_do_not(kb):
    settings, *_ = kb
    three = doc_id(settings, "Note 3")

    def current() -> int:
        with session_factory(settings)() as s:
            return s.scalar(select(SearchGeneration.value).where(SearchGeneration.id == 1))

    seen = [current()]
    writes = [
        lambda s: s.add(DocumentAcl(document_id=three, group_name="legal")),
        lambda s: s.execute(update(Document).where(Document.id == three).values(title="Renamed")),
        lambda s: s.add(GoldTag(document_id=three, tag="extra")),
        lambda s: s.add(ReviewLabel(document_id=three, kind="tag", label="extra", verdict="accept", reviewer="ana",
                                    document_version=1, content_sha256="0" * 64)),
    ]
    for make in writes:
        with session_factory(settings).begin() as s:
            make(s)
        seen.append(current())
    assert len(set(seen)) == len(seen)  # each committed write gave a new value
    with session_factory(settings).begin() as s:
        s.add(User(name="zed"))  # users are not part of the allowed set (groups are resolved per request)
    assert current() == seen[-1]


def test_a_rolled_back_write_never_reaches_other_searches(kb):
    settings, _, searcher, _ = kb
    everyone = {f"Note {i}" for i in range(7)}
    assert titles(settings, searcher) == everyone
    five = doc_id(settings, "Note 5")
    with session_factory(settings)() as s:
        s.add(DocumentAcl(document_id=five, group_name="secret"))
        s.flush()  # written, not committed: this session's own search must not see Note 5 ...
        inside = {r["title"] for r in searcher.search(s, "procedure step", k=20, mode="dense")}
        assert inside == everyone - {"Note 5"}
        s.rollback()
    assert titles(settings, searcher) == everyone  # ... and nobody else may inherit what it saw
    with session_factory(settings).begin() as s:  # the next committed write must not meet that set either
        s.execute(update(Document).where(Document.id == doc_id(settings, "Note 4")).values(status="deleted"))
    assert titles(settings, searcher) == everyone - {"Note 4"}


def test_open_searcher_serves_queries_through_the_onnx_encoder_with_the_same_results(kb):
    pytest.importorskip("onnxruntime")
    from kb_pipeline.search.hybrid import open_searcher

    settings, models, torch_searcher, _ = kb
    fast = open_searcher(settings, models, fast_path="wait")
    encoder = fast.embed.__self__
    assert encoder.fast, encoder.status
    assert (settings.home / "query_encoder" / encoder.path.name).exists()  # cached for the next process
    with session_factory(settings)() as s:
        for query in ("leave procedure", "invoice step for team 2", "laptop"):
            # a random tiny model leaves near-ties that float rounding may swap: compare the dense scores in
            # rank order (equal up to rounding whichever tied document comes first) and the hybrid top-k sets
            got = [r["score"] for r in fast.search(s, query, k=5, mode="dense")]
            want = [r["score"] for r in torch_searcher.search(s, query, k=5, mode="dense")]
            assert got == pytest.approx(want, abs=1e-4)
            got_ids = {r["doc_id"] for r in fast.search(s, query, k=5, mode="hybrid")}
            want_ids = {r["doc_id"] for r in torch_searcher.search(s, query, k=5, mode="hybrid")}
            assert len(got_ids & want_ids) >= 4
    assert open_searcher(settings, models, fast_path="off").embed == models.embed  # torch only
    with pytest.raises(ValueError, match="fast_path"):
        open_searcher(settings, models, fast_path="sometimes")
