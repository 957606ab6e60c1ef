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
    for ref in ("99999999999999999999", "\u00b2"):  # too large for an id column; a digit int() refuses
        result = kb("show", ref)
        assert result.exit_code == 1 and f"no document {ref!r}" in result.output, result.exception
    result = kb("ingest", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "nowhere: no such file or folder" in result.output


def test_text_output_shows_brackets_in_titles_and_tags_literally(kb_home, tmp_path):
    """Titles, tags and summaries are text: rich must not swallow '[draft]' as markup."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "plan.md").write_text(
        "---\ntitle: Budget [draft] 2027\ncategory: finance\ntags: [bold]\nsummary: Costs [red]up[/red].\n---\n"
        "# Plan\n\nText.\n"
    )
    assert kb("init").exit_code == 0
    assert kb("ingest", str(root)).exit_code == 0
    shown = kb("show", str(root / "plan.md"))
    assert shown.exit_code == 0, shown.output
    assert "Budget [draft] 2027" in shown.output
    assert "tags: bold" in shown.output and "Costs [red]up[/red]." in shown.output


def test_a_lone_surrogate_in_a_queries_file_is_a_clear_error_before_any_output(kb_home, tmp_path):
    kb("init")
    kb("ingest", str(corpus(tmp_path)))
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"query": "expenses"}\n{"query": "bad \\ud800 text"}\n', encoding="utf-8")
    result = kb("search", "--queries", str(queries), "--mode", "keyword")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""  # checked before the first result line, not mid-output
    assert f"{queries}:2:" in result.output and "lone surrogate" in result.output
    # argv bytes that are not UTF-8 reach Python as lone surrogates too
    result = kb("search", "expenses \udcff", "--mode", "keyword", "--json")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "not valid text" in result.output


def restricted_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "pay.md").write_text("---\ntitle: Salary bands\nacl: [hr]\n---\nBands for every level.\n")
    (root / "open.md").write_text("---\ntitle: Office hours\n---\nOpen nine to five.\n")
    kb("init")
    kb("ingest", str(root))
    kb("users", "add", "hana", "--groups", "hr")
    kb("users", "add", "sam", "--groups", "sales")
    return root


def test_export_carries_acl_and_user_views_show_only_readable_documents(kb_home, tmp_path):
    root = restricted_corpus(tmp_path)
    exported = {row["title"]: row for row in map(json.loads, kb("export").stdout.splitlines())}
    assert exported["Salary bands"]["acl"] == ["hr"] and exported["Office hours"]["acl"] == []
    assert [json.loads(line)["title"] for line in kb("export", "--user", "sam").stdout.splitlines()] == ["Office hours"]
    assert {d["title"] for d in json_of(kb("docs", "--json", "--user", "hana"))} == {"Salary bands", "Office hours"}

    denied = kb("show", str(root / "pay.md"), "--user", "sam")
    missing = kb("show", str(root / "gone.md"), "--user", "sam")
    assert denied.exit_code == missing.exit_code == 1
    assert denied.output.replace("pay.md", "gone.md") == missing.output and "Salary" not in denied.output
    assert "Bands for every level" in kb("show", str(root / "pay.md"), "--user", "hana").output
    unknown = kb("docs", "--user", "nobody-here")
    assert unknown.exit_code == 1 and "no user 'nobody-here'" in unknown.output


def test_stats_counts_restricted_active_documents_only(kb_home, tmp_path):
    root = restricted_corpus(tmp_path)
    assert json_of(kb("stats", "--json"))["restricted_documents"] == 1
    (root / "pay.md").unlink()
    kb("ingest", str(root))
    stats = json_of(kb("stats", "--json"))
    assert stats["deleted"] == 1 and stats["restricted_documents"] == 0  # a tombstone is no readable document


def test_users_add_refuses_names_too_long_to_store_with_a_clear_message(kb_home):
    assert kb("init").exit_code == 0
    result = kb("users", "add", "hana", "--groups", "hr," + "g" * 200)
    assert result.exit_code == 1 and "--groups" in result.output and "128" in result.output
    assert kb("users", "add", "x" * 200).exit_code == 1
    assert json_of(kb("users", "--json")) == []  # nothing stored


def test_ingest_names_symlinks_it_did_not_follow_and_stats_marks_dead_runs(kb_home, tmp_path):
    import os
    import subprocess
    import sys

    from sqlalchemy import update

    from kb_pipeline.config import Settings
    from kb_pipeline.store import ingest_runs
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.schema import IngestRun

    root = corpus(tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_text("root:x:0:0\n")
    os.symlink(secret, root / "passwd.txt")
    assert kb("init").exit_code == 0
    result = kb("ingest", str(root))
    assert result.exit_code == 0 and "passwd.txt" in result.output and "symlink" in result.output

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with session_factory(Settings.from_env()).begin() as s:
        run_id = ingest_runs.start_run(s, [str(root)])
        s.execute(update(IngestRun).where(IngestRun.id == run_id).values(pid=dead.pid))
    assert json_of(kb("stats", "--json"))["last_ingest"]["status"] == "abandoned"
    with session_factory(Settings.from_env())() as s:
        assert s.get(IngestRun, run_id).status == "abandoned"  # written down, not only shown
