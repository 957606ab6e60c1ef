"""Training the classify adapter + heads (the task itself: kb_pipeline/tasks/classify.py).

After the adapter and heads are trained (each step reads up to TRAIN_CHUNKS chunks spread over the
document; prediction reads all of them), `calibrate` sets the decision rules on documents the heads did
not learn from (training/thresholds.py says why): a lexical TF-IDF + LR model and its fusion weight,
the category temperature and abstain threshold, and per-tag thresholds. The baseline always guesses the
most frequent category.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from kb_pipeline.backbone.heads import head_state, pooled_size
from kb_pipeline.tasks.chunks import CLASSIFY_CHUNKS
from kb_pipeline.tasks.classify import (
    MIN_TAG_COUNT,
    NAME,
    Classifier,
    ClassifyConfig,
    ClassifyHeads,
    pooled_groups,
    pooled_groups_in_batches,
)
from kb_pipeline.tasks.encoding import pooling_for
from kb_pipeline.tasks.registry import load_task
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.training import losses
from kb_pipeline.training.base import (
    ClassifyExample,
    InsufficientData,
    TrainResult,
    count_parameters,
    fresh_adapter,
    param_groups,
    set_mode,
    training_task,
)
from kb_pipeline.training.baselines import most_frequent_category, tags_on_most_documents
from kb_pipeline.training.calibration import calibrate
from kb_pipeline.training.datasets import classify_data as data  # noqa: F401  (the trainer's data)
from kb_pipeline.training.loop import shuffled_batches, train_loop
from kb_pipeline.training.metrics import accuracy, macro_f1, macro_f1_multilabel, micro_f1_multilabel

TASK = NAME
MIN_DOCS = 4


TRAIN_CHUNKS = 6  # chunks per document in a gradient step: a fresh random subset each time, to bound a step's cost


def example_chunks(example: ClassifyExample) -> list[str]:
    """The texts the classifier pools for this example at prediction time: its chunks, or its text alone."""
    return list(example.chunks[:CLASSIFY_CHUNKS]) or [example.text]


def training_chunks(example: ClassifyExample, rng: random.Random, cap: int = TRAIN_CHUNKS) -> list[str]:
    """At most `cap` of the example's chunks drawn at random, in document order: their mean estimates the
    whole document's (what prediction reads) and varies from epoch to epoch, which also regularises."""
    chunks = example_chunks(example)
    if len(chunks) <= cap:
        return chunks
    return [chunks[i] for i in sorted(rng.sample(range(len(chunks)), cap))]


def check_data(train: Sequence[ClassifyExample], val: Sequence[ClassifyExample]) -> None:
    """Refuse to train on data that cannot produce a meaningful classifier, naming the shortfall."""
    labelled = [e for e in train if e.category]
    counts = Counter(e.category for e in labelled)
    if len(counts) < 2:
        found = ", ".join(repr(c) for c in sorted(counts)) or "none"
        raise InsufficientData(
            f"classify needs at least 2 categories with labelled documents; found {len(counts)} ({found})"
        )
    if len(labelled) < MIN_DOCS:
        raise InsufficientData(f"classify needs at least {MIN_DOCS} labelled documents; found {len(labelled)}")
    if not any(e.category for e in val):
        raise InsufficientData("classify needs labelled validation documents to measure and tune; found 0")


