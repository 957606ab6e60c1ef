"""Summary candidates: the plain prose sentences of a document, with their char offsets.

Every reader renders documents as Markdown-style text ('#' headings, one list item or table row per line),
so a sentence splitter that ignores structure makes headings, table rows and metadata lines summary
sentences ("# Code Review Guidelines ## Required approvals"). Here headings, table rows, code fences,
front-matter residue ("owner: People Team", "**Status:** Accepted") and title-like one-line paragraphs are
never candidates; list items and quotes are, without their markers. Each sentence keeps its raw char span
in the document text (callers highlight it) and its words with their own spans, each word's Markdown
inline syntax (**bold**, `code`, [text](url), <tags>) stripped, so a summary built from words is plain
text, and a word-level compressor can drop words without breaking markup.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Word(NamedTuple):
    start: int  # char offsets of the raw word in the document text
    end: int
    text: str  # the word without Markdown syntax


class Span(NamedTuple):
    """A candidate summary sentence: raw char span in the document, plain text, and its words."""

    start: int
    end: int
    text: str
    words: tuple[Word, ...] = ()


_FENCE = re.compile(r"[ \t]{0,3}(```|~~~)")
_HEADING = re.compile(r"[ \t]{0,3}#{1,6}(?:[ \t]|$)")
_RULE = re.compile(r"[ \t]{0,3}(?:[-*_][ \t]*){3,}$")
_SETEXT = re.compile(r"[ \t]{0,3}(?:=+|-+)[ \t]*$")
_TABLE = re.compile(r"[ \t]*\|.*\||.*\|.*\|")  # a row with cell bars, or two bars anywhere
_HTML_LINE = re.compile(r"[ \t]*<[^>]*>[ \t]*$")
_YAML = re.compile(r"(?:---|\.\.\.)[ \t]*$|[a-z_][a-z0-9_-]*:(?:[ \t]|$)")  # front-matter residue
_LABEL = re.compile(r"[ \t]*(?:\*\*|__)[^*_\n]{1,40}?:?(?:\*\*|__):?[ \t]*")  # "**Status:** Accepted"
_KEY = re.compile(r"[ \t]*[A-Z][\w./-]*(?: [\w./-]+){0,2}:[ \t]+")  # "From: ...", "Effective date: ..."
_ITEM = re.compile(r"[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+(?:\[[ xX]\][ \t]+)?")
_QUOTE = re.compile(r"[ \t]*(?:>[ \t]?)+")
_SENTENCE = re.compile(r"\S.*?(?:[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|\Z)", re.S)
_TERMINAL = re.compile(r"[.!?:;][\"'\u201d\u2019)\]*_`]*$")
_WORD = re.compile(r"\S+")
_LABEL_VALUE_WORDS = 4  # "**Owner:** Platform team" is metadata; "**Note:** a longer sentence." is prose
_TITLE_WORDS = 10  # a one-line paragraph this short without end punctuation is a title, not a sentence

_FULL_LINK = re.compile(r"!?\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])")
_LINK_END = re.compile(r"\](?:\([^)]*\)|\[[^\]]*\])")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>]+)>")
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_LEADING = re.compile(r"^([(\"'\u201c\u2018]*)[*_\[]+")
_TRAILING = re.compile(r"[*_\]]+([.,;:!?)\"'\u201d\u2019]*)$")


def plain_word(raw: str) -> str:
    """A whitespace-delimited word without Markdown inline syntax ('' when it was only markup)."""
    code = "`" in raw
    word = _AUTOLINK.sub(r"\1", raw)
    word = _FULL_LINK.sub(r"\1", word)
    word = _LINK_END.sub("", word)
    word = _TAG.sub("", word).replace("`", "").replace("**", "").replace("~~", "")
    if not code:  # `__init__` stays as written; _emphasis_ loses its marks
        word = _LEADING.sub(r"\1", word)
        word = _TRAILING.sub(r"\1", word)
    word = word.replace("\\", "")
    return "" if re.fullmatch(r"[>#|*_\[\]()]*", word) else word


def plain_text(text: str) -> str:
    """Markdown inline syntax stripped from a stretch of text, whitespace collapsed."""
    return " ".join(w for w in (plain_word(m.group()) for m in _WORD.finditer(text)) if w)


class _Block(NamedTuple):
    start: int
    end: int
    lines: int
    kind: str  # "para", "item" (list item) or "quote"


def _blocks(text: str) -> list[_Block]:
    """Prose regions: paragraphs, list items and quotes, with their markers left outside the region."""
    blocks: list[_Block] = []
    kind, lines = "", []  # the open block: its kind and its lines' (start, end)
    fenced = False

    def close() -> None:
        nonlocal lines
        if lines:
            blocks.append(_Block(lines[0][0], lines[-1][1], len(lines), kind))
        lines = []

    position = 0
    for line in text.split("\n"):
        start, end = position, position + len(line)
        position = end + 1
        if _FENCE.match(line):
            fenced = not fenced
            close()
            continue
        if fenced or not line.strip():
            close()
            continue
        if lines and _SETEXT.match(line):
            lines.pop()  # the line above was a setext heading
            close()
            continue
        if _HEADING.match(line) or _RULE.match(line) or _TABLE.match(line) or _HTML_LINE.match(line):
            close()
            continue
        if _YAML.match(line) and not _TERMINAL.search(line.rstrip()) or _is_label_line(line):
            close()
            continue
        item, quote = _ITEM.match(line), _QUOTE.match(line)
        if item or (quote and kind != "quote") or not lines:
            close()
            marker = item or quote
            kind = "item" if item else "quote" if quote else "para"
            start = start + marker.end() if marker else start
        lines.append((start, end))
    close()
    return [b for b in blocks if b.end > b.start]


def _is_label_line(line: str) -> bool:
    """Metadata such as "**Status:** Accepted" or "From: Finance Operations": a label with a short or
    unpunctuated value, or a row of bold labels ("**IC:** Chloe. **Author:** Tom.")."""
    match = _LABEL.match(line) or _KEY.match(line)
    if not match:
        return False
    value = line[match.end() :].rstrip()
    words = len(value.split())
    if match.re is _LABEL:
        return words <= _LABEL_VALUE_WORDS or not _TERMINAL.search(value) or bool(_LABEL.search(value))
    return words <= _LABEL_VALUE_WORDS or (words <= _TITLE_WORDS and not _TERMINAL.search(value))


def _title_like(text: str, block: _Block) -> bool:
    body = text[block.start : block.end].rstrip()
    short = len(body.split()) <= _TITLE_WORDS and not re.search(r"[.!?]\s", body)
    return block.lines == 1 and block.kind == "para" and short and not _TERMINAL.search(body)


def _sentences(text: str, blocks: list[_Block]) -> list[Span]:
    spans = []
    for block in blocks:
        for match in _SENTENCE.finditer(text, block.start, block.end):
            start, end = match.start(), match.start() + len(match.group().rstrip())
            words = tuple(
                Word(block_word.start(), block_word.end(), plain)
                for block_word in _WORD.finditer(text, start, end)
                if (plain := plain_word(block_word.group()))
            )
            if words and words[0].text.startswith("#"):  # "#dev-experience on Slack." must not read as a heading
                words = (words[0]._replace(text=words[0].text.lstrip("#")), *words[1:])
            if any(ch.isalnum() for w in words for ch in w.text):
                spans.append(Span(start, end, " ".join(w.text for w in words), words))
    return spans


def candidate_sentences(text: str) -> list[Span]:
    """The document's plain prose sentences in order (what summaries, their baselines and oracle choose from).

    A text with no prose at all (only headings or tables) falls back to its title-like lines, so a
    non-empty document always has a candidate; headings, table rows and code stay out even then.
    """
    blocks = _blocks(text)
    prose = [b for b in blocks if not _title_like(text, b)]
    return _sentences(text, prose) or _sentences(text, blocks)
