"""`export_rows` (what `kb export` writes): gold labels beside predictions, adapter versions, staleness, the
`acl` field, filtering by reader, and deleted documents left out.

The KB is built through the CLI (ingest, train, enrich) on a tiny random BERT saved as a model folder, on
each storage backend of the conftest's `settings` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb_pipeline.cli import app
from kb_pipeline.config import Settings
from kb_pipeline.search.access import OPERATOR, reader_for
from kb_pipeline.search.export import export_rows
from kb_pipeline.store.db import session_factory
from tiny_models import single_threaded

runner = CliRunner()


def front(title: str, category: str, tags: list[str], summary: str, acl: list[str] | None = None) -> str:
    acl_line = f"acl: {json.dumps(acl)}\n" if acl is not None else ""
    return f"---\ntitle: {title}\ncategory: {category}\ntags: {json.dumps(tags)}\nsummary: {summary}\n{acl_line}---\n"


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    topics = {"hr": ("leave", "Employees request annual leave through the portal."),
              "engineering": ("deploy", "Engineers deploy services and roll back releases.")}
    for category, (word, summary) in topics.items():
        for i in range(5):
            body = " ".join(f"{summary} Step {j} of the {word} process {i}." for j in range(3))
            (root / f"{category}-{i}.md").write_text(
                front(f"{word.title()} guide {i}", category, [word, "shared"], summary) + f"# Guide\n\n{body}\n"
            )
    (root / "secret.md").write_text(
        front("Secret plan", "hr", ["plan"], "A plan for g1.", acl=[" G1 ", "Board"])
        + "# Plan\n\nOnly g1 and the board.\n"
    )
    (root / "unlabelled.txt").write_text("Office notes\n\nThe coffee machine is on the third floor.\n")
    return root


def kb(*args: str) -> dict | list | None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else None


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture
def corpus(settings, tmp_path, tiny_backbone_dir, monkeypatch) -> Path:
    """The corpus ingested into the conftest's empty KB (SQLite, and Postgres where the server is up)."""
    monkeypatch.setenv("KB_BACKBONE", str(tiny_backbone_dir))
    root = write_corpus(tmp_path / "docs")
    assert kb("ingest", str(root), "--json")["added"] == 12
    return root


def rows(settings: Settings, user: str | None = None, **kwargs) -> dict[str, dict]:
    """Export rows by file name."""
    with session_factory(settings)() as session:
        reader = reader_for(session, user) if user is not None else OPERATOR
        return {Path(r["path"]).name: r for r in export_rows(session, reader=reader, **kwargs)}


def test_gold_labels_from_front_matter_before_any_prediction(settings, corpus):
    exported = rows(settings)
    assert len(exported) == 12
    leave = exported["hr-2.md"]
    assert leave["gold"] == {"category": "hr", "tags": ["leave", "shared"],
                             "summary": "Employees request annual leave through the portal."}
    assert leave["title"] == "Leave guide 2" and leave["version"] == 1 and leave["path"] == str(corpus / "hr-2.md")
    assert leave["predicted"] == {"category": None, "category_score": None, "tags": [], "summary": None}
    assert leave["adapter_versions"] == {"classify": None, "summarise": None} and leave["stale"] is False
    assert exported["unlabelled.txt"]["gold"] == {"category": None, "tags": [], "summary": None}
    assert [r["id"] for r in exported.values()] == sorted(r["id"] for r in exported.values())  # id order


def test_predictions_sit_beside_gold_with_the_adapter_versions_that_made_them(settings, corpus):
    (classify,) = kb("train", "classify", "--epochs", "1", "--json")
    (summarise,) = kb("train", "summarise", "--epochs", "1", "--json")
    kb("enrich", "--json")
    for name, row in rows(settings).items():
        predicted = row["predicted"]
        assert predicted["category"] in {"hr", "engineering"}, name
        assert 0.0 <= predicted["category_score"] <= 1.0 and predicted["summary"]
        scores = [t["score"] for t in predicted["tags"]]
        assert scores == sorted(scores, reverse=True)  # most confident tag first
        assert row["adapter_versions"] == {"classify": classify["version"], "summarise": summarise["version"]}
        assert row["stale"] is False
    assert rows(settings)["hr-0.md"]["gold"]["category"] == "hr"  # gold kept apart from the prediction


def test_a_changed_document_is_marked_stale_until_enriched_again(settings, corpus):
    kb("train", "classify", "--epochs", "1", "--json")
    kb("enrich", "--json")
    path = corpus / "engineering-3.md"
    path.write_text(path.read_text() + "\nA new paragraph about rollbacks.\n")
    kb("ingest", str(corpus), "--json")
    exported = rows(settings)
    assert exported["engineering-3.md"]["version"] == 2 and exported["engineering-3.md"]["stale"] is True
    assert [n for n, r in exported.items() if r["stale"]] == ["engineering-3.md"]
    kb("enrich", "--json")
    assert not any(r["stale"] for r in rows(settings).values())


def test_acl_field_and_reader_filtering(settings, corpus):
    kb("users", "add", "gina", "--groups", "g1", "--json")
    kb("users", "add", "olga", "--groups", "other", "--json")
    operator = rows(settings)
    assert operator["secret.md"]["acl"] == ["board", "g1"]  # normalised, sorted
    assert all(r["acl"] == [] for n, r in operator.items() if n != "secret.md")

    assert set(rows(settings, "gina")) == set(operator)
    assert set(rows(settings, "olga")) == set(operator) - {"secret.md"}
    assert rows(settings, "olga")["hr-1.md"] == operator["hr-1.md"]  # the same row, only filtered


def test_deleted_documents_are_left_out(settings, corpus):
    gone = rows(settings)["hr-4.md"]["id"]
    (corpus / "hr-4.md").unlink()
    assert kb("ingest", str(corpus), "--json")["deleted"] == 1
    exported = rows(settings)
    assert "hr-4.md" not in exported and gone not in {r["id"] for r in exported.values()}
    assert len(exported) == 11


def test_small_batches_stream_the_same_rows(settings, corpus):
    assert list(rows(settings, batch=3).items()) == list(rows(settings).items())
