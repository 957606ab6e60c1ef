"""`kb eval`: train and score the adapters on a labelled corpus in a scratch KB; write a report."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from kb_pipeline.cli.common import (
    JsonOpt,
    app,
    clean,
    command,
    data,
    emit_json,
    err,
    out,
    progress_bar,
    settings,
)
from kb_pipeline.cli.train_commands import KindChoice


@app.command("eval")
@command
def eval_(
    path: Path = typer.Argument(..., help="Folder of documents with front matter `category`, `tags`, `summary`."),
    out_dir: Path = typer.Option(Path("kb-eval"), "--out", help="Where report.md, metrics.json and the plots go."),
    test_glob: str | None = typer.Option(
        None, "--test-glob", help="Hold out the documents whose relative path matches (instead of a hashed 20%)."
    ),
    test_share: float = typer.Option(0.2, "--test-share", min=0.01, max=0.9, help="Share of each category held out."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Maximum epochs per task."),
    kind: KindChoice | None = typer.Option(None, "--kind", help="Adapter kind (default: lora)."),
    keep_scratch: bool = typer.Option(False, "--keep-scratch", help="Keep the temporary KB (its path is printed)."),
    json_out: bool = JsonOpt,
) -> None:
    """Score tags, search and summaries against a labelled corpus's gold labels, beside simple baselines.

    Trains in a temporary KB (your KB_HOME and database are never touched) on a deterministic 80% of the
    documents and scores the held-out rest.
    """
    from kb_pipeline.evaluation.run import STAGES, run_eval

    s = settings()
    line = ["kb", "eval", str(path), "--out", str(out_dir)]
    if test_glob:
        line += ["--test-glob", test_glob]
    elif test_share != 0.2:
        line += ["--test-share", str(test_share)]
    if epochs:
        line += ["--epochs", str(epochs)]
    if kind:
        line += ["--kind", kind.value]
    with progress_bar() as bar:
        overall = bar.add_task("eval", total=len(STAGES), detail="")
        training = None

        def on_stage(stage: str, index: int, total: int) -> None:
            bar.update(overall, completed=index, total=total, detail=stage)

        def on_step(task: str, step: int, total: int, loss: float) -> None:
            nonlocal training
            if training is None:
                training = bar.add_task("train", total=total, detail="")
            bar.update(training, completed=step, total=total, detail=f"{task} loss {loss:.4f}")

        metrics = run_eval(
            path, out_dir, settings=s, test_glob=test_glob, test_share=test_share, epochs=epochs,
            kind=kind.value if kind else None, on_stage=on_stage, on_step=on_step, command=shlex.join(line),
            keep_scratch=keep_scratch,
        )
    if keep_scratch:
        err.print(f"scratch KB kept at {clean(metrics['scratch_home'])}", markup=False, soft_wrap=True)
    if json_out:
        emit_json(json.loads((Path(metrics["out_dir"]) / "metrics.json").read_text()))
        return
    _print_summary(metrics)


def _print_summary(m: dict) -> None:
    c, s, r = m["classification"], m["search"], m["summaries"]

    def f(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    model = (c.get("model") or {}).get("category") or {}
    majority, tfidf = c["baselines"]["majority"]["category"], c["baselines"]["tfidf_logreg"]["category"]
    split = m["split"]
    out.print(f"train {split['train']} / test {split['test']} documents", highlight=False)
    out.print(
        f"category accuracy {f(model.get('accuracy'))}, macro-F1 {f(model.get('macro_f1'))} "
        f"(majority {f(majority['accuracy'])} / {f(majority['macro_f1'])}, "
        f"TF-IDF + LR {f(tfidf['accuracy'])} / {f(tfidf['macro_f1'])})",
        highlight=False,
    )
    for entry in s.get("modes", {}).values():
        if entry:
            out.print(f"search {entry['label']}: nDCG@10 {f(entry['ndcg@10'])}, Recall@1 {f(entry['recall@1'])}",
                      highlight=False)
    if r.get("n"):
        model_l = (r.get("model") or {}).get("rougeL")
        out.print(f"summaries ROUGE-L {f(model_l)} (lead {f(r['baselines']['lead']['rougeL'])})", highlight=False)
    for note in m["notes"]:
        err.print(f"[yellow]note:[/yellow] {data(note)}", highlight=False)
    out.print(f"report: {clean(Path(m['out_dir']) / 'report.md')}", markup=False, soft_wrap=True)
