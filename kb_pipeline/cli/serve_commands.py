"""`kb enrich`, `kb search`, `kb index`, `kb users`, `kb export`, `kb tag`, `kb summarise`."""

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
    err,
    out,
    progress_bar,
    ready_settings,
)

index_app = typer.Typer(help="Check or rebuild the FAISS index.", no_args_is_help=True)
users_app = typer.Typer(help="Users and the groups that grant access to restricted documents.", invoke_without_command=True)
app.add_typer(index_app, name="index")
app.add_typer(users_app, name="users")


class Mode(StrEnum):
    hybrid = "hybrid"
    dense = "dense"
    keyword = "keyword"


@app.command()
@command
def enrich(json_out: bool = JsonOpt) -> None:
    """Tag, summarise and embed everything new or stale, then bring the index up to date."""
    from kb_pipeline.serving.enrich import enrich as run_enrich

    s = ready_settings()
    with progress_bar() as bar:
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(stage, total=total, detail="")
            bar.update(bars[stage], completed=done, total=total)

        report = run_enrich(s, on_progress=on_progress)
    data = report.as_dict()
    if json_out:
        emit_json(data)
        return
    missing = [t for t in ("classify", "summarise") if t not in report.adapters]
    out.print(
        f"{report.tagged} documents tagged, {report.summarised} summarised, {report.embedded} chunks embedded "
        f"({report.embed_key}); index {data['index']['action']}, {data['index']['count']} vectors "
        f"in {report.seconds:.1f}s",
        highlight=False,
    )
    if missing:
        err.print(f"No active {' or '.join(missing)} adapter yet: run `kb train all` for tags and summaries.")


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
    from kb_pipeline.indexing.sync import load_live_index
    from kb_pipeline.serving.access import reader_for
    from kb_pipeline.serving.enrich import load_task_models
    from kb_pipeline.serving.search import Filters
    from kb_pipeline.serving.search import search as run_search
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
        index = embed = None
        if mode is not Mode.keyword:
            models = load_task_models(s)
            index, embed = load_live_index(s, models.embed_key), models.embed
        for item in batch:
            results = run_search(session, item["query"], k=k, mode=mode.value, filters=filters, index=index, embed=embed)
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


@index_app.command("check")
@command
def index_check(json_out: bool = JsonOpt) -> None:
    """Compare the index with the database (ids, count, checksum) without changing anything."""
    from kb_pipeline.indexing.sync import check_index
    from kb_pipeline.serving.enrich import current_embed_key

    s = ready_settings()
    result = check_index(s, current_embed_key(s))
    if json_out:
        emit_json(result)
    else:
        verdict = "[green]ok[/green]" if result["ok"] else f"[red]not in sync[/red] {data(result.get('problem', ''))}"
        out.print(f"index: {verdict}")
        out.print(clean(json.dumps(result, indent=2), multiline=True), highlight=False, markup=False)
    if not result["ok"]:
        raise typer.Exit(1)


@index_app.command("rebuild")
@command
def index_rebuild(json_out: bool = JsonOpt) -> None:
    """Rebuild the index from stored embeddings (no re-encoding) and swap it in when complete."""
    from kb_pipeline.indexing.sync import sync_index
    from kb_pipeline.serving.enrich import current_embed_key

    s = ready_settings()
    result = sync_index(s, current_embed_key(s), rebuild=True)
    if json_out:
        emit_json(result)
    else:
        out.print(f"index rebuilt: {result['count']} vectors ({result['kind']}) at {result['path']}", highlight=False)


@users_app.callback()
@command
def users(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """List users and their groups."""
    if ctx.invoked_subcommand is not None:
        return
    from kb_pipeline.store import derived
    from kb_pipeline.store.db import session_factory

    s = ready_settings()
    with session_factory(s)() as session:
        rows = derived.list_users(session)
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        out.print(f"{clean(row['name'])}: {clean(', '.join(row['groups'])) or '(no groups)'}", markup=False)


@users_app.command("add")
@command
def users_add(
    name: str = typer.Argument(...),
    groups: str = typer.Option("", "--groups", help="Comma-separated groups, e.g. hr,finance."),
    json_out: bool = JsonOpt,
) -> None:
    """Create a user (or replace their groups)."""
    from kb_pipeline.ingest.identifiers import MAX_IDENTIFIER_CHARS, normalise_identifiers
    from kb_pipeline.store import derived
    from kb_pipeline.store.db import session_factory

    if not name.strip() or len(name) > MAX_IDENTIFIER_CHARS:
        raise UserError(f"user name must be 1 to {MAX_IDENTIFIER_CHARS} characters: {name[:40]!r}")
    too_long = [g for g in normalise_identifiers(groups.split(",")) if len(g) > MAX_IDENTIFIER_CHARS]
    if too_long:
        raise UserError(f"--groups: {too_long[0][:40]!r}... is longer than {MAX_IDENTIFIER_CHARS} characters")
    s = ready_settings()
    with session_factory(s).begin() as session:
        groups_now = derived.add_user(session, name, groups.split(","))
    if json_out:
        emit_json({"name": name, "groups": groups_now})
    else:
        out.print(f"{clean(name)}: {clean(', '.join(groups_now)) or '(no groups)'}", markup=False)


@app.command()
@command
def export(user: str | None = UserOpt, json_out: bool = JsonOpt) -> None:
    """One JSON line per active document: gold labels beside the model's predictions, and its `acl`.

    Always JSON lines (--json is accepted for symmetry with the other commands).
    """
    from kb_pipeline.serving.access import reader_for
    from kb_pipeline.serving.export import export_rows
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
    from kb_pipeline.serving.on_demand import tag_document

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
    from kb_pipeline.serving.on_demand import summarise_document, summarise_file

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
