"""Turn one document file into plain text plus a title, or a ReadError a person can act on.

Every format produces the same text form so the chunker needs no per-format logic: '\\n'
newlines, one blank line between paragraphs, markdown-style '#' headings, one list item or table
row per line, NFC unicode. Parsing untrusted PDF/DOCX is risky, so SandboxedReader runs it in
worker processes with a memory cap and a per-file timeout; small Markdown and plain-text files
(`parses_in_process`) are parsed in the ingest process, where the worker round trip would cost more
than the parse itself.

This module is `read_document` plus the plain-text and markdown parsers; HTML lives in html_text,
PDF/DOCX in office, the worker sandbox (SandboxedReader) in sandbox, and ReadError with the shared text
helpers in text_utils: import each from its own module.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kb_pipeline.ingest.front_matter import FrontMatterError, labels_from_metadata, split_front_matter
from kb_pipeline.ingest.html_text import parse_html
from kb_pipeline.ingest.office import parse_docx, parse_pdf
from kb_pipeline.ingest.text_utils import ReadError, first_line_title, looks_binary, megabytes, normalise_text

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
# Text formats whose parsing is linear-time pure Python plus libyaml (front matter): nothing that can hang
# or crash. Above the size cap they still go to the sandbox, whose memory cap and timeout bound a huge
# front-matter block, say, without risking the ingest process.
IN_PROCESS_SUFFIXES: frozenset[str] = frozenset({".md", ".markdown", ".txt"})
IN_PROCESS_MAX_BYTES = 1024 * 1024


def is_supported(path: Path) -> bool:
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def parses_in_process(path: Path, size: int) -> bool:
    """Whether a file of this type and size may be parsed outside the sandbox (see IN_PROCESS_SUFFIXES)."""
    return size <= IN_PROCESS_MAX_BYTES and Path(path).suffix.lower() in IN_PROCESS_SUFFIXES


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    title: str
    mime: str
    metadata: dict
    sha256: str
    size: int


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
            size, limit = megabytes(stat.st_size), megabytes(max_bytes)
            raise ReadError(path, "too_large", f"file is {size}, over the {limit} limit")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ReadError(path, "unreadable", f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew since stat
        raise ReadError(path, "too_large", f"file is over the {megabytes(max_bytes)} limit")
    if not data:
        raise ReadError(path, "empty", "file is empty (0 bytes)")
    return data


def title_from_name(path: Path) -> str:
    """'leave-policy_2024.md' -> 'Leave policy 2024'."""
    words = " ".join(re.sub(r"[-_.]+", " ", Path(path).stem).split())
    return words[:1].upper() + words[1:] if words else Path(path).name


# --- plain text and markdown -----------------------------------------------------------------


def _decode_utf8(data: bytes, path: Path) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ReadError(path, "invalid_utf8", "file is UTF-16 encoded; save it as UTF-8")
    if looks_binary(data):
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
    return text, first_line_title(text), {}


_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_H1_OPENING = re.compile(r" {0,3}#( +)")


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
        elif not in_fence and (title := _h1_title(line)) is not None:
            return title
    return None


def _h1_title(line: str) -> str | None:
    """What `re.match(r" {0,3}# +(.+?)(?: +#+)? *$", line).group(1).strip()` gives, in linear time.

    That regex backtracks cubically on a long line of spaces (8,000 take a second), which matters now
    that Markdown is parsed in the ingest process, outside the sandbox's timeout.
    """
    opening = _H1_OPENING.match(line)
    if opening is None:
        return None
    body = line[opening.end() :].rstrip(" ")
    if not body:  # only spaces after '#': the regex backtracks to give one of them to the title
        return "" if len(opening.group(1)) >= 2 else None
    # An optional closing sequence (spaces then '#'s) ends the title, if something is left before it.
    without_hashes = body.rstrip("#")
    if len(without_hashes) < len(body) and without_hashes.endswith(" ") and without_hashes.strip(" "):
        body = without_hashes.rstrip(" ")
    return body.strip()


# --- per-suffix dispatch ---------------------------------------------------------------------

_PARSERS: dict[str, Callable[[bytes, Path], tuple[str, str | None, dict]]] = {
    ".md": _parse_markdown,
    ".markdown": _parse_markdown,
    ".txt": _parse_text,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
}
