"""Readers: every format lands in the shared text form, and hostile files fail cleanly."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import signal
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kb_pipeline.ingest import front_matter
from kb_pipeline.ingest.front_matter import (
    FrontMatterError,
    Labels,
    labels_from_metadata,
    split_front_matter,
)
from kb_pipeline.ingest.readers import (
    IN_PROCESS_MAX_BYTES,
    SUPPORTED_SUFFIXES,
    ParsedDocument,
    _h1_title,
    is_supported,
    parses_in_process,
    read_document,
)
from kb_pipeline.ingest.sandbox import SandboxedReader
from kb_pipeline.ingest.text_utils import ReadError, normalise_text

MAX = 5 * 1024 * 1024


# --- workers' readers: module-level so spawned workers can import them --------------------------


def hang_on_marked(path: Path, *, max_bytes: int) -> ParsedDocument:
    if "hang" in Path(path).name:
        time.sleep(3600)
    return read_document(path, max_bytes=max_bytes)


def hog_on_marked(path: Path, *, max_bytes: int) -> ParsedDocument:
    if "hog" in Path(path).name:
        hoard = bytearray(8 * 1024**3)
        return ParsedDocument(str(len(hoard)), "never", "text/plain", {}, "", 0)
    return read_document(path, max_bytes=max_bytes)


def die_on_marked(path: Path, *, max_bytes: int) -> ParsedDocument:
    name = Path(path).name
    if "segv" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "killed" in name:
        os.kill(os.getpid(), signal.SIGKILL)
    return read_document(path, max_bytes=max_bytes)


# --- builders ----------------------------------------------------------------------------------


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def pdf_bytes(pages: list[str], title: str | None = None, encrypt: str | None = None) -> bytes:
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, encrypt=encrypt)
    if title:
        pdf.setTitle(title)
    for text in pages:
        if text:
            pdf.drawString(72, 720, text)
        else:
            pdf.rect(72, 600, 100, 100)  # a drawing but no text, like a scan
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_docx(path: Path) -> Path:
    import docx  # here, not at the top: sandbox workers import this module to find their reader

    document = docx.Document()
    document.add_heading("Travel Policy", level=1)
    document.add_paragraph("Book travel two weeks ahead.")
    document.add_paragraph("Trains", style="List Bullet")
    document.add_paragraph("Flights", style="List Bullet")
    table = document.add_table(rows=2, cols=3)
    for row, values in zip(table.rows, [("Class", "Limit", "Approver"), ("Economy", "500", "Manager")]):
        for cell, value in zip(row.cells, values):
            cell.text = value
    document.add_heading("Expenses", level=2)
    document.add_paragraph("Submit receipts within 30 days.")
    document.save(path)
    return path


def read_error(path: Path, max_bytes: int = MAX) -> ReadError:
    with pytest.raises(ReadError) as caught:
        read_document(path, max_bytes=max_bytes)
    assert str(path) in str(caught.value)
    assert str(caught.value) == f"{path}: {caught.value.message}"
    return caught.value


# --- formats -----------------------------------------------------------------------------------


def test_supported_suffixes_ignore_case():
    assert SUPPORTED_SUFFIXES == {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx"}
    assert is_supported(Path("a/REPORT.PDF"))
    assert not is_supported(Path("a/sheet.xlsx"))


def test_markdown_front_matter_gives_labels_and_keeps_extra_keys(tmp_path):
    path = write(
        tmp_path / "leave.md",
        "---\ntitle: Leave Policy\ncategory: HR\ntags: [Leave, holidays, leave]\nacl: staff, Managers\n"
        "owner: people-team\nreviewed: 2024-03-01\n---\n# Heading in body\n\nTake 25 days.   \n",
    )
    doc = read_document(path, max_bytes=MAX)
    assert doc.title == "Leave Policy"
    assert doc.mime == "text/markdown"
    assert doc.text == "# Heading in body\n\nTake 25 days."
    assert doc.metadata["owner"] == "people-team"
    assert doc.metadata["reviewed"] == "2024-03-01"  # dates become strings: metadata is stored as JSON
    labels = labels_from_metadata(doc.metadata)
    assert labels.category == "hr"
    assert labels.tags == ("leave", "holidays")
    assert labels.acl == ("staff", "managers")
    assert labels.extra == {"owner": "people-team", "reviewed": "2024-03-01"}
    assert doc.size == path.stat().st_size
    assert doc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_markdown_title_falls_back_to_heading_then_file_name(tmp_path):
    with_heading = write(tmp_path / "x.md", "```\n# not a title\n```\n\nIntro\n\n# Onboarding Guide\n\nWelcome.\n")
    assert read_document(with_heading, max_bytes=MAX).title == "Onboarding Guide"
    no_heading = write(tmp_path / "leave-policy_2024.markdown", "Just text.\n")
    assert read_document(no_heading, max_bytes=MAX).title == "Leave policy 2024"


_OLD_H1 = re.compile(r"^ {0,3}# +(.+?)(?: +#+)? *$")  # what _h1_title replaces: cubic on long runs of spaces


@settings(max_examples=2000, deadline=None)
@given(line=st.text(st.sampled_from(" #a\t.\u00a0\r"), max_size=16))
def test_h1_title_matches_the_regex_it_replaces(line):
    match = _OLD_H1.match(line)
    assert _h1_title(line) == (match.group(1).strip() if match else None)


def test_heading_line_with_a_huge_run_of_spaces_parses_quickly(tmp_path):
    path = write(tmp_path / "spaces.md", "# a" + " " * 500_000 + "b\n\nBody.\n")
    start = time.monotonic()
    assert read_document(path, max_bytes=MAX).title == "a" + " " * 500_000 + "b"
    assert time.monotonic() - start < 2


def test_text_file_is_normalised_and_titled_by_first_line(tmp_path):
    path = write(tmp_path / "notes.txt", b"\xef\xbb\xbfMeeting notes  \r\n\r\n\r\n\r\nCafe\xcc\x81 opens at 9.\r\n")
    doc = read_document(path, max_bytes=MAX)
    assert doc.title == "Meeting notes"
    assert doc.text == "Meeting notes\n\nCaf\u00e9 opens at 9."  # NFC, one blank line, no BOM or CR
    assert doc.mime == "text/plain"
    long_first_line = write(tmp_path / "long_notes.txt", "word " * 40 + "\nsecond")
    assert read_document(long_first_line, max_bytes=MAX).title == "Long notes"


def test_html_keeps_main_content_and_drops_page_chrome(tmp_path):
    path = write(
        tmp_path / "page.html",
        """<!doctype html><html><head><meta charset="utf-8"><title>Expenses | Intranet</title>
        <style>.x{color:red}</style><script>trackVisitor()</script></head>
        <body><nav>Home | Menu</nav><header>Company banner</header>
        <div role="navigation">Breadcrumbs</div>
        <p>Outside main</p>
        <main><h1>Expense rules</h1><p>Claim within <b>30</b>&nbsp;days.</p>
        <div hidden>Secret draft</div>
        <ul><li>Taxis</li><li>Hotels</li></ul>
        <table><tr><th>Item</th><th>Limit</th></tr><tr><td>Meal</td><td>40</td></tr></table></main>
        <footer>Copyright ACME</footer><script>more()</script></body></html>""",
    )
    doc = read_document(path, max_bytes=MAX)
    assert doc.title == "Expenses | Intranet"
    assert doc.mime == "text/html"
    assert doc.text == "# Expense rules\n\nClaim within 30 days.\n\n- Taxis\n- Hotels\n\nItem | Limit\nMeal | 40"
    for chrome in ("Menu", "banner", "Breadcrumbs", "trackVisitor", "Copyright", "Outside main", "Secret", "color"):
        assert chrome not in doc.text


def test_html_declared_charset_is_honoured(tmp_path):
    html = '<html><head><meta charset="iso-8859-1"></head><body><h2>R\xe9sum\xe9</h2></body></html>'
    path = write(tmp_path / "legacy.htm", html.encode("latin-1"))
    doc = read_document(path, max_bytes=MAX)
    assert doc.text == "## R\u00e9sum\u00e9"
    assert doc.title == "Legacy"


def test_html_with_thousands_of_unclosed_tags_still_parses(tmp_path):
    path = write(tmp_path / "legacy-export.html", "<html><body>" + "<font>" * 3000 + "Deep text</body></html>")
    assert read_document(path, max_bytes=MAX).text == "Deep text"


def test_pdf_pages_are_joined_and_titled_from_metadata(tmp_path):
    pages = ["Revenue grew 12 percent.", "Costs were flat."]
    path = write(tmp_path / "report.pdf", pdf_bytes(pages, title="Q3 Report"))
    doc = read_document(path, max_bytes=MAX)
    assert doc.text == "Revenue grew 12 percent.\n\nCosts were flat."
    assert doc.title == "Q3 Report"
    assert doc.mime == "application/pdf"
    assert doc.metadata["pdf"]["pages"] == 2
    untitled = write(tmp_path / "untitled.pdf", pdf_bytes(["Board minutes", "Second page"]))
    assert read_document(untitled, max_bytes=MAX).title == "Board minutes"


def test_docx_keeps_headings_lists_and_tables_in_body_order(tmp_path):
    doc = read_document(make_docx(tmp_path / "travel.docx"), max_bytes=MAX)
    assert doc.title == "Travel Policy"
    assert doc.mime == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert doc.text == (
        "# Travel Policy\n\nBook travel two weeks ahead.\n\n- Trains\n- Flights\n\n"
        "Class | Limit | Approver\nEconomy | 500 | Manager\n\n## Expenses\n\nSubmit receipts within 30 days."
    )


# --- hostile and broken files ------------------------------------------------------------------


def test_truncated_pdf_is_corrupt(tmp_path):
    whole = pdf_bytes(["Some text"])
    error = read_error(write(tmp_path / "half.pdf", whole[: len(whole) // 2]))
    assert error.kind == "corrupt"
    assert "cannot parse PDF" in error.message


def test_pdf_without_text_is_empty_and_says_why(tmp_path):
    error = read_error(write(tmp_path / "scan.pdf", pdf_bytes([""])))
    assert error.kind == "empty"
    assert "scanned" in error.message


def test_password_protected_pdf_is_rejected(tmp_path):
    error = read_error(write(tmp_path / "locked.pdf", pdf_bytes(["Secret"], encrypt="hunter2")))
    assert error.kind == "corrupt"
    assert "encrypted" in error.message


def test_binary_junk_named_txt(tmp_path):
    junk = bytes(range(256)) * 40
    assert read_error(write(tmp_path / "junk.txt", junk)).kind == "binary"
    assert read_error(write(tmp_path / "junk.html", junk)).kind == "binary"


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    error = read_error(write(tmp_path / "latin.txt", "Caf\xe9 menu".encode("latin-1")))
    assert error.kind == "invalid_utf8"
    assert "byte offset 3" in error.message


def test_empty_and_whitespace_only_files(tmp_path):
    assert read_error(write(tmp_path / "zero.md", b"")).kind == "empty"
    assert read_error(write(tmp_path / "blank.txt", " \n\n\t\n")).kind == "empty"
    assert read_error(write(tmp_path / "only-meta.md", "---\ntitle: x\n---\n")).kind == "empty"


def test_file_over_limit_is_rejected_before_reading(tmp_path):
    path = write(tmp_path / "big.txt", "x" * 3 * 1024 * 1024)
    error = read_error(path, max_bytes=2 * 1024 * 1024)
    assert error.kind == "too_large"
    assert "3.0 MB" in error.message and "2.0 MB" in error.message


def test_unsupported_and_unreadable(tmp_path):
    assert read_error(write(tmp_path / "sheet.xlsx", b"PK")).kind == "unsupported"
    assert read_error(tmp_path / "missing.txt").kind == "unreadable"
    (tmp_path / "folder.md").mkdir()
    assert read_error(tmp_path / "folder.md").kind == "unreadable"


def test_docx_zip_bomb_is_refused_without_inflating(tmp_path):
    path = tmp_path / "bomb.docx"
    zeros = bytes(8 * 1024 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            for _ in range(300 // 8 + 1):
                member.write(zeros)
    assert path.stat().st_size < 2 * 1024 * 1024
    error = read_error(path)
    assert error.kind == "zip_bomb"
    assert "256.0 MB" in error.message


def test_docx_member_with_absurd_ratio_is_a_zip_bomb(tmp_path):
    path = tmp_path / "dense.docx"
    source_path = make_docx(tmp_path / "ok.docx")
    with zipfile.ZipFile(source_path) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            target.writestr(item, source.read(item))
        target.writestr("word/media/filler.bin", bytes(20 * 1024 * 1024))
    error = read_error(path)
    assert error.kind == "zip_bomb"
    assert "word/media/filler.bin" in error.message


def test_docx_that_is_not_a_zip_or_not_word(tmp_path):
    assert read_error(write(tmp_path / "fake.docx", "plain text pretending")).kind == "corrupt"
    other = tmp_path / "other.docx"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("hello.txt", "hi")
    error = read_error(other)
    assert error.kind == "corrupt"
    assert "word/document.xml" in error.message


def test_invalid_front_matter_names_the_field(tmp_path):
    error = read_error(write(tmp_path / "bad.md", "---\ntitle: Ok\ntags: {a: 1}\n---\nBody\n"))
    assert error.kind == "front_matter"
    assert "'tags'" in error.message and "dict" in error.message


def test_broken_yaml_front_matter_gives_the_line(tmp_path):
    error = read_error(write(tmp_path / "broken.md", "---\ntitle: Ok\ntags: [a, b\n---\nBody\n"))
    assert error.kind == "front_matter"
    assert "line" in error.message


def test_read_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ReadError("/docs/a.pdf", "corrupt", "cannot parse PDF: boom")))
    assert (error.path, error.kind, error.message) == ("/docs/a.pdf", "corrupt", "cannot parse PDF: boom")
    assert str(error) == "/docs/a.pdf: cannot parse PDF: boom"


# --- front matter ------------------------------------------------------------------------------


def test_split_front_matter():
    assert split_front_matter("# No meta\n") == ({}, "# No meta\n")
    assert split_front_matter("---\n---\nBody") == ({}, "Body")
    assert split_front_matter("---\r\nowner: me\r\n---\r\nBody\r\n") == ({"owner": "me"}, "Body\r\n")
    with pytest.raises(FrontMatterError, match="mapping"):
        split_front_matter("---\n- a\n- b\n---\nBody")
    with pytest.raises(FrontMatterError, match="line 3"):
        split_front_matter("---\ntitle: ok\nbad: x: y\n---\nBody")
    with pytest.raises(FrontMatterError, match="never closed"):
        split_front_matter("---\ntitle: ok\nBody")


@pytest.mark.parametrize(
    "source",
    [
        "title: ok\ntags: [a, b\n",  # libyaml words this one differently
        "title: ok\nbad: x: y\n",
        "a:\n\t- b\n",
        "a: *missing\n",
        "? [a]\n: 1\n",
        "a: " + "[" * 40 + "]" * 40,  # deeper than libyaml is trusted with
        "a: " + "[" * 5000 + "]" * 5000,  # the pure-Python loader's RecursionError
        "x: 2020-13-45\n",
        "a: &x [1, 2]\nb: *x\nwhen: 2024-03-01\nn: 0x1f\nf: .5\nyes: on\n",
    ],
)
def test_front_matter_loads_exactly_as_the_pure_python_loader(source):
    """libyaml is only a faster route: results, errors and their messages are PyYAML's own."""

    def outcome(load):
        try:
            return "ok", load(source)
        except RecursionError:
            return "recursion", None
        except Exception as exc:
            return type(exc).__name__, str(exc)

    assert outcome(front_matter._load_yaml) == outcome(yaml.safe_load)


