"""The `kb` command as a person or a script uses it: exit codes, messages, and --json output."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kb_pipeline.cli import app

runner = CliRunner()

DOC = """---
title: Expense Policy
category: finance
tags: [policy, travel]
summary: What can be claimed and how.
cost_centre: 4100
---
# Expense Policy

Claims are filed within 30 days with receipts attached.
"""


def kb(*args: str):
    return runner.invoke(app, list(args))


def json_of(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "finance").mkdir(parents=True)
    (root / "finance" / "expenses.md").write_text(DOC)
    (root / "notes.txt").write_text("Team notes\n\nThe offsite is in March.\n")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    (root / "logo.svg").write_text("<svg/>")
    return root


def test_commands_before_init_say_what_to_do(kb_home):
    result = kb("stats")
    assert result.exit_code == 1
    assert "kb init" in result.output


def test_init_then_ingest_reports_counts_as_json(kb_home, tmp_path):
    info = json_of(kb("init", "--json"))
    assert info["revision"] and Path(info["home"]) == kb_home
    counts = json_of(kb("ingest", str(corpus(tmp_path)), "--json"))
    assert {k: counts[k] for k in ("added", "updated", "unchanged", "deleted", "skipped", "errors")} == {
        "added": 2, "updated": 0, "unchanged": 0, "deleted": 0, "skipped": 1, "errors": 1}
    assert counts["seconds"] >= 0
    again = json_of(kb("ingest", str(tmp_path / "docs"), "--json"))
    assert again["unchanged"] == 2 and again["added"] == 0


def test_docs_show_stats_and_errors(kb_home, tmp_path):
    kb("init")
    root = corpus(tmp_path)
    kb("ingest", str(root))
    docs = json_of(kb("docs", "--json"))
    assert {d["title"] for d in docs} == {"Expense Policy", "Team notes"}
    assert all(Path(d["path"]).is_absolute() for d in docs)
    expense = next(d for d in docs if d["title"] == "Expense Policy")
    assert expense["category"] == "finance" and expense["tags"] == ["policy", "travel"]

    shown = json_of(kb("show", str(root / "finance" / "expenses.md"), "--json"))
    assert shown["id"] == expense["id"] and shown["metadata"]["cost_centre"] == 4100
    assert shown["gold"]["summary"] == "What can be claimed and how."
    assert "".join(c["text"] for c in shown["chunks"]).startswith("# Expense Policy")
    assert json_of(kb("show", str(expense["id"]), "--json"))["path"] == shown["path"]

    stats = json_of(kb("stats", "--json"))
    assert stats["documents"] == 2 and stats["labelled_documents"] == 1 and stats["chunks"] >= 2

    [error] = json_of(kb("errors", "--json"))
    assert error["kind"] == "corrupt" and error["path"] == str(root / "broken.pdf")
    human = kb("errors")
    assert "broken.pdf" in human.output


def test_unknown_document_and_missing_path_are_clear_errors(kb_home, tmp_path):
    kb("init")
    result = kb("show", "does-not-exist.md")
    assert result.exit_code == 1 and "no document 'does-not-exist.md'" in result.output
    result = kb("ingest", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "nowhere: no such file or folder" in result.output


def test_text_output_shows_brackets_in_titles_and_tags_literally(kb_home, tmp_path):
    """Titles, tags and summaries are text: rich must not swallow '[draft]' as markup."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "plan.md").write_text(
        "---\ntitle: Budget [draft] 2027\ncategory: finance\ntags: [bold]\nsummary: Costs [red]up[/red].\n---\n# Plan\n\nText.\n"
    )
    assert kb("init").exit_code == 0
    assert kb("ingest", str(root)).exit_code == 0
    shown = kb("show", str(root / "plan.md"))
    assert shown.exit_code == 0, shown.output
    assert "Budget [draft] 2027" in shown.output
    assert "tags: bold" in shown.output and "Costs [red]up[/red]." in shown.output
