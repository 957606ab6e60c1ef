"""`kb train`: labelled rows -> trained adapter + head on disk -> registered version behind the gate.

One backbone and one AdapterSet serve every task of a run. Files are written (atomically) before
the registry row, so a crash leaves at most an unreferenced folder, never a row without files; the next
training run removes such folders once they are old enough not to belong to a run still in progress.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from kb_pipeline.backbone.adapter_files import save_adapter
from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.backbone.loading import Backbone, load_backbone
from kb_pipeline.config import Settings
from kb_pipeline.store import queries
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import AdapterVersion
from kb_pipeline.tasks.registry import get_task
from kb_pipeline.tasks.spec import HEAD_FORMAT, TaskSpec, TrainConfig
from kb_pipeline.training import registry
from kb_pipeline.training.base import InsufficientData, TrainResult
from kb_pipeline.training.freshness import label_fingerprints
from kb_pipeline.training.trainers import trainer_for

StepFn = Callable[[str, int, int, float], None]  # (task, step, total steps, loss)


@dataclass
class TaskOutcome:
    task: str
    trained: bool
    message: str  # the gate's reason, or what data is missing
    version: int | None = None
    status: str | None = None
    kind: str | None = None
    primary_metric: str | None = None
    metrics: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    active_before: dict | None = None  # the active version's metrics on this run's validation data
    adapter_params: int = 0
    head_params: int = 0
    backbone_params: int = 0
    size_bytes: int = 0
    seconds: float = 0.0

    @property
    def adapter_share(self) -> float:
        return self.adapter_params / self.backbone_params if self.backbone_params else 0.0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"adapter_share": self.adapter_share}


def adapter_config(spec: TaskSpec, kind: str | None, settings: Settings, num_layers: int) -> AdapterConfig:
    return AdapterConfig(kind=kind or spec.default_kind, layers=settings.adapted_layers(num_layers))


def train_tasks(
    settings: Settings,
    tasks: list[str],
    *,
    kind: str | None = None,
    epochs: int | None = None,
    on_step: StepFn | None = None,
    backbone: Backbone | None = None,
    train_config: TrainConfig | None = None,
) -> list[TaskOutcome]:
    """Train each task in turn on the one shared backbone; returns what happened to each.

    Data is checked first, so a KB without labels fails fast without loading a model.
    """
    specs = {task: get_task(task) for task in tasks}
    outcomes: dict[str, TaskOutcome] = {}
    ready: dict = {}
    fingerprints: dict[str, list[str]] = {}
    with session_factory(settings)() as session:
        for task, spec in specs.items():
            trainer = trainer_for(spec)
            split = trainer.data(session)
            fingerprints[task] = label_fingerprints(session, spec)
            try:
                trainer.check_data(split.train, split.val)
                ready[task] = split
            except InsufficientData as exc:
                outcomes[task] = TaskOutcome(task, False, str(exc))
    if ready:
        remove_unreferenced_folders(settings)
        backbone = backbone or load_backbone(settings.backbone, settings.models_dir)
        adapters = AdapterSet(backbone, trunk_dtype=torch.bfloat16)  # cached trunk rows at half the memory
        try:
            for task, split in ready.items():
                spec = specs[task]
                cfg = train_config or replace(spec.default_train, **({"epochs": epochs} if epochs else {}))
                config = adapter_config(spec, kind, settings, backbone.num_layers)
                outcomes[task] = _train_one(settings, adapters, spec, split, config, cfg, on_step, fingerprints[task])
        finally:
            adapters.close()
    return [outcomes[task] for task in tasks]


UNREFERENCED_AFTER_S = 3600  # a folder this old with no registry row was left by a run killed before it registered


def remove_unreferenced_folders(settings: Settings, older_than_s: float = UNREFERENCED_AFTER_S) -> list[Path]:
    """Delete adapter folders no version row points to, once older than `older_than_s` (younger ones may
    belong to a concurrent training run that has saved its files and is about to register them)."""
    root = settings.adapters_dir
    if not root.exists():
        return []
    with session_factory(settings)() as session:
        referenced = {Path(p).resolve() for p in queries.version_paths(session)}
    cutoff, removed = time.time() - older_than_s, []
    for folder in (f for task_dir in root.iterdir() if task_dir.is_dir() for f in task_dir.iterdir() if f.is_dir()):
        if folder.resolve() not in referenced and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _train_one(settings, adapters, spec: TaskSpec, split, config, cfg, on_step, fingerprints) -> TaskOutcome:
    started = time.perf_counter()
    task, trainer = spec.name, trainer_for(spec)
    Session = session_factory(settings)
    with Session() as session:
        active = queries.active_version(session, task, adapters.backbone.weights_hash)
        active_path = Path(active.path) if active else None
    step = (lambda s, n, loss: on_step(task, s, n, loss)) if on_step else None
    try:
        result: TrainResult = trainer.train(adapters, split.train, split.val, config, cfg, step)
    except InsufficientData as exc:
        return TaskOutcome(task, False, str(exc))
    candidate = _snapshot(adapters, task)  # the new weights; evaluating the active version replaces them
    active_now = None
    if active_path is not None and active_path.exists():
        active_now = trainer.evaluate(adapters, active_path, split.val, cfg, spec)
        adapters.load(task, *candidate)
    decision = registry.gate(task, result.primary_metric, result.metrics, result.baseline, active_now)

    folder = settings.adapters_dir / task / uuid.uuid4().hex[:12]
    save_adapter(adapters, task, folder, extra_tensors=result.head_state,
                 meta={"head": result.head_config, "task": task, "head_format": HEAD_FORMAT})
    size = sum(f.stat().st_size for f in folder.iterdir())
    version = AdapterVersion(
        task=task, kind=config.kind, backbone=adapters.backbone.name,
        backbone_hash=adapters.backbone.weights_hash, adapter_config=config.to_dict(),
        train_config=cfg.to_dict(), adapter_params=result.adapter_params, head_params=result.head_params,
        backbone_params=result.backbone_params, path=str(folder), size_bytes=size,
        primary_metric=result.primary_metric, metrics=_floats(result.metrics), baseline=_floats(result.baseline),
        history={"losses": result.history.losses, "val": result.history.val,
                 "best_epoch": result.history.best_epoch, "stopped_early": result.history.stopped_early,
                 "fingerprints": fingerprints},
        train_documents=split.train_docs, val_documents=split.val_docs, data_hash=_data_hash(fingerprints),
        seconds=time.perf_counter() - started,
    )
    with Session.begin() as session:
        registry.register(session, version, decision)
        version_id, status = version.id, version.status
    return TaskOutcome(
        task, True, decision.reason, version_id, status, config.kind, result.primary_metric,
        _floats(result.metrics), _floats(result.baseline), active_now, result.adapter_params, result.head_params,
        result.backbone_params, size, time.perf_counter() - started,
    )


def _snapshot(adapters: AdapterSet, task: str) -> tuple[AdapterConfig, dict]:
    return adapters.config(task), {k: v.clone() for k, v in adapters.state_dict(task).items()}


def _data_hash(fingerprints: list[str]) -> str:
    """One digest of the documents the version learnt from (their freshness fingerprints)."""
    return hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()


def _floats(metrics: dict) -> dict:
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in metrics.items()}
