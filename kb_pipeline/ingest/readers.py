"""Turn one document file into plain text plus a title, or a ReadError a person can act on.

Every format produces the same text form so the chunker needs no per-format logic: '\\n'
newlines, one blank line between paragraphs, markdown-style '#' headings, one list item or table
row per line, NFC unicode. Parsing untrusted PDF/DOCX is risky, so SandboxedReader runs it in
worker processes with a memory cap and a per-file timeout.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import math
import multiprocessing
import os
import pickle
import re
import signal
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

from kb_pipeline.ingest.front_matter import FrontMatterError, labels_from_metadata, split_front_matter

if TYPE_CHECKING:
    from docx.table import Table
    from docx.text.paragraph import Paragraph
    from pypdf import PdfReader

# pypdf and python-docx are imported where used: they double a sandbox worker's start-up time,
# which every text-only batch and every worker replaced after a timeout would pay.

MIME_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(MIME_TYPES)
READ_ERROR_KINDS = frozenset(
    {"too_large", "empty", "invalid_utf8", "binary", "corrupt", "timeout", "memory", "zip_bomb",
     "front_matter", "unsupported", "unreadable"}
)

MAX_TITLE_CHARS = 120
ZIP_MAX_TOTAL_BYTES = 256 * 1024 * 1024
ZIP_MAX_RATIO = 200
# A ratio only means something for members big enough to hurt; tiny repetitive XML compresses well.
ZIP_RATIO_MIN_BYTES = 1024 * 1024
_MB = 1024 * 1024


def is_supported(path: Path) -> bool:
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    title: str
    mime: str
    metadata: dict
    sha256: str
    size: int


class ReadError(Exception):
    """Raised for any file that cannot be ingested; str(err) == f"{path}: {message}"."""

    def __init__(self, path: str | Path, kind: str, message: str) -> None:
        if kind not in READ_ERROR_KINDS:
            raise ValueError(f"unknown ReadError kind {kind!r}")
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.kind = kind
        self.message = message

    def __reduce__(self):
        return type(self), (self.path, self.kind, self.message)


def read_document(path: Path, *, max_bytes: int) -> ParsedDocument:
    """Read and parse one file in this process (use SandboxedReader for untrusted PDF/DOCX)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise ReadError(path, "unsupported", f"unsupported file type {suffix or '(none)'!r}; supported: {supported}")
    data = _read_bytes(path, max_bytes)
    try:
        text, title, metadata = _PARSERS[suffix](data, path)
    except MemoryError:
        raise ReadError(path, "memory", "ran out of memory while parsing") from None
    except RecursionError:
        raise ReadError(path, "corrupt", "document is nested too deeply to parse") from None
    except ReadError:
        raise
    except Exception as exc:  # a parser bug or an input no parser anticipated: still only this file
        raise ReadError(path, "corrupt", f"cannot parse file: {type(exc).__name__}: {exc}") from None
    text = normalise_text(text)
    if not text.strip():
        raise ReadError(path, "empty", "no text found in the file")
    return ParsedDocument(
        text=text,
        title=title or title_from_name(path),
        mime=MIME_TYPES[suffix],
        metadata=metadata,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """Check the size before reading so a huge file never enters memory."""
    try:
        stat = path.stat()
        if not path.is_file():
            raise ReadError(path, "unreadable", "not a regular file")
        if stat.st_size > max_bytes:
            size, limit = _megabytes(stat.st_size), _megabytes(max_bytes)
            raise ReadError(path, "too_large", f"file is {size}, over the {limit} limit")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ReadError(path, "unreadable", f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew since stat
        raise ReadError(path, "too_large", f"file is over the {_megabytes(max_bytes)} limit")
    if not data:
        raise ReadError(path, "empty", "file is empty (0 bytes)")
    return data


def _megabytes(size: int) -> str:
    return f"{size / _MB:.1f} MB" if size >= _MB / 10 else f"{size / _MB:.4f} MB ({size} bytes)"


# --- text form -------------------------------------------------------------------------------

_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """The shared text form: NFC, '\\n' newlines, no trailing spaces, at most one blank line in a row."""
    text = _LINE_BREAKS.sub("\n", unicodedata.normalize("NFC", text))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


def title_from_name(path: Path) -> str:
    """'leave-policy_2024.md' -> 'Leave policy 2024'."""
    words = " ".join(re.sub(r"[-_.]+", " ", Path(path).stem).split())
    return words[:1].upper() + words[1:] if words else Path(path).name


def _first_line_title(text: str) -> str | None:
    for line in text.split("\n"):
        line = " ".join(line.split())
        if line:
            return line if len(line) <= MAX_TITLE_CHARS else None
    return None


# --- plain text and markdown -----------------------------------------------------------------

_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f") + b"\x7f"


def _looks_binary(data: bytes) -> bool:
    if b"\x00" in data:
        return True
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    return controls > 0.10 * len(data)


def _decode_utf8(data: bytes, path: Path) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ReadError(path, "invalid_utf8", "file is UTF-16 encoded; save it as UTF-8")
    if _looks_binary(data):
        raise ReadError(path, "binary", "file looks binary (NUL or control bytes), not text")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + bom
        message = f"not valid UTF-8 at byte offset {offset} (byte 0x{data[offset]:02x}); save it as UTF-8"
        raise ReadError(path, "invalid_utf8", message) from None


def _parse_text(data: bytes, path: Path) -> tuple[str, str | None, dict]:
    text = normalise_text(_decode_utf8(data, path))
    return text, _first_line_title(text), {}


_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_H1 = re.compile(r"^ {0,3}# +(.+?)(?: +#+)? *$")


def _parse_markdown(data: bytes, path: Path) -> tuple[str, str | None, dict]:
    """Front matter is validated here so a mislabelled file is rejected before anything is stored."""
    try:
        metadata, body = split_front_matter(_decode_utf8(data, path))
        labels = labels_from_metadata(metadata)
    except FrontMatterError as exc:
        raise ReadError(path, "front_matter", str(exc)) from None
    body = normalise_text(body)
    return body, labels.title or _markdown_h1(body), metadata


def _markdown_h1(text: str) -> str | None:
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _H1.match(line)):
            return match.group(1).strip()
    return None


# --- HTML ------------------------------------------------------------------------------------

_HTML_DROP_TAGS = ("script", "style", "noscript", "template", "nav", "aside", "form", "svg", "iframe")
_HTML_PAGE_CHROME = ("header", "footer")  # page chrome, but an <article>'s own header is content
_HTML_DROP_ROLES = {"navigation", "banner", "contentinfo"}
_HTML_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_HTML_BLOCKS = {
    "address", "article", "blockquote", "body", "caption", "center", "details", "dialog", "div", "dl",
    "fieldset", "figcaption", "figure", "hgroup", "html", "main", "p", "section", "summary", "hr",
}
_HTML_LINES = {"dt", "dd", "tr", "br", "legend"}
_HTML_SKIPPED_STRINGS = (Comment, Declaration, Doctype, ProcessingInstruction)


def _parse_html(data: bytes, path: Path) -> tuple[str, str | None, dict]:
    if not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and _looks_binary(data):
        raise ReadError(path, "binary", "file looks binary (NUL or control bytes), not HTML")
    soup = BeautifulSoup(data, "lxml")
    _drop_boilerplate(soup)
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text(" ").split()) if title_tag else ""
    if not title and (h1 := soup.find("h1")):
        title = " ".join(h1.get_text(" ").split())
    roots = _html_content_roots(soup)
    text = "\n\n".join(_HtmlText().render(root) for root in roots)
    return text, title or None, {}


