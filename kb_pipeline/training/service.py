"""`kb train`: labelled rows -> trained adapter + head on disk -> registered version behind the gate.

One backbone and one AdapterSet serve every task of a run. Files are written (atomically) before
the registry row, so a crash leaves at most an unreferenced folder, never a row without files.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from kb_pipeline.backbone.adapter_files import load_adapter, save_adapter
from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.backbone.loading import Backbone, load_backbone
from kb_pipeline.config import Settings
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.schema import AdapterVersion
from kb_pipeline.training import datasets, registry
from kb_pipeline.training import classify, embed, summarise
from kb_pipeline.training.chunked import CHUNK_MAX_LENGTH
from kb_pipeline.training.classify import Classifier, train_classify
from kb_pipeline.training.embed import evaluate_pairs, train_embed
from kb_pipeline.training.freshness import label_fingerprints
from kb_pipeline.training.loop import TrainConfig
from kb_pipeline.training.metrics import accuracy, macro_f1, mean_rouge
from kb_pipeline.training.summarise import Summariser, train_summarise
from kb_pipeline.training.tasks import InsufficientData, TrainResult

TASKS = registry.TASKS
DEFAULT_KIND = {"classify": "lora", "embed": "lora", "summarise": "lora"}
# Per-task defaults sized for a 2-core CPU. Classify and summarise read stored chunks, tokenised exactly as
# enrichment tokenises them (CHUNK_MAX_LENGTH never truncates a chunk), so training and the shared enrichment
# pass see the same token ids; summarise batches are chunks (~6 scored sentences each), and its in-context
# sentence states need a higher rate than the old sentence-by-sentence scorer did (1e-3) to match its ROUGE.
DEFAULT_TRAIN = {
    "classify": TrainConfig(epochs=10, batch_size=16, max_length=CHUNK_MAX_LENGTH, lr=2e-3),
    "embed": TrainConfig(epochs=2, batch_size=32, max_length=128, lr=1e-3),
    "summarise": TrainConfig(epochs=2, batch_size=16, max_length=CHUNK_MAX_LENGTH, lr=3e-3),
}
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


def adapter_config(task: str, kind: str | None, settings: Settings, num_layers: int) -> AdapterConfig:
    return AdapterConfig(kind=kind or DEFAULT_KIND[task], layers=settings.adapted_layers(num_layers))


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
    outcomes: dict[str, TaskOutcome] = {}
    ready: dict[str, datasets.Split] = {}
    fingerprints: dict[str, list[str]] = {}
    with session_factory(settings)() as session:
        for task in tasks:
            split = DATA[task](session)
            fingerprints[task] = label_fingerprints(session, task)
            try:
                CHECK[task](split.train, split.val)
                ready[task] = split
            except InsufficientData as exc:
                outcomes[task] = TaskOutcome(task, False, str(exc))
    if ready:
        backbone = backbone or load_backbone(settings.backbone, settings.models_dir)
        adapters = AdapterSet(backbone)
        try:
            for task, split in ready.items():
                cfg = train_config or replace(DEFAULT_TRAIN[task], **({"epochs": epochs} if epochs else {}))
                config = adapter_config(task, kind, settings, backbone.num_layers)
                outcomes[task] = _train_one(settings, adapters, task, split, config, cfg, on_step, fingerprints[task])
        finally:
            adapters.close()
    return [outcomes[task] for task in tasks]


def _train_one(settings, adapters, task, split, config, cfg, on_step, fingerprints) -> TaskOutcome:
    started = time.perf_counter()
    Session = session_factory(settings)
    with Session() as session:
        active = registry.active_version(session, task, adapters.backbone.weights_hash)
        active_path = Path(active.path) if active else None
    step = (lambda s, n, loss: on_step(task, s, n, loss)) if on_step else None
    try:
        result: TrainResult = TRAIN[task](adapters, split.train, split.val, config, cfg, step)
    except InsufficientData as exc:
        return TaskOutcome(task, False, str(exc))
    candidate = _snapshot(adapters, task)  # the new weights; evaluating the active version replaces them
    active_now = None
    if active_path is not None and active_path.exists():
        active_now = EVALUATE[task](adapters, active_path, split.val, cfg)
        adapters.load(task, *candidate)
    decision = registry.gate(task, result.primary_metric, result.metrics, result.baseline, active_now)

    folder = settings.adapters_dir / task / uuid.uuid4().hex[:12]
    save_adapter(adapters, task, folder, extra_tensors=result.head_state,
                 meta={"head": result.head_config, "task": task})
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
        train_documents=split.train_docs, val_documents=split.val_docs, data_hash=split.data_hash,
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


# --- evaluating the active version on this run's validation data (for the gate) -------------------


def _evaluate_classify(adapters, folder: Path, val, cfg) -> dict:
    _, head, meta = load_adapter(adapters, folder)
    labelled = [e for e in val if e.category]
    predictions = Classifier.from_tensors(head, meta["head"]).predict(
        adapters, [e.text for e in labelled], chunks=[e.chunks for e in labelled]
    )
    truth, pred = [e.category for e in labelled], [p["category"] for p in predictions]
    return {"accuracy": accuracy(truth, pred), "macro_f1": macro_f1(truth, pred)}


def _evaluate_embed(adapters, folder: Path, val, cfg) -> dict:
    load_adapter(adapters, folder)
    return evaluate_pairs(adapters, val, "embed", cfg.max_length)


def _evaluate_summarise(adapters, folder: Path, val, cfg) -> dict:
    _, head, meta = load_adapter(adapters, folder)
    candidates = Summariser.from_tensors(head, meta["head"]).predict(
        adapters, [e.text for e in val], chunks=[e.chunks for e in val]
    )
    return mean_rouge(candidates, [e.summary for e in val])


def _floats(metrics: dict) -> dict:
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in metrics.items()}


DATA = {"classify": datasets.classify_data, "embed": datasets.embed_data, "summarise": datasets.summarise_data}
TRAIN = {"classify": train_classify, "embed": train_embed, "summarise": train_summarise}
CHECK = {"classify": classify.check_data, "embed": embed.check_data, "summarise": summarise.check_data}
EVALUATE = {"classify": _evaluate_classify, "embed": _evaluate_embed, "summarise": _evaluate_summarise}
