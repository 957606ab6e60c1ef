"""`kb index check` and `kb index rebuild`: the FAISS index against the database."""

from __future__ import annotations

import json

import typer

from kb_pipeline.cli.common import JsonOpt, app, clean, command, data, emit_json, out, ready_settings

index_app = typer.Typer(help="Check or rebuild the FAISS index.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("check")
@command
def index_check(json_out: bool = JsonOpt) -> None:
    """Compare the index with the database (ids, count, checksum) without changing anything."""
    from kb_pipeline.enrich.shared_pass import current_embed_key
    from kb_pipeline.indexing.sync import check_index

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
    from kb_pipeline.enrich.shared_pass import current_embed_key
    from kb_pipeline.indexing.sync import sync_index

    s = ready_settings()
    result = sync_index(s, current_embed_key(s), rebuild=True)
    if json_out:
        emit_json(result)
    else:
        out.print(f"index rebuilt: {result['count']} vectors ({result['kind']}) at {result['path']}", highlight=False)