def _drop_boilerplate(soup: BeautifulSoup) -> None:
    doomed = [
        el for el in soup.find_all(True)
        if el.name in _HTML_DROP_TAGS
        or (el.name in _HTML_PAGE_CHROME and el.find_parent(("article", "main")) is None)
        or str(el.get("role", "")).lower() in _HTML_DROP_ROLES
        or el.has_attr("hidden")
        or str(el.get("aria-hidden", "")).lower() == "true"
        or _HTML_HIDDEN_STYLE.search(str(el.get("style", "")))
    ]
    for el in doomed:
        if not el.decomposed:
            el.decompose()


def _html_content_roots(soup: BeautifulSoup) -> list[Tag]:
    """<main>, else every outermost <article>, else <body>: the part a reader came for."""
    if main := soup.find("main"):
        return [main]
    articles = [a for a in soup.find_all("article") if a.find_parent("article") is None]
    return articles or [soup.body or soup]


class _HtmlText:
    """Renders a tree into the shared text form: blocks become paragraphs, li/tr become lines.

    The walk uses an explicit stack: legacy HTML with unclosed inline tags nests thousands deep.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.inline: list[str] = []
        self.prefix = ""
        self.list_depth = 0

    def render(self, root: Tag) -> str:
        stack: list[tuple[Tag | NavigableString, bool]] = [(child, False) for child in reversed(root.contents)]
        while stack:
            node, leaving = stack.pop()
            if leaving:
                self._leave(node)
            elif isinstance(node, Tag):
                if self._enter(node):
                    stack.append((node, True))
                    stack.extend((child, False) for child in reversed(node.contents))
            elif not isinstance(node, _HTML_SKIPPED_STRINGS):
                self.inline.append(str(node))
        self._paragraph()
        return "\n".join(self.lines)

    def _enter(self, el: Tag) -> bool:
        """Start an element; False when it was rendered whole and its children must be skipped."""
        name = el.name
        if name in _HTML_HEADINGS:
            heading = " ".join(el.get_text(" ").split())
            self._paragraph()
            if heading:
                self.lines.append("#" * _HTML_HEADINGS[name] + " " + heading)
            self._paragraph()
            return False
        if name == "table":
            self._table(el)
            return False
        if name == "pre":
            self._paragraph()
            self.lines.extend(el.get_text().strip("\n").split("\n"))
            self._paragraph()
            return False
        if name in ("ul", "ol"):
            self._paragraph()
            self.list_depth += 1
        elif name == "li":
            self._line()
            self.prefix = "  " * max(self.list_depth - 1, 0) + "- "
        elif name in _HTML_LINES:
            self._line()
        elif name in _HTML_BLOCKS:
            self._paragraph()
        return True

    def _leave(self, el: Tag) -> None:
        name = el.name
        if name in ("ul", "ol"):
            self.list_depth -= 1
            self._paragraph()
        elif name == "li":
            self._line()
            self.prefix = ""
        elif name in _HTML_LINES:
            self._line()
        elif name in _HTML_BLOCKS:
            self._paragraph()

    def _table(self, table: Tag) -> None:
        self._paragraph()
        for caption in table.find_all("caption", recursive=False):
            self.lines.append(" ".join(caption.get_text(" ").split()))
        for row in table.find_all("tr"):
            if row.find_parent("table") is not table:
                continue  # a nested table's rows are flattened into their cell's text
            cells = [" ".join(c.get_text(" ").split()) for c in row.find_all(("td", "th"), recursive=False)]
            if any(cells):
                self.lines.append(" | ".join(cells))
        self._paragraph()

    def _line(self) -> None:
        text = " ".join("".join(self.inline).split())
        self.inline = []
        if text:
            self.lines.append(self.prefix + text)
            self.prefix = ""

    def _paragraph(self) -> None:
        self._line()
        if self.list_depth == 0 and self.lines and self.lines[-1] != "":
            self.lines.append("")


# --- PDF -------------------------------------------------------------------------------------


def _parse_pdf(data: bytes, path: Path) -> tuple[str, str | None, dict]:
    from pypdf import PdfReader

    try:
        pdf = PdfReader(io.BytesIO(data))
        if pdf.is_encrypted and not pdf.decrypt(""):
            raise ReadError(path, "corrupt", "PDF is encrypted and needs a password")
        pages = [page.extract_text() or "" for page in pdf.pages]
        info = _pdf_info(pdf)
    except ReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # pypdf raises many exception types for malformed files
        raise ReadError(path, "corrupt", f"cannot parse PDF: {exc or type(exc).__name__}") from None
    text = normalise_text("\n\n".join(page.strip() for page in pages))
    if not text.strip():
        raise ReadError(path, "empty", "PDF has no extractable text (it may be a scanned image; OCR is not supported)")
    metadata = {"pdf": {"pages": len(pages), **info}}
    return text, info.get("title") or _first_line_title(text), metadata


_PDF_PLACEHOLDERS = {"untitled", "anonymous", "unspecified", "unknown", "none"}


def _pdf_info(pdf: PdfReader) -> dict:
    """Document properties are optional and often tool defaults; keep only real values."""
    try:
        info = pdf.metadata or {}
    except Exception:
        return {}
    wanted = {"title": "/Title", "author": "/Author", "subject": "/Subject"}
    values = {key: " ".join(str(info.get(name) or "").split()) for key, name in wanted.items()}
    return {key: value for key, value in values.items() if value and value.lower() not in _PDF_PLACEHOLDERS}


# --- DOCX ------------------------------------------------------------------------------------

_DOCX_HEADING = re.compile(r"^heading ?(\d)$", re.IGNORECASE)


def _parse_docx(data: bytes, path: Path) -> tuple[str, str | None, dict]:
    from docx import Document as open_docx

    _check_docx_zip(data, path)
    try:
        doc = open_docx(io.BytesIO(data))
        blocks, first_heading = _docx_blocks(doc)
        properties = _docx_properties(doc)
    except MemoryError:
        raise
    except Exception as exc:  # python-docx/lxml raise many exception types for malformed files
        raise ReadError(path, "corrupt", f"cannot parse DOCX: {exc or type(exc).__name__}") from None
    metadata = {"docx": properties} if properties else {}
    return "\n\n".join(blocks), properties.get("title") or first_heading, metadata


def _check_docx_zip(data: bytes, path: Path) -> None:
    """Look at the archive's directory before python-docx inflates anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except Exception as exc:
        raise ReadError(path, "corrupt", f"not a valid DOCX file (not a zip archive: {exc})") from None
    if "word/document.xml" not in {member.filename for member in members}:
        raise ReadError(path, "corrupt", "not a valid DOCX file (word/document.xml is missing)")
    total = sum(member.file_size for member in members)
    if total > ZIP_MAX_TOTAL_BYTES:
        raise ReadError(
            path, "zip_bomb", f"archive would expand to {_megabytes(total)} (limit {_megabytes(ZIP_MAX_TOTAL_BYTES)})"
        )
    for member in members:
        if member.file_size >= ZIP_RATIO_MIN_BYTES and member.file_size > ZIP_MAX_RATIO * max(member.compress_size, 1):
            ratio = member.file_size / max(member.compress_size, 1)
            message = f"{member.filename} expands {ratio:.0f}x (limit {ZIP_MAX_RATIO}x); looks like a zip bomb"
            raise ReadError(path, "zip_bomb", message)


