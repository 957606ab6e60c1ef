"""A task is defined once: a toy task registered here is trained, enriched and reported by code that never names it.

`length` (is a document long or short?) lives in this file only: its TaskSpec, its head (reading the token
count of each document's first chunk from the shared enrichment pass) and its trainer (this module, named by
the spec). If training, freshness, the gate, enrichment, `kb train`, `kb enrich` or `kb adapters` still
listed the three built-in tasks instead of iterating the registry, the toy task would be refused or
silently skipped and these tests would fail.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from typer.testing import CliRunner

from kb_pipeline.cli import app
from kb_pipeline.enrich.shared_pass import enrich, load_task_models
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.queries import active_version
from kb_pipeline.store.schema import Document
from kb_pipeline.tasks import registry as task_registry
from kb_pipeline.tasks.chunks import CHUNK_MAX_LENGTH
from kb_pipeline.tasks.registry import TASKS
from kb_pipeline.tasks.spec import DocInput, OutputStore, TaskSpec, TrainConfig
from kb_pipeline.training import registry
from kb_pipeline.training.base import InsufficientData, TrainResult, fresh_adapter
from kb_pipeline.training.datasets import Split, validation_ids
from kb_pipeline.training.freshness import training_need
from kb_pipeline.training.loop import TrainHistory
from kb_pipeline.training.metrics import accuracy
from kb_pipeline.training.service import train_tasks
from kb_pipeline.training.trainers import trainer_for
from tiny_models import single_threaded, tiny_bert_backbone

NAME = "length"
STORED: dict[int, tuple[int, str, int]] = {}  # the toy task's output store: doc id -> (doc version, bucket, adapter)


# ----------------------------------------------------------------------------- the task (inference side)


@dataclass
class Bucket:
    label: str  # "long" or "short"


@dataclass
class LengthHead:
    """Long when the first chunk has at least `threshold` tokens (read from the shared pass's mask)."""

    threshold: float
    max_length: int = CHUNK_MAX_LENGTH

    @classmethod
    def from_tensors(cls, state: dict, config: dict) -> LengthHead:
        return cls(float(state["threshold"]), config["max_length"])

    def shares_trunk(self) -> bool:
        return True

    def plan(self, doc: DocInput, encoded) -> int:
        return min(1, len(doc.chunks))

    def chunks_read(self, plan: int) -> range:
        return range(plan)

    def read(self, hidden, mask, keys, plans, found: dict) -> None:
        assert hidden.shape[:2] == mask.shape  # the task's own top-layer states of exactly these rows
        for (d, _), tokens in zip(keys, mask.sum(dim=1).tolist()):
            found[d] = tokens

    def finish(self, plans: dict, found: dict) -> dict:
        return {d: self.bucket(found[d]) for d in plans}

    def bucket(self, tokens: int) -> Bucket:
        return Bucket("long" if tokens >= self.threshold else "short")

    def predict(self, adapters, docs, batch_size: int = 32) -> list[Bucket]:
        tokenizer = adapters.backbone.tokenizer
        first = [doc.chunks[0].text if doc.chunks else doc.text for doc in docs]
        encoded = tokenizer(first, truncation=True, max_length=self.max_length)["input_ids"]
        return [self.bucket(len(ids)) for ids in encoded]


def fingerprint_rows(session) -> list[tuple]:
    return [tuple(r) for r in session.execute(select(Document.id, Document.version).where(Document.status == "active"))]


def needing(session, version: int, ids) -> list[int]:
    query = select(Document.id, Document.version).where(Document.status == "active")
    if ids is not None:
        query = query.where(Document.id.in_(list(ids)))
    return [d for d, v in session.execute(query) if STORED.get(d, (None, None, None))[::2] != (v, version)]


def save(session, rows, version: int) -> None:
    STORED.update({d: (v, out.label, version) for d, v, out in rows})


SPEC = TaskSpec(
    name=NAME,
    trainer=__name__,  # this module is the trainer too: data, check_data, train, evaluate below
    primary_metric="accuracy",
    baseline="always the more common bucket",
    default_train=TrainConfig(epochs=1, batch_size=4, max_length=CHUNK_MAX_LENGTH),
    fingerprint_rows=fingerprint_rows,
    load=LengthHead.from_tensors,
    outputs=OutputStore(needing=needing, save=save),
)


# ----------------------------------------------------------------------------- its trainer (training side)


@dataclass
class Example:
    first_chunk_tokens: int
    label: str


def data(session) -> Split:
    from kb_pipeline.store.schema import Chunk

    first = {
        d: tokens for d, tokens in session.execute(
            select(Chunk.document_id, Chunk.token_count).where(Chunk.ordinal == 0)
        )
    }
    docs = [d for (d,) in session.execute(select(Document.id).where(Document.status == "active").order_by(Document.id))]
    examples = {d: Example(first.get(d, 0), "long" if first.get(d, 0) >= 100 else "short") for d in docs}
    val = validation_ids(list(examples))
    return Split([examples[d] for d in docs if d not in val], [examples[d] for d in docs if d in val],
                 len(docs) - len(val), len(val))


def check_data(train, val) -> None:
    if not train or not val:
        raise InsufficientData(f"length needs training and validation documents; found {len(train)} and {len(val)}")


def train(adapters, train, val, config, cfg, on_step=None) -> TrainResult:
    fresh_adapter(adapters, NAME, config, cfg.seed)  # an adapter like any task's (the head needs no gradient)
    counts = [e.first_chunk_tokens for e in train]
    threshold = (min(counts) * max(counts)) ** 0.5  # between the buckets, whichever tokenizer counts
    head = LengthHead(threshold, cfg.max_length)
    metrics = _accuracy(head, val)
    common = max(("long", "short"), key=lambda b: sum(e.label == b for e in train))
    baseline = {"accuracy": accuracy([e.label for e in val], [common] * len(val))}
    if on_step:
        on_step(1, 1, 0.0)
    return TrainResult(
        task=NAME, config=config, train_config=cfg, head_state={"threshold": torch.tensor(float(threshold))},
        head_config={"max_length": cfg.max_length}, metrics=metrics, baseline=baseline,
        history=TrainHistory(losses=[0.0], val=[metrics], best_epoch=0), adapter_params=adapters.num_parameters(NAME),
        head_params=1, backbone_params=adapters.backbone.num_parameters, primary_metric="accuracy",
    )


def evaluate(adapters, folder, val, cfg, spec) -> dict:
    return _accuracy(task_registry.load_task(adapters, spec, folder), val)


def _accuracy(head: LengthHead, val) -> dict:
    return {"accuracy": accuracy([e.label for e in val], [head.bucket(e.first_chunk_tokens).label for e in val])}


# ----------------------------------------------------------------------------- the tests


@pytest.fixture
def length_task(monkeypatch):
    """The toy task, registered for one test only (the one line a new task adds to tasks/registry.py)."""
    monkeypatch.setitem(TASKS, NAME, SPEC)
    STORED.clear()
    with single_threaded():
        yield SPEC
    STORED.clear()


def write_corpus(root: Path, n: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        words = 8 if i % 2 else 400  # half the documents fit in a few tokens, half fill whole chunks
        (root / f"doc-{i}.md").write_text(f"# Note {i}\n\n" + " ".join(f"word{j}" for j in range(words)) + "\n")
    return root


def test_the_built_in_tasks_are_registered_with_a_trainer_each():
    assert list(TASKS) == ["classify", "embed", "summarise"]
    for spec in TASKS.values():
        assert trainer_for(spec).__name__ == f"kb_pipeline.training.{spec.name}"
    with pytest.raises(task_registry.UnknownTask, match="unknown task 'nope'; expected one of classify, embed"):
        task_registry.get_task("nope")


def test_a_registered_toy_task_is_trained_enriched_and_reported(settings, tmp_path, length_task, monkeypatch):
    backbone = tiny_bert_backbone()
    ingest(settings, [write_corpus(tmp_path / "c")])
    with session_factory(settings)() as s:
        assert training_need(s, NAME, backbone.weights_hash, 0.2).needed

    # trained: the service finds its data, trainer, default config and gate through the registry
    [outcome] = train_tasks(settings, [NAME], backbone=backbone)
    assert outcome.trained and outcome.status == "active", outcome.message
    assert outcome.primary_metric == "accuracy" and outcome.metrics["accuracy"] == 1.0
    assert outcome.kind == SPEC.default_kind
    with session_factory(settings)() as s:
        version = active_version(s, NAME, backbone.weights_hash)
        assert version.train_config["epochs"] == SPEC.default_train.epochs
        need = training_need(s, NAME, backbone.weights_hash, 0.2)
        assert not need.needed and "is current" in need.reason  # freshness read its fingerprint rows

    # retrained: the gate evaluates the active version through the trainer's `evaluate`
    [again] = train_tasks(settings, [NAME], backbone=backbone)
    assert again.active_before == {"accuracy": 1.0} and again.status == "active"

    # enriched: the shared pass hands its head the task's own states; the spec's store saves the outputs
    models = load_task_models(settings, backbone)
    assert set(models.heads) == {NAME} and models.versions[NAME] == again.version
    report = enrich(settings, models=models)
    assert report.outputs == {NAME: 8} and report.embedded > 0
    with session_factory(settings)() as s:
        docs = {d.path: d.id for d in s.scalars(select(Document))}
    for path, doc_id in docs.items():
        expected = "short" if int(Path(path).stem.split("-")[1]) % 2 else "long"
        assert STORED[doc_id][1:] == (expected, again.version)
    assert enrich(settings, models=models).outputs == {}  # nothing stale: `needing` was asked too
    models.adapters.close()

    # reported: `kb adapters` lists it; rollback knows the task (it refuses only for lack of history)
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["adapters", "--json"]).stdout)
    assert {(row["task"], row["version"]) for row in listed} >= {(NAME, outcome.version), (NAME, again.version)}
    with session_factory(settings).begin() as s:
        previous = registry.rollback(s, NAME)
    assert previous.id == outcome.version