def test_exponential_yaml_aliases_are_refused_quickly():
    levels = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    start = time.monotonic()
    with pytest.raises(FrontMatterError, match="too large"):
        split_front_matter("---\n" + "\n".join(levels) + "\n---\nBody")
    assert time.monotonic() - start < 2


def test_labels_are_normalised():
    labels = labels_from_metadata(
        {
            "title": 2024,
            "category": "  Finance ",
            "tags": [" Tax", "tax", "", None, 7],
            "acl": [" Human \t Resources", "human resources", None, "Legal"],
            "summary": " A  summary ",
        }
    )
    assert labels == Labels(
        title="2024", category="finance", tags=("tax", "7"), summary="A summary", acl=("human resources", "legal"),
        extra={},
    )
    assert labels_from_metadata({"title": "no acl key: readable by everyone"}).acl == ()


@pytest.mark.parametrize("acl", [[], "", "  ", ",", [None], [""], [" ", None], None])
def test_an_acl_naming_no_group_is_an_error_never_public(acl):
    with pytest.raises(FrontMatterError, match="'acl' names no group"):
        labels_from_metadata({"acl": acl})


def test_an_overlong_tag_or_group_is_an_error_naming_the_field():
    with pytest.raises(FrontMatterError, match="'acl' has an entry of 129 characters"):
        labels_from_metadata({"acl": ["x" * 129]})
    assert labels_from_metadata({"tags": ["y" * 128]}).tags == ("y" * 128,)