def _docx_blocks(doc) -> tuple[list[str], str | None]:
    """Paragraphs, lists and tables in body order; consecutive list items share one block."""
    from docx.table import Table

    blocks: list[str] = []
    first_heading: str | None = None
    previous_was_item = False
    for item in _docx_body_items(doc.element.body, doc):
        is_item = False
        if isinstance(item, Table):
            block = "\n".join(_docx_rows(item))
        else:
            text = item.text.strip()
            style = item.style.name if item.style is not None else ""
            level = 1 if style.lower() == "title" else _heading_level(style)
            if level and text:
                block = "#" * level + " " + " ".join(text.split())
                if first_heading is None and level == 1:
                    first_heading = block[2:]
            elif text and _is_list_paragraph(item, style):
                block, is_item = "- " + text, True
            else:
                block = text
        if not block:
            continue
        if is_item and previous_was_item:
            blocks[-1] += "\n" + block
        else:
            blocks.append(block)
        previous_was_item = is_item
    return blocks, first_heading


def _docx_body_items(container, doc) -> Iterator[Paragraph | Table]:
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in container.iterchildren():
        if child.tag == qn("w:p"):
            yield Paragraph(child, doc)
        elif child.tag == qn("w:tbl"):
            yield Table(child, doc)
        elif child.tag == qn("w:sdt"):  # content controls wrap ordinary paragraphs and tables
            content = child.find(qn("w:sdtContent"))
            if content is not None:
                yield from _docx_body_items(content, doc)