def train(
    adapters,
    train: list[ClassifyExample],
    val: list[ClassifyExample],
    config,
    cfg: TrainConfig,
    on_step=None,
) -> TrainResult:
    """Train the classify adapter + heads; report accuracy / macro-F1 against always guessing the majority class."""
    check_data(train, val)
    categories = sorted({e.category for e in train if e.category})
    tag_counts = Counter(t for e in train for t in set(e.tags))
    tags = sorted(t for t, n in tag_counts.items() if n >= MIN_TAG_COUNT)
    cat_index, tag_index = {c: i for i, c in enumerate(categories)}, {t: i for i, t in enumerate(tags)}
    method = pooling_for(adapters)

    fresh_adapter(adapters, TASK, config, cfg.seed)
    torch.manual_seed(cfg.seed)
    heads = ClassifyHeads(pooled_size(adapters.backbone.hidden_size, method), len(categories), len(tags))
    examples = [e for e in train if e.category or e.tags]  # fully unlabelled documents teach nothing
    rng = random.Random(cfg.seed)

    def step(batch: list[ClassifyExample]) -> Tensor:
        set_mode(adapters, heads, True)
        x = pooled_groups(adapters, [training_chunks(e, rng) for e in batch], cfg.max_length, method)  # (B, D)
        cat_logits, tag_logits = heads(x)  # (B, C), (B, L)
        labels = torch.tensor([cat_index.get(e.category, -100) for e in batch])  # (B,)
        loss = losses.cross_entropy(cat_logits, labels) if (labels >= 0).any() else cat_logits.sum() * 0.0
        if tag_logits is not None:
            targets = torch.zeros_like(tag_logits)  # (B, L)
            for i, e in enumerate(batch):
                for t in e.tags:
                    if t in tag_index:
                        targets[i, tag_index[t]] = 1.0
            loss = loss + losses.multilabel_bce(tag_logits, targets)
        return loss

    val_labelled = [e for e in val if e.category]

    def vectors(batch: Sequence[ClassifyExample]) -> Tensor:
        set_mode(adapters, heads, False)
        return pooled_groups_in_batches(adapters, [example_chunks(e) for e in batch], cfg.max_length, method)

    def validate() -> dict:
        with torch.no_grad():
            cat_logits, _ = heads(vectors(val_labelled))
        pred = [categories[i] for i in cat_logits.argmax(1).tolist()]
        truth = [e.category for e in val_labelled]
        return {"accuracy": accuracy(truth, pred), "macro_f1": macro_f1(truth, pred)}

    with training_task(adapters, TASK):
        history = train_loop(
            param_groups(adapters, TASK, heads, cfg),
            step,
            lambda epoch: shuffled_batches(examples, cfg.batch_size, epoch, cfg.seed),
            validate,
            "macro_f1",
            cfg,
            on_step,
        )
        metrics = validate()
        x_train, x_val = vectors(examples), vectors(val)

    head_config = ClassifyConfig(
        categories=categories,
        tags=tags,
        thresholds=[0.5] * len(tags),
        category_head=heads.category.config(),
        tags_head=heads.tags.config() if heads.tags is not None else None,
        pooling=method,
        max_length=cfg.max_length,
        first_chunks=CLASSIFY_CHUNKS,
    )
    state = head_state(heads.category, "category.")
    if heads.tags is not None:
        state.update(head_state(heads.tags, "tags."))
    metrics |= calibrate(Classifier(heads, head_config), state, examples, val, x_train, x_val, cfg.seed)
    baseline = majority_baseline(train, val, tags)
    return TrainResult(
        task=TASK,
        config=config,
        train_config=cfg,
        head_state=state,
        head_config=head_config.to_dict(),  # calibrate filled in its thresholds, temperature and lexical model
        metrics=metrics,
        baseline=baseline,
        history=history,
        adapter_params=adapters.num_parameters(TASK),
        head_params=count_parameters(heads),
        backbone_params=adapters.backbone.num_parameters,
        primary_metric="macro_f1",
    )


def majority_baseline(train: Sequence[ClassifyExample], val: Sequence[ClassifyExample], tags: list[str]) -> dict:
    """Always answer the most frequent training category (first seen among ties), and the tags most documents carry."""
    majority = most_frequent_category([e.category for e in train if e.category], ties="first")
    truth = [e.category for e in val if e.category]
    pred = [majority] * len(truth)
    baseline = {"accuracy": accuracy(truth, pred), "macro_f1": macro_f1(truth, pred)}
    if tags:
        common = tags_on_most_documents([e.tags for e in train], tags)
        truth_sets = [set(e.tags) & set(tags) for e in val]
        guesses = [common] * len(val)
        baseline["tags_micro_f1"] = micro_f1_multilabel(truth_sets, guesses)
        baseline["tags_macro_f1"] = macro_f1_multilabel(truth_sets, guesses, tags)
    return baseline



def evaluate(adapters, folder: Path, val: Sequence[ClassifyExample], cfg: TrainConfig, spec) -> dict:
    """A saved version's accuracy and macro-F1 on this run's validation documents (for the gate)."""
    classifier = load_task(adapters, spec, folder)
    labelled = [e for e in val if e.category]
    predictions = classifier.predict(adapters, [e.text for e in labelled], chunks=[e.chunks for e in labelled])
    truth, pred = [e.category for e in labelled], [p.category for p in predictions]
    return {"accuracy": accuracy(truth, pred), "macro_f1": macro_f1(truth, pred)}
