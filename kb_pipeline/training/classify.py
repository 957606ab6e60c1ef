"""Classify adapter: one category (softmax) and any number of tags (sigmoid) per document.

Both heads read the same pooled vector from the `classify` adapter: the token-weighted mean of the
document's first chunks (`chunked.CLASSIFY_CHUNKS`), each encoded exactly as embed encodes it, so at
enrichment time the classify adapter branches off the chunk trunk the other tasks share. Versions
trained before that (no "input" in their head config) read "title + text" truncated and keep doing so.
Tag thresholds are tuned per tag on validation data because tag frequencies differ wildly and one
global 0.5 cut-off under-predicts the rare ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kb_pipeline.backbone.heads import ClassifierHead, head_state, load_head, pooled_size
from kb_pipeline.training import losses
from kb_pipeline.training.chunked import CLASSIFY_CHUNKS, combine_chunks, pooled_chunks, pooled_chunks_in_batches
from kb_pipeline.training.loop import TrainConfig, shuffled_batches, train_loop
from kb_pipeline.training.metrics import accuracy, macro_f1, macro_f1_multilabel, micro_f1_multilabel, tune_thresholds
from kb_pipeline.training.tasks import (
    ClassifyExample,
    InsufficientData,
    TrainResult,
    count_parameters,
    encode,
    fresh_adapter,
    param_groups,
    pooled_in_batches,
    pooling_for,
    set_mode,
    training_task,
)

TASK = "classify"
MIN_DOCS = 4
MIN_TAG_COUNT = 2


def example_chunks(example: ClassifyExample) -> list[str]:
    """The texts a chunk-reading classifier pools for this example: its first chunks, or its text alone."""
    return list(example.chunks[:CLASSIFY_CHUNKS]) or [example.text]


def pooled_groups(adapters, groups: Sequence[Sequence[str]], max_length: int | None, method: str) -> Tensor:
    """One vector per group of chunk texts (token-weighted mean of the chunks' pooled vectors), with gradient."""
    flat = [text for group in groups for text in group]
    ids, mask = encode(adapters, flat, max_length)  # (F, T)
    vectors, counts = pooled_chunks(adapters.hidden_states(ids, mask), mask, method)  # (F, D), (F,)
    return combine_chunks(vectors, counts, [len(g) for g in groups])  # (B, D)


def pooled_groups_in_batches(
    adapters, groups: Sequence[Sequence[str]], max_length: int | None, method: str, batch_size: int = 32
) -> Tensor:
    flat = [text for group in groups for text in group]
    vectors, counts = pooled_chunks_in_batches(adapters, flat, max_length, method, batch_size)
    return combine_chunks(vectors, counts, [len(g) for g in groups])


class ClassifyHeads(nn.Module):
    """The category head and, when the data has recurring tags, the tags head."""

    def __init__(self, in_size: int, num_categories: int, num_tags: int):
        super().__init__()
        self.category = ClassifierHead(in_size, num_categories)
        self.tags = ClassifierHead(in_size, num_tags) if num_tags else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:  # (B, D) -> (B, C), (B, L) | None
        return self.category(x), self.tags(x) if self.tags is not None else None


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


def train_classify(
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

    def step(batch: list[ClassifyExample]) -> Tensor:
        set_mode(adapters, heads, True)
        x = pooled_groups(adapters, [example_chunks(e) for e in batch], cfg.max_length, method)  # (B, D)
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

    def scores(batch: Sequence[ClassifyExample]) -> tuple[np.ndarray, np.ndarray | None]:
        set_mode(adapters, heads, False)
        x = pooled_groups_in_batches(adapters, [example_chunks(e) for e in batch], cfg.max_length, method)
        with torch.no_grad():
            cat_logits, tag_logits = heads(x)
        cat_p = torch.softmax(cat_logits, -1).numpy()
        return cat_p, (torch.sigmoid(tag_logits).numpy() if tag_logits is not None else None)

    def validate() -> dict:
        cat_p, _ = scores(val_labelled)
        pred = [categories[i] for i in cat_p.argmax(1)]
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
        thresholds = np.full(len(tags), 0.5)
        if tags:
            _, tag_p = scores(val)
            targets = np.array([[t in e.tags for t in tags] for e in val], dtype=np.int64)
            thresholds = tune_thresholds(tag_p, targets)
            predicted = [{t for j, t in enumerate(tags) if row[j] >= thresholds[j]} for row in tag_p]
            truth_sets = [set(e.tags) & set(tags) for e in val]
            metrics["tags_micro_f1"] = micro_f1_multilabel(truth_sets, predicted)
            metrics["tags_macro_f1"] = macro_f1_multilabel(truth_sets, predicted, tags)

    baseline = majority_baseline(train, val, tags)
    head_config = {
        "input": "chunks",  # reads a document's first chunks, as stored (see Classifier.reads_chunks)
        "first_chunks": CLASSIFY_CHUNKS,
        "pooling": method,
        "max_length": cfg.max_length,
        "categories": categories,
        "tags": tags,
        "thresholds": [float(t) for t in thresholds],
        "category_head": heads.category.config(),
        "tags_head": heads.tags.config() if heads.tags is not None else None,
    }
    state = head_state(heads.category, "category.")
    if heads.tags is not None:
        state.update(head_state(heads.tags, "tags."))
    return TrainResult(
        task=TASK,
        config=config,
        train_config=cfg,
        head_state=state,
        head_config=head_config,
        metrics=metrics,
        baseline=baseline,
        history=history,
        adapter_params=adapters.num_parameters(TASK),
        head_params=count_parameters(heads),
        backbone_params=adapters.backbone.num_parameters,
        primary_metric="macro_f1",
    )


def majority_baseline(train: Sequence[ClassifyExample], val: Sequence[ClassifyExample], tags: list[str]) -> dict:
    """Always answer the most common training category, and the tags most training documents carry."""
    majority = Counter(e.category for e in train if e.category).most_common(1)[0][0]
    truth = [e.category for e in val if e.category]
    pred = [majority] * len(truth)
    baseline = {"accuracy": accuracy(truth, pred), "macro_f1": macro_f1(truth, pred)}
    if tags:
        common = {t for t in tags if sum(t in e.tags for e in train) * 2 > len(train)}
        truth_sets = [set(e.tags) & set(tags) for e in val]
        guesses = [common] * len(val)
        baseline["tags_micro_f1"] = micro_f1_multilabel(truth_sets, guesses)
        baseline["tags_macro_f1"] = macro_f1_multilabel(truth_sets, guesses, tags)
    return baseline


@dataclass
class Classifier:
    """Trained heads + label lists; predicts with the `classify` adapter of an AdapterSet."""

    heads: ClassifyHeads
    config: dict

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor], config: dict) -> "Classifier":
        heads = ClassifyHeads(config["category_head"]["hidden_size"], len(config["categories"]), len(config["tags"]))
        heads.category = load_head(config["category_head"], state, "category.")
        if config.get("tags_head"):
            heads.tags = load_head(config["tags_head"], state, "tags.")
        return cls(heads.eval(), config)

    @classmethod
    def from_result(cls, result: TrainResult) -> "Classifier":
        return cls.from_tensors(result.head_state, result.head_config)

    @property
    def reads_chunks(self) -> bool:
        """True: reads a document's first chunks (shares the enrichment trunk); False: "title + text" (older)."""
        return self.config.get("input") == "chunks"

    @property
    def first_chunks(self) -> int:
        return int(self.config.get("first_chunks", 1))

    def predict(
        self,
        adapters,
        texts: Sequence[str],
        batch_size: int = 32,
        chunks: Sequence[Sequence[str]] | None = None,
    ) -> list[dict]:
        """[{category, category_score, tags: [(tag, score), ...] above their thresholds, best first}].

        texts: each document's "title + text" (`datasets.model_input`); chunks: each document's chunk texts in
        order. A chunk-reading classifier pools the first chunks (falling back to the text when a document
        has none); an older one reads the texts.
        """
        if not texts:
            return []
        with adapters.using(TASK), torch.no_grad():
            if self.reads_chunks:
                groups = [
                    list(c[: self.first_chunks]) if c else [t]
                    for t, c in zip(texts, chunks if chunks is not None else [()] * len(texts))
                ]
                x = pooled_groups_in_batches(
                    adapters, groups, self.config["max_length"], self.config["pooling"], batch_size
                )
            else:
                x = pooled_in_batches(
                    adapters, list(texts), self.config["max_length"], self.config["pooling"], batch_size
                )
        return self.predict_vectors(x)

    def predict_vectors(self, x: Tensor) -> list[dict]:
        """The heads on pooled document vectors (N, D): what `predict` and the shared enrichment pass return."""
        categories, tags = self.config["categories"], self.config["tags"]
        thresholds = self.config["thresholds"]
        self.heads.eval()
        with torch.no_grad():
            cat_logits, tag_logits = self.heads(x.float())
        cat_p = torch.softmax(cat_logits, -1)  # (N, C)
        tag_p = torch.sigmoid(tag_logits) if tag_logits is not None else torch.zeros(len(x), 0)  # (N, L)
        out = []
        for i in range(len(x)):
            best = int(cat_p[i].argmax())
            chosen = [(tags[j], float(tag_p[i, j])) for j in range(len(tags)) if tag_p[i, j] >= thresholds[j]]
            out.append(
                {
                    "category": categories[best],
                    "category_score": float(cat_p[i, best]),
                    "tags": sorted(chosen, key=lambda pair: -pair[1]),
                }
            )
        return out