def _docx_rows(table: Table) -> Iterator[str]:
    for row in table.rows:
        cells, previous = [], None
        for cell in row.cells:
            if cell._tc is not previous:  # a merged cell is returned once per grid column it spans
                cells.append(" ".join(cell.text.split()))
            previous = cell._tc
        if any(cells):
            yield " | ".join(cells)


def _heading_level(style: str) -> int:
    match = _DOCX_HEADING.match(style)
    return min(int(match.group(1)), 6) if match and int(match.group(1)) > 0 else 0


def _is_list_paragraph(paragraph: Paragraph, style: str) -> bool:
    properties = paragraph._p.pPr
    return style.lower().startswith("list") or (properties is not None and properties.numPr is not None)


def _docx_properties(doc) -> dict:
    core = doc.core_properties
    keys = ("title", "author", "subject", "keywords")
    values = {key: " ".join(str(getattr(core, key) or "").split()) for key in keys}
    return {key: value for key, value in values.items() if value}


_PARSERS: dict[str, Callable[[bytes, Path], tuple[str, str | None, dict]]] = {
    ".md": _parse_markdown,
    ".markdown": _parse_markdown,
    ".txt": _parse_text,
    ".html": _parse_html,
    ".htm": _parse_html,
    ".pdf": _parse_pdf,
    ".docx": _parse_docx,
}