def test_empty_acl_in_a_markdown_file_is_a_front_matter_error(tmp_path):
    for i, acl in enumerate(("[]", '""', "[~]")):
        path = tmp_path / f"doc{i}.md"
        path.write_text(f"---\nacl: {acl}\n---\n# Salaries\n\nBands per level.\n", encoding="utf-8")
        with pytest.raises(ReadError) as caught:
            read_document(path, max_bytes=10_000)
        assert caught.value.kind == "front_matter" and "acl" in caught.value.message


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"tags": {"a": 1}}, "front matter field 'tags' must be a list of strings, got dict"),
        ({"acl": [["x"]]}, "'acl' must be a list of strings, got a list containing list"),
        ({"title": ["a"]}, "'title' must be a string, got list"),
        ({"category": True}, "'category' must be a string, got bool"),
    ],
)
def test_labels_with_wrong_types_name_the_field(meta, message):
    with pytest.raises(FrontMatterError, match=message.replace("'", ".")):
        labels_from_metadata(meta)


def test_normalise_text():
    assert normalise_text("a  \r\nb\n\n\n\n\nc\u000c\nd  \n\n") == "a\nb\n\nc\n\nd"


# --- sandbox -----------------------------------------------------------------------------------


def test_sandbox_times_out_a_hanging_parse_and_keeps_going(tmp_path):
    hang = write(tmp_path / "hang.txt", "never finishes")
    after = write(tmp_path / "after.txt", "Parsed after the hang")
    with SandboxedReader(max_bytes=MAX, timeout_s=1.0, reader=hang_on_marked) as sandbox:
        sandbox.read(after)  # warm the worker so the clock below measures the timeout alone
        results = sandbox.read_many([hang, after])
        start = time.monotonic()
        first_path, first = next(results)
        waited = time.monotonic() - start
        second_path, second = next(results)
    assert (first_path, second_path) == (hang, after)
    assert isinstance(first, ReadError) and first.kind == "timeout"
    assert str(hang) in str(first)
    assert waited < 1.0 + 2.0
    assert second.text == "Parsed after the hang"