def test_kb_train_and_kb_enrich_accept_a_registered_task(kb_home, tmp_path, length_task, monkeypatch):
    """The CLI takes its task names from the registry: `kb train length` works, an unknown task is refused."""
    backbone = tiny_bert_backbone()
    monkeypatch.setattr("kb_pipeline.training.service.load_backbone", lambda *a, **k: backbone)
    monkeypatch.setattr("kb_pipeline.enrich.shared_pass.load_backbone", lambda *a, **k: backbone)
    runner = CliRunner()
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(write_corpus(tmp_path / "c"))]).exit_code == 0

    trained = runner.invoke(app, ["train", NAME, "--json"])
    assert trained.exit_code == 0, trained.output
    [row] = json.loads(trained.stdout)
    assert row["task"] == NAME and row["status"] == "active"
    enriched = runner.invoke(app, ["enrich", "--json"])
    assert enriched.exit_code == 0, enriched.output
    assert json.loads(enriched.stdout)["outputs"] == {NAME: 8} and len(STORED) == 8

    refused = runner.invoke(app, ["train", "nope"])
    assert refused.exit_code != 0 and "unknown task 'nope'" in refused.output


# ----------------------------------------------------------------------------- inference never imports training

INFERENCE = ("search", "enrich", "tasks", "backbone", "indexing", "store", "ingest")


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module a file of `package` imports (absolute, or relative resolved against it), at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_inference_packages_never_import_training():
    root = Path(__file__).parents[1] / "kb_pipeline"
    offenders = {
        str(path.relative_to(root)): sorted(
            m for m in imported_modules(path, ".".join(path.relative_to(root.parent).parts[:-1]))
            if m.startswith("kb_pipeline.training")
        )
        for package in INFERENCE
        for path in sorted((root / package).rglob("*.py"))
    }
    assert {p: m for p, m in offenders.items() if m} == {}
    assert len(offenders) > 30  # the walk really read the packages


def test_the_import_walk_sees_absolute_relative_and_nested_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..training import service\n    import kb_pipeline.training.loop\n")
    found = imported_modules(probe, "kb_pipeline.search")
    assert {"kb_pipeline.training.service", "kb_pipeline.training.loop"} <= found
