"""`kb train` end to end on a tiny random backbone: DB rows in, adapter files + registry rows out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select
from typer.testing import CliRunner

from kb_pipeline.backbone.adapter_files import load_adapter
from kb_pipeline.backbone.adapters import AdapterSet
from kb_pipeline.cli import app
from kb_pipeline.config import Settings
from kb_pipeline.ingest.pipeline import ingest
from kb_pipeline.store.db import session_factory, upgrade
from kb_pipeline.store.schema import AdapterVersion
from kb_pipeline.training import datasets
from kb_pipeline.training.loop import TrainConfig
from kb_pipeline.training.service import train_tasks
from tiny_models import single_threaded, tiny_bert_backbone

TOPICS = {
    "hr": ("leave", ["policy", "leave"], "Employees request annual leave and holidays through the people portal."),
    "engineering": ("deploy", ["runbook", "release"], "Engineers deploy services and roll back failed releases."),
}

NAMES = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
QUICK = TrainConfig(epochs=2, batch_size=4, max_length=48, max_steps=6, lr=5e-3)


def labelled_corpus(root: Path, per_category: int = 8) -> Path:
    for category, (word, tags, summary) in TOPICS.items():
        for i in range(per_category):
            body = " ".join(f"{summary} Step {j} of the {word} process number {i}." for j in range(6))
            # titles differ by a word, not a number: "Leave guide 3" would be a templated title the embed trainer drops
            title = f"{word.title()} guide {NAMES[i]}"
            front = (f"---\ntitle: {title}\ncategory: {category}\ntags: [{', '.join(tags)}]\n"
                     f"summary: {summary}\n---\n")
            text = f"{front}# {title}\n\n{body}\n\n## Details\n\n{body}\n"
            (root / f"{category}-{i}.md").write_text(text)
    return root


@pytest.fixture
def kb(kb_home, tmp_path):
    settings = Settings.from_env()
    upgrade(settings.database_url)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    ingest(settings, [labelled_corpus(corpus)])
    return settings


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


def test_train_all_registers_active_versions_with_files(kb):
    backbone = tiny_bert_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    outcomes = train_tasks(kb, ["classify", "embed", "summarise"], backbone=backbone, train_config=QUICK)
    assert [o.task for o in outcomes] == ["classify", "embed", "summarise"]
    for o in outcomes:
        assert o.trained, o.message
        assert o.adapter_params > 0 and o.backbone_params == backbone.num_parameters
        assert o.primary_metric in o.metrics and o.primary_metric in o.baseline
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    with session_factory(kb)() as s:
        rows = s.scalars(select(AdapterVersion).order_by(AdapterVersion.id)).all()
        assert [r.task for r in rows] == ["classify", "embed", "summarise"]
        for row in rows:
            assert (Path(row.path) / "adapter.safetensors").exists()
            assert row.backbone_hash == backbone.weights_hash and row.train_documents > row.val_documents > 0
            # embed may stay a candidate if it does not beat the untuned backbone; the others are first versions
            assert row.status == "active" or (row.task == "embed" and "untuned" in row.reason)


def test_saved_adapter_reloads_to_identical_predictions(kb):
    backbone = tiny_bert_backbone()
    [outcome] = train_tasks(kb, ["classify"], backbone=backbone, train_config=QUICK)
    with session_factory(kb)() as s:
        path = Path(s.get(AdapterVersion, outcome.version).path)
    from kb_pipeline.tasks.classify import Classifier

    with session_factory(kb)() as s:
        texts = [e.text for e in datasets.classify_data(s).val]
    first = AdapterSet(backbone)
    _, head, meta = load_adapter(first, path)
    a = Classifier.from_tensors(head, meta["head"]).predict(first, texts)
    second = AdapterSet(backbone)  # closes the first; a fresh load must give the same answers
    _, head, meta = load_adapter(second, path)
    b = Classifier.from_tensors(head, meta["head"]).predict(second, texts)
    second.close()
    assert a == b


def test_retraining_compares_with_the_active_version_on_the_same_data(kb):
    backbone = tiny_bert_backbone()
    [first] = train_tasks(kb, ["classify"], backbone=backbone, train_config=QUICK)
    frozen = TrainConfig(epochs=1, batch_size=4, max_length=48, max_steps=1, lr=0.0)
    [second] = train_tasks(kb, ["classify"], backbone=backbone, train_config=frozen)
    assert second.active_before is not None
    assert second.active_before["macro_f1"] == pytest.approx(first.metrics["macro_f1"])
    worse = second.metrics["macro_f1"] < second.active_before["macro_f1"]
    assert second.status == ("candidate" if worse else "active")


def test_too_little_labelled_data_is_a_clear_error_and_registers_nothing(kb_home, tmp_path):
    settings = Settings.from_env()
    upgrade(settings.database_url)
    corpus = tmp_path / "one-topic"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"hr-{i}.md").write_text(f"---\ncategory: hr\n---\n# Leave {i}\n\nAnnual leave rules {i}.\n")
    ingest(settings, [corpus])
    result = CliRunner().invoke(app, ["train", "classify"])
    assert result.exit_code == 1
    assert "at least 2 categories" in result.output
    with session_factory(settings)() as s:
        assert s.scalar(select(func.count()).select_from(AdapterVersion)) == 0


def test_adapters_command_lists_versions_as_json(kb):
    train_tasks(kb, ["classify"], backbone=tiny_bert_backbone(), train_config=QUICK)
    result = CliRunner().invoke(app, ["adapters", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["task"] == "classify" and row["status"] == "active" and 0 < row["adapter_share"] < 1


@pytest.mark.slow
def test_real_minilm_classify_beats_the_majority_baseline_on_the_sample_corpus(kb_home):
    settings = Settings.from_env().with_(adapter_layers=2)
    upgrade(settings.database_url)
    ingest(settings, [Path(__file__).parent.parent / "sample_corpus"])
    cfg = TrainConfig(epochs=3, batch_size=16, max_length=96, lr=3e-3, seed=0)
    [outcome] = train_tasks(settings, ["classify"], train_config=cfg)
    assert outcome.trained and outcome.status == "active"
    assert outcome.adapter_share < 0.02
    assert outcome.metrics["macro_f1"] > outcome.baseline["macro_f1"] + 0.2
    assert outcome.metrics["accuracy"] > outcome.baseline["accuracy"]


def test_training_removes_old_adapter_folders_no_version_points_to(kb):
    """A run killed between saving an adapter and registering it leaves a folder; the next run cleans it up,
    but never a young one (a concurrent run may be about to register it) nor any registered version's."""
    import os
    import time

    from kb_pipeline.training.service import remove_unreferenced_folders

    train_tasks(kb, ["classify"], backbone=tiny_bert_backbone(), train_config=QUICK)
    with session_factory(kb)() as s:
        registered = Path(s.scalars(select(AdapterVersion.path)).one())
    orphan, young = kb.adapters_dir / "classify" / "killed-run", kb.adapters_dir / "classify" / "in-progress"
    for folder in (orphan, young):
        folder.mkdir()
        (folder / "adapter.safetensors").write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    for folder in (orphan, registered):
        os.utime(folder, (two_hours_ago, two_hours_ago))
    assert remove_unreferenced_folders(kb) == [orphan]
    assert not orphan.exists() and young.exists() and (registered / "adapter.safetensors").exists()
