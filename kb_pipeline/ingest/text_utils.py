"""Shared pieces of the document readers: the ReadError type and the text-form helpers every parser uses.

Kept apart from readers.py so the per-format parser modules (html_text, office) can use them
without importing readers, which imports them.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

READ_ERROR_KINDS = frozenset(
    {"too_large", "empty", "invalid_utf8", "binary", "corrupt", "timeout", "memory", "zip_bomb",
     "front_matter", "unsupported", "unreadable"}
)
MAX_TITLE_CHARS = 120
MB = 1024 * 1024


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


def megabytes(size: int) -> str:
    return f"{size / MB:.1f} MB" if size >= MB / 10 else f"{size / MB:.4f} MB ({size} bytes)"


# --- text form -------------------------------------------------------------------------------

_LINE_BREAK_CHARS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """The shared text form: NFC, '\\n' newlines, no trailing spaces, at most one blank line in a row."""
    # Each regex only runs when a plain substring test says it has work to do: on text that is already
    # in this form (every Markdown file, every second call) that makes this ~10x faster.
    text = unicodedata.normalize("NFC", text)
    if any(char in text for char in _LINE_BREAK_CHARS):
        text = _LINE_BREAKS.sub("\n", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


def first_line_title(text: str) -> str | None:
    for line in text.split("\n"):
        line = " ".join(line.split())
        if line:
            return line if len(line) <= MAX_TITLE_CHARS else None
    return None


# --- binary detection ------------------------------------------------------------------------

_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f") + b"\x7f"


def looks_binary(data: bytes) -> bool:
    if b"\x00" in data:
        return True
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    return controls > 0.10 * len(data)
