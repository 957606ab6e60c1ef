"""`kb review`, `kb review accept|set`, and what they change downstream: gold labels with provenance in
`kb show` and `kb export`, training data, and what survives re-ingesting the file.

Files are ingested for real (tiny tokenizer); predictions are written straight into the store, as
`kb enrich` writes them, so no model is trained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb_pipeline.cli import app
from kb_pipeline.store import outputs
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.queries import gold_categories
from kb_pipeline.store.schema import Document
from kb_pipeline.training import datasets

runner = CliRunner()


def kb(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "--json" in args and code == 0 else result


@pytest.fixture
def corpus(settings, tmp_path, tiny_backbone_dir, monkeypatch) -> Path:
    """Two labelled files, three unlabelled ones (one restricted to `board`) with predictions on them."""
    monkeypatch.setenv("KB_BACKBONE", str(tiny_backbone_dir))
    root = tmp_path / "docs"
    root.mkdir()
    (root / "labelled-a.md").write_text("---\ncategory: hr\ntags: [leave]\n---\n# Leave\n\nAnnual leave rules.\n")
    (root / "labelled-b.md").write_text("---\ncategory: engineering\n---\n# Deploys\n\nHow we deploy.\n")
    (root / "memo.md").write_text("# Budget memo\n\nThe travel budget for next year, marker-memo.\n")
    (root / "notes.md").write_text("# \x1b[31mRed\x1b[0m notes\n\nMeeting notes about the office move.\n")
    (root / "board.md").write_text("---\nacl: [board]\n---\n# Board minutes\n\nConfidential minutes.\n")
    assert kb("ingest", str(root), "--json")["added"] == 5
    with session_factory(settings).begin() as session:
        ids = {Path(p).name: i for i, p in session.query(Document.id, Document.path)}
        outputs.save_labels(session, [
            {"document_id": ids["memo.md"], "document_version": 1, "category": "finance", "category_score": 0.41,
             "category_margin": 0.05, "abstained": True, "tags": [("budget", 0.7, 0.3)], "near": [("travel", 0.3, -0.05)]},
            {"document_id": ids["notes.md"], "document_version": 1, "category": "hr", "category_score": 0.8,
             "tags": [("office", 0.9)]},
            {"document_id": ids["board.md"], "document_version": 1, "category": "legal", "category_score": 0.5,
             "tags": []},
        ], adapter_version=3)
    kb("users", "add", "olga", "--groups", "staff", "--json")
    kb("users", "add", "bea", "--groups", "board", "--json")
    return root


def test_the_queue_lists_uncertain_documents_first_filtered_by_reader(settings, corpus):
    listed = kb("review", "--json")
    names = [Path(d["path"]).name for d in listed["documents"]]
    assert names == ["memo.md", "board.md", "notes.md"]  # abstained, then margin >= 0.0 (0.5), then >= 0.6 (0.8)
    assert listed["counts"] == {"queued": 3, "needs_review": 1}
    assert listed["documents"][0]["reason"].startswith("needs review: category confidence 0.41")
    assert [Path(d["path"]).name for d in kb("review", "--user", "olga", "--json")["documents"]] == ["memo.md", "notes.md"]
    assert "board.md" in {Path(d["path"]).name for d in kb("review", "--user", "bea", "--json")["documents"]}
    assert kb("review", "--limit", "1", "--json")["documents"][0]["path"].endswith("memo.md")
    assert "no user 'nobody'" in kb("review", "--user", "nobody", code=1).output
    table = kb("review").output
    assert "needs review" in table and "Budget memo" in table
    assert "\x1b[31m" not in table and "\\x1b" in table  # a title's escape codes are shown inert


def test_accept_makes_predictions_gold_and_only_then_training_labels(settings, corpus):
    memo = str(corpus / "memo.md")

    def in_training() -> bool:
        with session_factory(settings)() as session:
            split = datasets.classify_data(session)
        return any("marker-memo" in e.text for e in [*split.train, *split.val])

    assert not in_training()  # a prediction alone never trains the model
    done = kb("review", "accept", memo, "--by", "ann", "--json")
    assert {(v["kind"], v["label"], v["action"]) for v in done["verdicts"]} == {
        ("category", "finance", "confirmed"), ("tag", "budget", "confirmed")}
    with session_factory(settings)() as session:
        assert gold_categories(session)[done["id"]] == ("finance", "review")
    assert in_training()  # a person's confirmation makes it a training label
    shown = kb("show", memo, "--json")
    assert shown["gold"]["category"] == "finance" and shown["gold"]["tags"] == ["budget"]
    category = shown["labels"]["gold"]["category"]
    assert (category["origin"], category["reviewer"], category["action"], category["adapter_version"]) == (
        "review", "ann", "confirmed", 3)
    text = kb("show", memo).output
    assert "category finance: confirmed by ann" in text and "tag budget: confirmed by ann" in text
    assert "memo.md" not in {Path(d["path"]).name for d in kb("review", "--json")["documents"]}
    exported = {Path(r["path"]).name: r for r in map(json.loads, kb("export").stdout.splitlines())}
    assert exported["memo.md"]["gold"]["category"] == "finance"
    assert exported["memo.md"]["provenance"]["category"]["reviewer"] == "ann"
    assert exported["labelled-a.md"]["provenance"]["category"]["origin"] == "front_matter"
    assert exported["notes.md"]["needs_review"] is False and exported["memo.md"]["needs_review"] is False


def test_set_records_replacements_and_rejections(settings, corpus, monkeypatch):
    monkeypatch.setenv("USER", "reviewer-from-env")
    monkeypatch.setenv("LOGNAME", "reviewer-from-env")
    done = kb("review", "set", str(corpus / "notes.md"), "--category", "Facilities", "--tags", "office,move", "--json")
    assert done["reviewer"] == "reviewer-from-env"
    assert {(v["label"], v["action"]) for v in done["verdicts"]} == {
        ("facilities", "replaced"), ("office", "confirmed"), ("move", "added")}
    done = kb("review", "set", str(corpus / "notes.md"), "--remove-tag", "move", "--by", "bob", "--json")
    assert done["labels"]["rejected_tags"][0]["tag"] == "move"
    assert [t["label"] for t in done["labels"]["gold"]["tags"]] == ["office"]
    shown = kb("show", str(corpus / "notes.md")).output
    assert "category facilities: replaced by reviewer-from-env" in shown and "model said hr" in shown
    assert "tag move: rejected by bob" in shown


def test_bad_requests_are_clear_errors_and_restricted_documents_stay_hidden(settings, corpus):
    board = str(corpus / "board.md")
    hidden = kb("review", "accept", board, "--user", "olga", "--by", "olga", code=1).output
    missing = kb("review", "accept", str(corpus / "nope.md"), "--user", "olga", "--by", "olga", code=1).output
    assert "no document" in hidden and hidden.replace("board.md", "nope.md") == missing
    assert kb("review", "accept", board, "--user", "bea", "--by", "bea", "--json")["verdicts"]
    assert "give --category" in kb("review", "set", board, code=1).output
    assert "category: a label cannot be empty" in kb("review", "set", board, "--category", " ", "--by", "x", code=1).output
    assert "reviewer:" in kb("review", "set", board, "--category", "a", "--by", " ", code=1).output
    labelled = str(corpus / "labelled-a.md")
    refused = kb("review", "set", labelled, "--category", "finance", "--by", "x", code=1).output
    assert "front matter sets 'hr'" in refused
    assert "front matter" in kb("review", "set", labelled, "--remove-tag", "leave", "--by", "x", code=1).output


def test_reviews_survive_reingesting_and_the_file_wins_when_it_sets_a_category(settings, corpus):
    memo = corpus / "memo.md"
    doc_id = kb("review", "set", str(memo), "--category", "finance", "--by", "ann", "--json")["id"]

    def gold() -> tuple[str, str] | None:
        with session_factory(settings)() as session:
            return gold_categories(session).get(doc_id)

    assert kb("ingest", str(corpus), "--json")["unchanged"] == 5
    assert gold() == ("finance", "review")
    stat = memo.stat()
    os.utime(memo, (stat.st_atime + 100, stat.st_mtime + 100))  # touched: same content, new mtime
    kb("ingest", str(corpus), "--json")
    assert gold() == ("finance", "review")
    memo.write_text(memo.read_text() + "\nA new paragraph.\n")  # edited: the review stays, marked as older
    assert kb("ingest", str(corpus), "--json")["updated"] == 1
    assert gold() == ("finance", "review")
    assert kb("show", str(memo), "--json")["labels"]["gold"]["category"]["content_changed"] is True
    memo.write_text("---\ncategory: travel\n---\n" + memo.read_text())  # the file now says otherwise: it wins
    kb("ingest", str(corpus), "--json")
    assert gold() == (("travel", "front_matter"))
    labels = kb("show", str(memo), "--json")["labels"]
    assert labels["gold"]["category"]["origin"] == "front_matter"
    assert labels["gold"]["overridden"][0]["label"] == "finance" and labels["gold"]["overridden"][0]["reviewer"] == "ann"
