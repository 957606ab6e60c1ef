"""The review queue and label provenance (kb_pipeline.review) on both storage backends.

Documents and predictions are written straight into the store (no model): the queue's order, its access
rule and the provenance it reports depend only on the rows, which is what the web pages and `kb review` read.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from kb_pipeline.review import document_label_view, queue_counts, review_queue
from kb_pipeline.store import outputs, repo, reviews
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.queries import gold_categories, gold_tags_by_document
from kb_pipeline.store.schema import AdapterVersion, Document, Source


def _doc(name: str, category: str | None = None, tags=(), acl=()) -> repo.NewDocument:
    return repo.NewDocument(
        uri=f"{name}.md", path=f"/kb/{name}.md", title=f"Title {name}", mime="text/markdown", size=10, mtime=1.0,
        sha256=f"{name:0<64}"[:64], text=f"text of {name}", metadata={}, category=category, tags=list(tags),
        summary=None, acl=list(acl), chunks=[],
    )


def _prediction(doc_id: int, category: str, score: float, *, margin=None, abstained=False, tags=(), near=()):
    return {"document_id": doc_id, "document_version": 1, "category": category, "category_score": score,
            "category_margin": margin, "abstained": abstained, "tags": list(tags), "near": list(near)}


@pytest.fixture
def kb(settings):
    """Seven documents with predictions from adapter version 7 (which abstains below 0.55)."""
    with session_factory(settings).begin() as session:
        source = Source(root="/kb")
        session.add(source)
        session.flush()
        docs = [_doc("sure"), _doc("close"), _doc("abstained"), _doc("tagnear"), _doc("secret", acl=["board"]),
                _doc("filed", category="hr"), _doc("unenriched")]
        ids = dict(zip(["sure", "close", "abstained", "tagnear", "secret", "filed", "unenriched"],
                       repo.insert_documents(session, source.id, docs)))
        session.add(AdapterVersion(
            id=7, task="classify", kind="lora", backbone="tiny", backbone_hash="h", adapter_params=1, head_params=1,
            backbone_params=1, path="/x", size_bytes=1, primary_metric="macro_f1", data_hash="d",
            metrics={"macro_f1": 0.8, "abstain_below": 0.55},
        ))
        outputs.save_labels(session, [
            _prediction(ids["sure"], "hr", 0.95, margin=0.9, tags=[("leave", 0.9, 0.5)]),
            _prediction(ids["close"], "history", 0.46, margin=0.07, tags=[("war", 0.8, 0.4)]),
            _prediction(ids["abstained"], "finance", 0.41, margin=0.02, abstained=True),
            _prediction(ids["tagnear"], "hr", 0.9, margin=0.85, tags=[("pay", 0.62, 0.3)], near=[("payroll", 0.31, -0.04)]),
            _prediction(ids["secret"], "legal", 0.5, margin=0.01, abstained=True),
            _prediction(ids["filed"], "legal", 0.3, margin=0.01, abstained=True),
        ], adapter_version=7)
    return ids


def queue(settings, groups=None, **kwargs) -> list[dict]:
    with session_factory(settings)() as session:
        return review_queue(session, groups, **kwargs)


def test_least_certain_first_and_reasons_a_reviewer_can_read(settings, kb):
    items = queue(settings, operator=True)
    assert [i["id"] for i in items] == [kb["secret"], kb["abstained"], kb["close"], kb["tagnear"], kb["sure"]]
    by_id = {i["id"]: i for i in items}
    assert by_id[kb["abstained"]]["reason"] == "needs review: category confidence 0.41 < 0.55 (best guess finance)"
    assert by_id[kb["abstained"]]["needs_review"] is True
    assert by_id[kb["close"]]["reason"] == "close call: history 0.46, margin 0.07 over the runner-up"
    assert by_id[kb["tagnear"]]["reason"] == "tag near its threshold: payroll 0.31 just below 0.35"
    assert by_id[kb["tagnear"]]["near_tags"][0]["tag"] == "payroll"
    assert [t["tag"] for t in by_id[kb["tagnear"]]["tags"]] == ["pay"]
    item = by_id[kb["close"]]
    assert (item["title"], item["path"], item["category"]["label"], item["category"]["status"]) == (
        "Title close", "/kb/close.md", "history", "applied")
    # A document whose front matter gives its category is labelled already; one never enriched cannot be queued.
    assert kb["filed"] not in by_id and kb["unenriched"] not in by_id


def test_the_queue_follows_the_fail_closed_access_rule_of_search(settings, kb):
    anonymous = {i["id"] for i in queue(settings, None)}
    assert kb["secret"] not in anonymous and kb["close"] in anonymous
    assert kb["secret"] not in {i["id"] for i in queue(settings, ["staff"])}
    assert queue(settings, ["Board"])[0]["id"] == kb["secret"]  # groups compare normalised, as ACLs do
    with session_factory(settings)() as session:
        assert queue_counts(session, None) == {"queued": 4, "needs_review": 1}
        assert queue_counts(session, ["board"]) == {"queued": 5, "needs_review": 2}


def test_reviewed_documents_leave_the_queue_or_go_last(settings, kb):
    with session_factory(settings).begin() as session:
        reviews.confirm_predictions(session, kb["abstained"], "ann")
    assert kb["abstained"] not in {i["id"] for i in queue(settings, operator=True)}
    everything = queue(settings, operator=True, include_reviewed=True)
    assert everything[-2:] == [i for i in everything if i["id"] in (kb["abstained"], kb["filed"])]
    assert [i["id"] for i in queue(settings, operator=True, limit=2, offset=1)] == [kb["close"], kb["tagnear"]]
    with pytest.raises(reviews.ReviewError, match="limit"):
        queue(settings, limit=0)


def test_a_margin_the_classifier_did_not_store_is_estimated_from_the_score(settings, kb):
    with session_factory(settings).begin() as session:
        outputs.save_labels(session, [_prediction(kb["sure"], "hr", 0.55), _prediction(kb["close"], "hr", 0.9)], 7)
    items = {i["id"]: i for i in queue(settings, operator=True)}
    assert items[kb["sure"]]["category"]["margin"] == pytest.approx(0.1)
    assert items[kb["sure"]]["category"]["margin_estimated"] is True
    assert items[kb["sure"]]["reason"] == "close call: hr 0.55, margin at least 0.10 over the runner-up"
    ids = [i["id"] for i in queue(settings, operator=True)]
    assert ids.index(kb["sure"]) < ids.index(kb["close"])  # 0.55 is less sure than 0.9


def test_confirmed_predictions_become_gold_with_provenance_and_only_then(settings, kb):
    doc = kb["close"]
    with session_factory(settings)() as session:
        assert doc not in gold_categories(session) and doc not in gold_tags_by_document(session)
        view = document_label_view(session, doc)
        assert view["gold"]["category"] is None and view["predicted"]["category"]["label"] == "history"
    with session_factory(settings).begin() as session:
        verdicts = reviews.confirm_predictions(session, doc, "ann")
    assert {(v.kind, v.label, v.action) for v in verdicts} == {("category", "history", "confirmed"), ("tag", "war", "confirmed")}
    with session_factory(settings)() as session:
        assert gold_categories(session)[doc] == ("history", "review")
        assert gold_tags_by_document(session)[doc] == ["war"]
        gold = document_label_view(session, doc)["gold"]
    category = gold["category"]
    assert (category["label"], category["origin"], category["reviewer"], category["action"]) == (
        "history", "review", "ann", "confirmed")
    assert (category["predicted_label"], category["predicted_score"], category["adapter_version"]) == ("history", 0.46, 7)
    assert category["content_changed"] is False and category["reviewed_at"]


def test_replace_add_and_reject_are_told_apart(settings, kb):
    doc = kb["tagnear"]
    with session_factory(settings).begin() as session:
        reviews.set_labels(session, doc, "bob", category="finance", add_tags=["payroll", "bonus"], remove_tags=["pay"])
    with session_factory(settings)() as session:
        view = document_label_view(session, doc)
    assert view["gold"]["category"]["action"] == "replaced" and view["gold"]["category"]["predicted_label"] == "hr"
    assert {t["label"]: t["action"] for t in view["gold"]["tags"]} == {"bonus": "added", "payroll": "confirmed"}
    assert [(t["tag"], t["action"], t["reviewer"]) for t in view["rejected_tags"]] == [("pay", "rejected", "bob")]
    assert {t["tag"]: t["verdict"] for t in view["predicted"]["tags"]} == {"pay": "reject", "payroll": "accept"}
    # confirming again keeps the person's earlier rejection of `pay`
    with session_factory(settings).begin() as session:
        reviews.confirm_predictions(session, doc, "carl")
    with session_factory(settings)() as session:
        assert "pay" not in gold_tags_by_document(session)[doc]


def test_front_matter_wins_and_a_contradicting_review_is_refused(settings, kb):
    doc = kb["filed"]
    with session_factory(settings).begin() as session:
        with pytest.raises(reviews.ReviewError, match="category: the file's front matter sets 'hr'"):
            reviews.set_labels(session, doc, "ann", category="legal")
        with pytest.raises(reviews.ReviewError, match="no predictions to confirm"):
            reviews.confirm_predictions(session, doc, "ann")  # the predicted category is overridden by the file
    with session_factory(settings)() as session:
        view = document_label_view(session, doc)
    assert view["gold"]["category"]["origin"] == "front_matter" and view["gold"]["category"]["reviewer"] is None
    assert view["needs_review"] is False  # abstained, but a person's label (the file's) is there


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"reviewer": " "}, "reviewer:"),
    ({"reviewer": "x" * 200}, "reviewer:"),
    ({"category": "  "}, "category:"),
    ({"add_tags": ["a"], "remove_tags": ["a"]}, "tags: a both added and removed"),
    ({}, "nothing to record"),
])
def test_bad_reviews_name_the_field(settings, kb, kwargs, message):
    kwargs = {"reviewer": "ann"} | kwargs
    with session_factory(settings).begin() as session:
        with pytest.raises(reviews.ReviewError, match=message):
            reviews.set_labels(session, kb["close"], **kwargs)
        with pytest.raises(reviews.ReviewError, match="no such active document"):
            reviews.set_labels(session, 10**9, "ann", category="x")
        assert document_label_view(session, 10**9) is None
        assert session.scalars(select(Document.id)).all()
