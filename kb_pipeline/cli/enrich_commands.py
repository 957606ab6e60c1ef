"""`kb enrich`: every task's outputs for everything new or stale, then the index."""

from __future__ import annotations

from kb_pipeline.cli.common import JsonOpt, app, command, emit_json, err, out, progress_bar, ready_settings


@app.command()
@command
def enrich(json_out: bool = JsonOpt) -> None:
    """Tag, summarise and embed everything new or stale, then bring the index up to date."""
    from kb_pipeline.enrich.shared_pass import enrich as run_enrich
    from kb_pipeline.enrich.shared_pass import load_task_models
    from kb_pipeline.search.query_encoder import prepare_query_encoder

    s = ready_settings()
    models = load_task_models(s)
    with progress_bar() as bar:
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(stage, total=total, detail="")
            bar.update(bars[stage], completed=done, total=total)

        report = run_enrich(s, models=models, on_progress=on_progress)
        bar.add_task("query encoder", total=None, detail="")
        query_encoder = prepare_query_encoder(s, models)  # searches after this one encode queries fast
    data = report.as_dict() | {"query_encoder": query_encoder}
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
