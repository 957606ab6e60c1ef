"""The HTML reader: drops page boilerplate and renders the content into the shared text form."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

from kb_pipeline.ingest.text_utils import ReadError, looks_binary

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


def parse_html(data: bytes, path: Path) -> tuple[str, str | None, dict]:
    if not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and looks_binary(data):
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
