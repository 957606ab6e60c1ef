"""Document data is untrusted: in `kb`'s text output it must stay inert text.

A title, tag, summary, category, text or file name can hold rich markup ("[bold]"), emoji codes
(":smile:", and "root:x:0:0" which rich would turn into an emoji), ANSI escape sequences that clear
the screen or set the terminal title, bidi overrides and other control characters. Every command that
prints documents must show the markup and codes literally and never pass a control character through.
The documents are written straight into the store, so the test holds whatever ingestion may accept.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from kb_pipeline.cli import app
from kb_pipeline.store import ingest_runs, repo
from kb_pipeline.store.db import session_factory

runner = CliRunner()

ESC_TITLE = "root:x:0:0 [bold]Boss[/bold] :smile: \x1b[2J\x1b]0;pwned\x07 \u202egnp.exe\r overwritten"
ESC_TAGS = ["[red]hot[/red]", ":thumbs_up:", "a\x1b[31mb"]
ESC_SUMMARY = "Sum [bold]x[/bold] :smile: \x1b[2J cleared\x9b2J\nsecond line"
ESC_TEXT = "Body :smile: [bold]b[/bold] \x1b[2J\x1b[H evil\x08\x08 root:x:0:0 text\n\nMore evil words."
ESC_CATEGORY = "[blink]cat"
# What must never reach a terminal: C0/C1 controls except newline (and tab), DEL, bidi overrides.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def hostile(settings, tmp_path):
    """One document whose every field is hostile, in a folder whose file name is hostile too."""
    root = tmp_path / "docs"
    root.mkdir()
    name = "\x1b[2Jevil[bold].md"
    with session_factory(settings).begin() as session:
        source, _ = repo.resolve_source(session, root, "")
        [doc_id] = repo.insert_documents(session, source.id, [repo.NewDocument(
            uri=name, path=str(root / name), title=ESC_TITLE, mime="text/markdown", size=len(ESC_TEXT), mtime=0.0,
            sha256="0" * 64, text=ESC_TEXT, metadata={}, category=ESC_CATEGORY, tags=ESC_TAGS, summary=ESC_SUMMARY,
            acl=[], chunks=[{"ordinal": 0, "text": ESC_TEXT, "char_start": 0, "char_end": len(ESC_TEXT),
                             "token_count": 20}],
        )])
        run_id = ingest_runs.start_run(session, [str(root)])
        ingest_runs.record_errors(session, run_id, [(str(root / name), "corrupt", f"{root / name}: {ESC_SUMMARY}")])
        ingest_runs.finish_run(session, run_id, {}, 0.1)
    return doc_id


def kb(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.output


def assert_inert(output: str) -> None:
    assert not UNSAFE.search(output), repr(output)
    assert "\U0001f604" not in output and "\U0001f44d" not in output, output  # 😄 👍: no emoji codes


def test_show_prints_every_field_literally(hostile):
    output = kb("show", str(hostile))
    assert_inert(output)
    assert "root:x:0:0 [bold]Boss[/bold] :smile: \\x1b[2J" in output
    assert "\\u202egnp.exe\\x0d" in output  # (rich wraps lines at 80 columns here)
    assert ":thumbs_up:, [red]hot[/red], a\\x1b[31mb" in output and "[blink]cat" in output
    assert "Sum [bold]x[/bold] :smile: \\x1b[2J cleared\\x9b2J\nsecond line" in output  # newlines kept in text
    assert "Body :smile: [bold]b[/bold] \\x1b[2J\\x1b[H evil\\x08\\x08 root:x:0:0" in output
    assert "\\x1b[2Jevil[bold].md" in output


def test_docs_search_and_errors_print_data_literally(hostile):
    for output in (kb("docs"), kb("search", "evil", "--mode", "keyword"), kb("errors")):
        assert_inert(output)
    listing = kb("docs")
    assert "root:x:0:0 [bold]Boss" in listing and "[blink]cat" in listing
    found = kb("search", "evil words", "--mode", "keyword")
    assert "1. root:x:0:0 [bold]Boss[/bold] :smile:" in found and "[:thumbs_up:, [red]hot[/red]" in found
    assert "Body :smile: [bold]b[/bold]" in found
    assert "\\x1b[2Jevil[bold].md" in kb("errors")


def test_error_messages_and_no_results_echo_input_literally(hostile):
    ref = "\x1b[2J[bold]nope:smile:"
    shown = runner.invoke(app, ["show", ref])
    assert shown.exit_code == 1
    assert_inert(shown.output)
    assert "[bold]nope:smile:" in shown.output
    missing = kb("search", "[i]zzz :frown: \x1b[5m", "--mode", "keyword")  # no word of the document
    assert_inert(missing)
    assert "No documents match '[i]zzz :frown: \\x1b[5m'" in missing


def test_tag_and_summarise_print_model_output_literally(hostile, monkeypatch):
    """Their output repeats the title and model output, which is built from the document's own words."""
    import kb_pipeline.enrich.on_demand as on_demand

    monkeypatch.setattr(on_demand, "tag_document", lambda *a, **k: {
        "title": ESC_TITLE, "category": ESC_CATEGORY, "category_score": 0.9,
        "tags": [(t, 0.5) for t in ESC_TAGS], "adapter_version": 1})
    monkeypatch.setattr(on_demand, "summarise_document", lambda *a, **k: {
        "title": ESC_TITLE, "summary": ESC_SUMMARY, "adapter_version": 1})
    tagged, summarised = kb("tag", str(hostile)), kb("summarise", str(hostile))
    for output in (tagged, summarised):
        assert_inert(output)
        assert "root:x:0:0 [bold]Boss[/bold] :smile:" in output
    assert "[blink]cat (0.90)" in tagged and "[red]hot[/red] (0.50)" in tagged
    assert "Sum [bold]x[/bold] :smile: \\x1b[2J" in summarised
