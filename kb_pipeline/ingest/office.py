"""The PDF and DOCX readers, including the zip-bomb check done before a DOCX is inflated."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kb_pipeline.ingest.text_utils import ReadError, first_line_title, megabytes, normalise_text

if TYPE_CHECKING:
    from docx.table import Table
    from docx.text.paragraph import Paragraph
    from pypdf import PdfReader

# pypdf and python-docx are imported where used: they double a sandbox worker's start-up time,
# which every text-only batch and every worker replaced after a timeout would pay.

ZIP_MAX_TOTAL_BYTES = 256 * 1024 * 1024
ZIP_MAX_RATIO = 200
# A ratio only means something for members big enough to hurt; tiny repetitive XML compresses well.
ZIP_RATIO_MIN_BYTES = 1024 * 1024


# --- PDF -------------------------------------------------------------------------------------


def parse_pdf(data: bytes, path: Path) -> tuple[str, str | None, dict]:
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
    return text, info.get("title") or first_line_title(text), metadata


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


def parse_docx(data: bytes, path: Path) -> tuple[str, str | None, dict]:
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
            path, "zip_bomb", f"archive would expand to {megabytes(total)} (limit {megabytes(ZIP_MAX_TOTAL_BYTES)})"
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