def test_sandbox_memory_cap_turns_a_hog_into_a_memory_error(tmp_path):
    hog = write(tmp_path / "hog.txt", "allocates 8 GiB")
    fine = write(tmp_path / "fine.txt", "Still readable")
    with SandboxedReader(max_bytes=MAX, memory_mb=256, reader=hog_on_marked) as sandbox:
        with pytest.raises(ReadError) as caught:
            sandbox.read(hog)
        assert caught.value.kind == "memory"
        assert sandbox.read(fine).text == "Still readable"


def test_sandbox_worker_killed_by_a_signal(tmp_path):
    segv = write(tmp_path / "segv.txt", "crashes")
    killed = write(tmp_path / "killed.txt", "killed")
    fine = write(tmp_path / "fine.txt", "Survives")
    with SandboxedReader(max_bytes=MAX, reader=die_on_marked) as sandbox:
        results = dict(sandbox.read_many([segv, killed, fine]))
    assert results[segv].kind == "corrupt" and "SIGSEGV" in results[segv].message
    assert results[killed].kind == "memory" and "SIGKILL" in results[killed].message
    assert results[fine].text == "Survives"


def test_sandbox_read_many_keeps_order_and_mixes_results(tmp_path):
    paths = []
    for i in range(12):
        if i % 4 == 3:
            paths.append(write(tmp_path / f"bad{i}.txt", b"caf\xe9 au lait"))
        else:
            paths.append(write(tmp_path / f"doc{i}.md", f"# Doc {i}\n\nBody {i}\n"))
    paths.append(make_docx(tmp_path / "travel.docx"))
    with SandboxedReader(max_bytes=MAX, processes=2) as sandbox:
        results = list(sandbox.read_many(iter(paths)))
        assert sandbox.read(paths[0]).title == "Doc 0"  # reusable after read_many
    assert [path for path, _ in results] == paths
    for i, (_path, result) in enumerate(results[:-1]):
        if i % 4 == 3:
            assert isinstance(result, ReadError) and result.kind == "invalid_utf8"
        else:
            assert result.title == f"Doc {i}"
    assert results[-1][1].title == "Travel Policy"