# --- sandbox ---------------------------------------------------------------------------------

Reader = Callable[..., ParsedDocument]
STARTUP_TIMEOUT_S = 120.0


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    job: tuple[int, Path] | None = None
    deadline: float = math.inf


class SandboxedReader:
    """Runs `reader` in worker processes with a memory cap and a per-file wall-clock timeout.

    A hostile PDF/DOCX can loop forever or allocate without bound; here it only costs that file.
    Workers are reused across files and replaced only after a timeout, crash or memory error.
    The cap is RLIMIT_AS set to the worker's start-up footprint plus `memory_mb`, so it holds
    even when the parent's __main__ (re-imported by "spawn") pulls in large libraries.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float = 60.0,
        memory_mb: int = 1024,
        processes: int = 1,
        reader: Reader = read_document,
    ) -> None:
        if timeout_s <= 0 or memory_mb <= 0 or processes < 1 or max_bytes <= 0:
            raise ValueError("max_bytes, timeout_s, memory_mb and processes must be positive")
        try:
            pickle.dumps(reader)
        except Exception as exc:
            raise TypeError(f"reader must be a module-level function so workers can import it: {exc}") from None
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.reader = reader
        # "spawn" never copies the parent, which may hold torch/tokenizers threads and locks.
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * processes
        self._running = False
        self._closed = False

    def __enter__(self) -> SandboxedReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def read(self, path: Path) -> ParsedDocument:
        for _, result in self.read_many([path]):
            if isinstance(result, ReadError):
                raise result
            return result
        raise AssertionError("read_many yielded nothing for one path")

    def read_many(self, paths: Iterable[Path]) -> Iterator[tuple[Path, ParsedDocument | ReadError]]:
        """Yield (path, document or error) in input order while up to `processes` files parse at once."""
        if self._closed:
            raise RuntimeError("SandboxedReader is closed")
        if self._running:
            raise RuntimeError("SandboxedReader.read_many is already running; finish that iteration first")
        self._running = True
        try:
            yield from self._read_in_order(enumerate(Path(path) for path in paths))
        finally:
            for slot, worker in enumerate(self._workers):
                if worker is not None and worker.job is not None:
                    self._retire(slot)  # its answer would arrive in the next iteration
            self._running = False

    def close(self) -> None:
        """Ask every worker to exit (all at once, so their shutdowns overlap), then reap them."""
        for worker in self._workers:
            if worker is not None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 2.0
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
                self._retire(slot)
        self._closed = True

    def _read_in_order(self, jobs: Iterator[tuple[int, Path]]) -> Iterator[tuple[Path, ParsedDocument | ReadError]]:
        # Finished results wait here until every earlier file is done; the window bounds that buffer.
        window = 4 * len(self._workers)
        finished: dict[int, tuple[Path, ParsedDocument | ReadError]] = {}
        next_index, in_flight, exhausted = 0, 0, False
        while True:
            while not exhausted and in_flight + len(finished) < window and (slot := self._idle_slot()) is not None:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                else:
                    self._dispatch(slot, job)
                    in_flight += 1
            if next_index in finished:
                yield finished.pop(next_index)
                next_index += 1
                continue  # a slot may have freed up: refill before yielding more
            if exhausted and in_flight == 0:
                return
            for index, path, result in self._collect():
                finished[index] = (path, result)
                in_flight -= 1

    def _idle_slot(self) -> int | None:
        for slot, worker in enumerate(self._workers):
            if worker is None or worker.job is None:
                return slot
        return None

    def _dispatch(self, slot: int, job: tuple[int, Path]) -> None:
        worker = self._workers[slot]
        if worker is None:
            worker = self._workers[slot] = self._start_worker()
        worker.conn.send(job[1])  # a new worker reads it once started
        worker.job = job
        worker.deadline = time.monotonic() + (self.timeout_s if worker.ready else STARTUP_TIMEOUT_S)

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, self.reader, self.max_bytes, self.memory_mb),
            name="kb-reader",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    def _collect(self) -> list[tuple[int, Path, ParsedDocument | ReadError]]:
        """Wait for at least one worker to answer, die or run past its deadline."""
        busy = [(slot, worker) for slot, worker in enumerate(self._workers) if worker is not None and worker.job]
        delay = max(0.0, min(worker.deadline for _, worker in busy) - time.monotonic())
        wait([handle for _, worker in busy for handle in (worker.conn, worker.process.sentinel)], delay)
        results = []
        for slot, worker in busy:
            outcome = self._poll(slot, worker)
            if outcome is not None:
                results.append(outcome)
        return results

    def _poll(self, slot: int, worker: _Worker) -> tuple[int, Path, ParsedDocument | ReadError] | None:
        index, path = worker.job
        while worker.conn.poll():
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(timeout=1.0)  # it closed the pipe on its way out
                break
            if message[0] == "ready":
                worker.ready = True
                worker.deadline = time.monotonic() + self.timeout_s
                continue
            worker.job, worker.deadline = None, math.inf
            if message[0] == "ok":
                return index, path, message[1]
            kind, text = message[1], message[2]
            if kind == "memory":
                self._retire(slot)  # its heap may stay fragmented or half-reserved
            return index, path, ReadError(path, kind, text)
        if worker.process.is_alive() and time.monotonic() < worker.deadline:
            return None
        if not worker.ready:
            exitcode = worker.process.exitcode
            self._retire(slot)
            raise RuntimeError(f"sandbox worker failed to start (exit code {exitcode}); see its stderr")
        if worker.process.is_alive():
            self._retire(slot)
            message = f"parsing took longer than {self.timeout_s:g} s and was stopped"
            return index, path, ReadError(path, "timeout", message)
        worker.process.join(timeout=1.0)
        kind, text = _describe_exit(worker.process.exitcode)
        self._retire(slot)
        return index, path, ReadError(path, kind, text)

    def _retire(self, slot: int) -> None:
        worker = self._workers[slot]
        if worker is None:
            return
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.conn.close()
        self._workers[slot] = None


def _describe_exit(exitcode: int | None) -> tuple[str, str]:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return "memory", f"parser process was killed ({name}), most likely for using too much memory"
        return "corrupt", f"parser process crashed ({name}) while reading the file"
    return "corrupt", f"parser process exited unexpectedly (exit code {exitcode}) while reading the file"


def _worker_main(conn: Connection, reader: Reader, max_bytes: int, memory_mb: int) -> None:
    """Parse paths from `conn` until told to stop; every outcome goes back as a plain tuple."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _cap_address_space(memory_mb)
    conn.send(("ready",))
    while True:
        try:
            path = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if path is None:
            return
        try:
            conn.send(_read_one(reader, path, max_bytes, memory_mb))
        except MemoryError:
            conn.send(("error", "memory", f"parsed text is too large to return within the {memory_mb} MB memory limit"))


def _read_one(reader: Reader, path: Path, max_bytes: int, memory_mb: int) -> tuple:
    try:
        return ("ok", reader(path, max_bytes=max_bytes))
    except ReadError as exc:
        return ("error", exc.kind, exc.message)
    except MemoryError:
        return ("error", "memory", f"parser needed more than the {memory_mb} MB memory limit")
    except Exception as exc:
        return ("error", "corrupt", f"parser failed: {type(exc).__name__}: {exc}")


def _cap_address_space(memory_mb: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: no cap, the timeout still applies
        return
    try:
        with open("/proc/self/statm") as statm:
            footprint = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        footprint = 0
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = footprint + memory_mb * _MB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # e.g. macOS refuses RLIMIT_AS; the timeout still applies
        pass
