"""`kb search`, `kb export`, `kb tag`, `kb summarise`: what the knowledge base says about its documents."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from kb_pipeline.cli.common import (
    JsonOpt,
    UserError,
    UserOpt,
    app,
    clean,
    command,
    data,
    emit_json,
    out,
    ready_settings,
)


class Mode(StrEnum):
    hybrid = "hybrid"
    dense = "dense"
    keyword = "keyword"


@app.command()
@command
def search(
    query: str | None = typer.Argument(None, help="What to look for."),
    k: int = typer.Option(10, "-k", min=1, max=1000, help="Number of documents."),
    mode: Mode = typer.Option(Mode.hybrid, "--mode"),
    tag: list[str] = typer.Option([], "--tag", help="Only documents with this tag (repeatable)."),
    category: str | None = typer.Option(None, "--category"),
    user: str | None = typer.Option(
        None, "--user", help="Search as this user (their groups unlock documents); without it, public documents only."
    ),
    queries: Path | None = typer.Option(None, "--queries", help="JSONL file of {\"query\": ...} lines."),
    json_out: bool = JsonOpt,
) -> None:
    """Hybrid keyword + dense search, filtered by tags, category and the user's access rights."""
    from kb_pipeline.search.access import reader_for
    from kb_pipeline.search.hybrid import Filters, Searcher, open_searcher
    from kb_pipeline.store.db import session_factory

    if (query is None) == (queries is None):
        raise UserError("give either a QUERY or --queries FILE")
    if query is not None and not _is_text(query):
        raise UserError("the query is not valid text (it holds bytes that are not UTF-8)")
    batch = _read_queries(queries) if queries else [{"query": query}]
    s = ready_settings()
    with session_factory(s)() as session:
        reader = reader_for(session, user)
        # Search is never the operator's view: without --user it is anonymous (public documents only).
        groups = None if reader.operator else reader.groups
        filters = Filters(tags=tuple(tag), category=category, groups=groups)
        searcher = Searcher() if mode is Mode.keyword else open_searcher(s, fast_path="cached")  # keyword needs no model
        for item in batch:
            results = searcher.search(session, item["query"], k=k, mode=mode.value, filters=filters)
            if json_out or queries:
                emit_json({"query": item["query"], "results": results})
            else:
                _print_results(item["query"], results)


def _is_text(value: str) -> bool:
    """False for strings with lone surrogates (undecodable argv bytes, "\\ud800" in JSON): they cannot be printed."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_queries(path: Path) -> list[dict]:
    """Every query of the file, checked before the first result is printed (no failure mid-output)."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            raise UserError(f"{path}:{number}: expected an object with a string field 'query'")
        if not _is_text(item["query"]):
            raise UserError(f"{path}:{number}: 'query' holds a lone surrogate escape (\\ud800-\\udfff), not text")
        items.append(item)
    return items


def _print_results(query: str, results: list[dict]) -> None:
    if not results:
        out.print(f"No documents match {clean(repr(query))} (or none you may read).", markup=False)
        return
    for rank, r in enumerate(results, 1):
        tags = data(f"  [{', '.join(r['tags'])}]") if r["tags"] else ""
        out.print(f"[bold]{rank}. {data(r['title'])}[/bold]{tags}  (score {r['score']:.4f})")
        out.print(f"   {clean(r['path'])}", style="dim", soft_wrap=True, markup=False)
        out.print(f"   {clean(r['snippet'])}", markup=False)


@app.command()
@command
def export(user: str | None = UserOpt, json_out: bool = JsonOpt) -> None:
    """One JSON line per active document: gold labels beside the model's predictions, and its `acl`.

    Always JSON lines (--json is accepted for symmetry with the other commands).
    """
    from kb_pipeline.search.access import reader_for
    from kb_pipeline.search.export import export_rows
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        reader = reader_for(session, user)
        for row in export_rows(session, reader=reader):
            emit_json(row)


@app.command()
@command
def tag(
    doc: str = typer.Argument(..., help="Document id or path."), user: str | None = UserOpt, json_out: bool = JsonOpt
) -> None:
    """Predict category and tags for one document now (nothing is stored)."""
    from kb_pipeline.enrich.on_demand import tag_document

    result = tag_document(ready_settings(), doc, user=user)
    if json_out:
        emit_json(result)
        return
    out.print(f"{clean(result['title'])}: {clean(result['category'])} ({result['category_score']:.2f})", markup=False)
    for name, score in result["tags"]:
        out.print(f"  {clean(name)} ({score:.2f})", markup=False)


@app.command()
@command
def summarise(
    doc: str | None = typer.Argument(None, help="Document id or path in the KB."),
    file: Path | None = typer.Option(None, "--file", help="Summarise a file that is not in the KB."),
    user: str | None = UserOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Summarise one document (or any readable file) with the active summarise adapter."""
    from kb_pipeline.enrich.on_demand import summarise_document, summarise_file

    if (doc is None) == (file is None):
        raise UserError("give either a DOC or --file PATH")
    if file is not None and user is not None:
        raise UserError("--user applies to documents in the KB; --file reads a file you can already read")
    s = ready_settings()
    result = summarise_document(s, doc, user=user) if doc is not None else summarise_file(s, file)
    if json_out:
        emit_json(result)
    else:
        out.print(f"[bold]{data(result['title'])}[/bold]\n{data(result['summary'], multiline=True)}")
