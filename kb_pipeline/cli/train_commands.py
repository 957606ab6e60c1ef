"""`kb train` and `kb adapters`: training task adapters and managing their versions."""

from __future__ import annotations

from enum import StrEnum

import typer
from rich.table import Table
from rich.text import Text

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
    ready_settings,
)

adapters_app = typer.Typer(help="List, promote and roll back adapter versions.", invoke_without_command=True)
app.add_typer(adapters_app, name="adapters")


class KindChoice(StrEnum):
    lora = "lora"
    bottleneck = "bottleneck"


@app.command()
@command
def train(
    task: str = typer.Argument(..., help="A registered task (classify, embed, summarise, ...) or all."),
    kind: KindChoice | None = typer.Option(None, "--kind", help="Adapter kind (default: lora)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Maximum epochs (early stopping may end sooner)."),
    json_out: bool = JsonOpt,
) -> None:
    """Train task adapters on the frozen backbone; a version goes live only if it is at least as good."""
    from kb_pipeline.tasks.registry import TASKS, get_task
    from kb_pipeline.training.service import train_tasks

    s = ready_settings()
    tasks = list(TASKS) if task == "all" else [get_task(task).name]
    with progress_bar() as bar:
        bars = {t: bar.add_task(t, total=None, detail="waiting") for t in tasks}

        def on_step(t: str, step: int, total: int, loss: float) -> None:
            bar.update(bars[t], completed=step, total=total, detail=f"loss {loss:.4f}")

        outcomes = train_tasks(s, tasks, kind=kind.value if kind else None, epochs=epochs, on_step=on_step)
    if json_out:
        emit_json([o.as_dict() for o in outcomes])
    else:
        _print_outcomes(outcomes)
    missing = [o for o in outcomes if not o.trained]
    for o in missing:
        err.print(f"[yellow]{o.task} not trained:[/yellow] {data(o.message)}", highlight=False)
    if missing and (task != "all" or len(missing) == len(outcomes)):
        raise typer.Exit(1)


def _print_outcomes(outcomes) -> None:
    """One short block per task: readable in a narrow terminal, unlike a 12-column table."""
    for o in outcomes:
        if not o.trained:
            continue
        m = o.primary_metric
        before = f", active version scored {o.active_before[m]:.4f}" if o.active_before else ""
        others = ", ".join(f"{k} {v:.4f}" for k, v in o.metrics.items() if isinstance(v, float) and k != m)
        out.print(
            f"[bold]{o.task}[/bold] v{o.version} [{'green' if o.status == 'active' else 'yellow'}]{o.status}"
            f"[/] ({o.kind}): {m} {o.metrics[m]:.4f} vs baseline {o.baseline[m]:.4f}{before}",
            highlight=False,
        )
        if others:
            out.print(f"    {others}", highlight=False, markup=False)
        for line in _pair_lines(o.metrics, o.baseline):
            out.print(f"    {line}", highlight=False, markup=False)
        out.print(
            f"    adapter {o.adapter_params:,} params = {o.adapter_share:.3%} of the backbone's "
            f"{o.backbone_params:,}; head {o.head_params:,}; files {o.size_bytes / 1e6:.2f} MB; {o.seconds:.0f} s",
            highlight=False,
        )
        out.print(f"    {clean(o.message)}", highlight=False, markup=False)


def _pair_lines(metrics: dict, baseline: dict) -> list[str]:
    """The embed adapter's training pairs kept and dropped by source, and its validation figure per source."""
    from kb_pipeline.training.embed_pairs import describe

    lines = [f"pairs: {describe(metrics['pairs'])}"] if isinstance(metrics.get("pairs"), dict) else []
    untuned = baseline.get("by_source") or {}
    for source, m in (metrics.get("by_source") or {}).items():
        if isinstance(m, dict) and "ndcg@10" in m:
            was = untuned.get(source, {}).get("ndcg@10")
            lines.append(f"{source}: ndcg@10 {m['ndcg@10']:.4f}" + (f" vs untuned {was:.4f}" if was is not None else "")
                         + f" ({m.get('queries', '?')} queries)")
    return lines


