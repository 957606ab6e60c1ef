"""Render the PDF and DOCX documents of sample_corpus/ from plain-text sources.

Sources live in scripts/sample_sources/<department>/<name>.<pdf|docx>.txt:
  line 1            the document title
  '# ', '## '       headings
  '- '              bullet items
  'a | b | c'       table rows (a real table in DOCX, aligned text in PDF)
  blank line        paragraph break
Output goes to sample_corpus/<department>/<name>.<pdf|docx>. Needs reportlab (test extra).
Run: python scripts/build_sample_corpus.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "scripts" / "sample_sources"
TARGET = ROOT / "sample_corpus"


def blocks(lines: list[str]):
    """Yield (kind, payload) blocks: heading, bullet, table (list of rows) or paragraph."""
    para: list[str] = []
    table: list[list[str]] = []

    def flush():
        nonlocal para, table
        if para:
            yield ("paragraph", " ".join(para))
            para = []
        if table:
            yield ("table", table)
            table = []

    for line in lines:
        stripped = line.strip()
        if not stripped:
            yield from flush()
        elif stripped.startswith("#"):
            yield from flush()
            level = len(stripped) - len(stripped.lstrip("#"))
            yield ("heading", (level, stripped.lstrip("#").strip()))
        elif stripped.startswith("- "):
            yield from flush()
            yield ("bullet", stripped[2:])
        elif " | " in stripped:
            if para:
                yield from flush()
            table.append([cell.strip() for cell in stripped.split(" | ")])
        else:
            para.append(stripped)
    yield from flush()


def write_docx(title: str, body: list[str], out: Path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.add_heading(title, level=0)
    for kind, payload in blocks(body):
        if kind == "heading":
            document.add_heading(payload[1], level=min(payload[0], 4))
        elif kind == "bullet":
            document.add_paragraph(payload, style="List Bullet")
        elif kind == "table":
            table = document.add_table(rows=len(payload), cols=max(len(r) for r in payload))
            table.style = "Table Grid"
            for r, row in enumerate(payload):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
        else:
            document.add_paragraph(payload)
    document.save(out)


def write_pdf(title: str, body: list[str], out: Path) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import ListFlowable, Paragraph, SimpleDocTemplate, Spacer, Table

    styles = getSampleStyleSheet()
    story = [Paragraph(escape(title), styles["Title"])]
    for kind, payload in blocks(body):
        if kind == "heading":
            story.append(Paragraph(escape(payload[1]), styles[f"Heading{min(payload[0] + 1, 4)}"]))
        elif kind == "bullet":
            story.append(ListFlowable([Paragraph(escape(payload), styles["BodyText"])], bulletType="bullet"))
        elif kind == "table":
            story.append(Table(payload))
            story.append(Spacer(1, 6))
        else:
            story.append(Paragraph(escape(payload), styles["BodyText"]))
    doc = SimpleDocTemplate(str(out), pagesize=A4, title=title, author="Northwind Analytics")
    doc.build(story)


def main() -> int:
    count = 0
    for source in sorted(SOURCES.glob("*/*.txt")):
        stem, fmt = source.stem.rsplit(".", 1)
        lines = source.read_text(encoding="utf-8").splitlines()
        title, body = lines[0].strip(), lines[1:]
        out = TARGET / source.parent.name / f"{stem}.{fmt}"
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "docx":
            write_docx(title, body, out)
        elif fmt == "pdf":
            write_pdf(title, body, out)
        else:
            print(f"{source}: unknown target format {fmt!r} (use .pdf.txt or .docx.txt)", file=sys.stderr)
            return 1
        count += 1
    print(f"wrote {count} documents under {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