def test_only_small_text_files_are_parsed_in_process():
    assert parses_in_process(Path("a/notes.MD"), 10) and parses_in_process(Path("a.txt"), IN_PROCESS_MAX_BYTES)
    assert not parses_in_process(Path("a.md"), IN_PROCESS_MAX_BYTES + 1)
    assert not any(parses_in_process(Path(f"a{suffix}"), 10) for suffix in (".html", ".htm", ".pdf", ".docx"))


def test_sandbox_read_many_parses_chosen_files_here_in_order_with_the_same_errors(tmp_path):
    paths = [
        write(tmp_path / "a.md", "# A\n\nBody\n"),
        make_docx(tmp_path / "travel.docx"),
        write(tmp_path / "bad.txt", b"caf\xe9"),
        write(tmp_path / "segv.txt", "crashes in a worker"),
        write(tmp_path / "b.txt", "Bee\n"),
    ]
    here = {paths[0], paths[2], paths[4]}
    with SandboxedReader(max_bytes=MAX, processes=2, reader=die_on_marked) as sandbox:
        results = list(sandbox.read_many(paths, in_process=here.__contains__))
    assert [path for path, _ in results] == paths
    assert results[0][1].title == "A" and results[1][1].title == "Travel Policy" and results[4][1].title == "Bee"
    assert results[2][1].kind == "invalid_utf8" and results[2][1].message == read_error(paths[2]).message
    assert results[3][1].kind == "corrupt" and "SIGSEGV" in results[3][1].message  # still sandboxed


def test_sandbox_rejects_readers_workers_cannot_import():
    with pytest.raises(TypeError, match="module-level"):
        SandboxedReader(max_bytes=MAX, reader=lambda path, *, max_bytes: None)