@adapters_app.callback()
@command
def adapters(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """List adapter versions (all tasks, newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.store.queries import list_versions

    s = ready_settings()
    with session_factory(s)() as session:
        rows = [_version_dict(v) for v in list_versions(session)]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        out.print("No adapters yet: run `kb train all`.")
        return
    table = Table("version", "task", "kind", "status", "metric", "value", "baseline", "adapter params", "size",
                  "backbone", "created", "reason")
    for r in rows:
        m = r["primary_metric"]
        table.add_row(
            str(r["version"]), r["task"], r["kind"], r["status"], m, f"{r['metrics'].get(m, 0):.4f}",
            f"{r['baseline'].get(m, 0):.4f}", f"{r['adapter_params']:,} ({r['adapter_share']:.2%})",
            f"{r['size_bytes'] / 1e6:.2f} MB", f"{r['backbone']} {r['backbone_hash'][:8]}", r["created_at"][:19],
            Text(clean(r["reason"] or "")),
        )
    out.print(table)
    _classify_tag_shares(rows)


def _classify_tag_shares(rows: list[dict]) -> None:
    """The newest classify version's tags: predicted share beside gold share, over-predicted ones flagged."""
    from kb_pipeline.training.metrics import over_predicted

    latest = next((r for r in rows if r["task"] == "classify" and r["metrics"].get("tag_shares")), None)
    if latest is None:
        return
    m = latest["metrics"]
    table = Table("tag", "gold share", "predicted share", "precision", "recall", "flag",
                  title=f"classify v{latest['version']} tags (out-of-fold training + validation documents)")
    for tag, s in sorted(m["tag_shares"].items()):
        flag = "OVER-PREDICTED" if over_predicted(s["gold"], s["predicted"]) else ""
        table.add_row(Text(clean(tag)), f"{s['gold']:.2f}", f"{s['predicted']:.2f}", f"{s['precision']:.2f}",
                      f"{s['recall']:.2f}", flag)
    out.print(table)
    if "abstain_below" in m:
        out.print(f"category: abstains below {m['abstain_below']:.2f} (validation coverage {m.get('coverage', 0):.2f}, "
                  f"accuracy {m.get('covered_accuracy', 0):.2f}); ECE {m.get('ece', 0):.3f}; "
                  f"tags micro-F1 {m.get('tags_micro_f1', 0):.3f}, macro-F1 {m.get('tags_macro_f1', 0):.3f}")


@adapters_app.command()
@command
def promote(
    version: int = typer.Argument(..., help="Version id from `kb adapters`."), json_out: bool = JsonOpt
) -> None:
    """Make a version active by hand (retires the task's current active version)."""
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.training import registry

    s = ready_settings()
    with session_factory(s).begin() as session:
        row = _version_dict(registry.promote(session, version))
    _report(row, json_out, "is now active")


@adapters_app.command()
@command
def rollback(
    task: str = typer.Argument(..., help="A registered task: classify, embed, summarise, ..."),
    backbone_hash: str | None = typer.Option(None, "--backbone-hash", help="Only needed with several backbones."),
    json_out: bool = JsonOpt,
) -> None:
    """Retire the active version of TASK and bring back the one active before it."""
    from kb_pipeline.store.db import session_factory
    from kb_pipeline.training import registry

    s = ready_settings()
    with session_factory(s).begin() as session:
        row = _version_dict(registry.rollback(session, task, backbone_hash))
    _report(row, json_out, "is active again")


def _report(row: dict, json_out: bool, what: str) -> None:
    if json_out:
        emit_json(row)
    else:
        out.print(f"{row['task']} version {row['version']} {what}.", highlight=False)


def _version_dict(v) -> dict:
    return {
        "version": v.id, "task": v.task, "kind": v.kind, "status": v.status, "reason": v.reason,
        "backbone": v.backbone, "backbone_hash": v.backbone_hash, "primary_metric": v.primary_metric,
        "metrics": v.metrics, "baseline": v.baseline, "adapter_params": v.adapter_params,
        "head_params": v.head_params, "backbone_params": v.backbone_params,
        "adapter_share": v.adapter_params / v.backbone_params if v.backbone_params else 0.0,
        "size_bytes": v.size_bytes, "path": v.path, "adapter_config": v.adapter_config,
        "train_config": v.train_config, "train_documents": v.train_documents, "val_documents": v.val_documents,
        "seconds": v.seconds, "created_at": v.created_at.isoformat(),
        "promoted_at": v.promoted_at.isoformat() if v.promoted_at else None,
    }
