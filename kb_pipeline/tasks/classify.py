"""classify: one category (softmax) and any number of tags (sigmoid) per document.

Both heads read one pooled vector from the `classify` adapter: the token-weighted mean of ALL the document's
chunks (up to CLASSIFY_CHUNKS, 64), each encoded exactly as embed encodes it, so at enrichment time classify
branches off the chunk trunk the other tasks share; a long document's category is spread through it, not
in its opening. Thresholds come from training/thresholds.py (out-of-fold, with a precision floor and
shrinkage): per-tag cut-offs, a temperature for the category probabilities, and a confidence below which
the category is abstained (kept as a guess, stored as 'abstained': the document needs review). Tags just
under their threshold (within `near_window`) are returned as `near` for the review queue, never applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import Tensor, nn

from kb_pipeline.backbone.heads import ClassifierHead, load_head
from kb_pipeline.store import outputs
from kb_pipeline.store.queries import gold_categories, gold_tags_by_document
from kb_pipeline.store.schema import Document
from kb_pipeline.tasks.chunks import (
    CHUNK_MAX_LENGTH,
    CLASSIFY_CHUNKS,
    combine_chunks,
    pooled_chunks,
    pooled_chunks_in_batches,
)
from kb_pipeline.tasks.encoding import encode, model_input
from kb_pipeline.tasks.lexical import LexicalModel
from kb_pipeline.tasks.spec import DocInput, OutputStore, SavedConfig, TaskSpec, TrainConfig

NAME = "classify"
# a tag is "near" (shown to reviewers, never applied) within near_window and within this share of its threshold
# under it, and only the MAX_NEAR closest per document: a low threshold must not make every tag "near"
NEAR_SHARE, MAX_NEAR = 0.25, 3
MIN_TAG_COUNT = 2  # a tag seen once in training cannot be learnt (the TF-IDF baseline of `kb eval` agrees)


@dataclass
class ClassifyConfig(SavedConfig):
    """Everything needed to rebuild the heads: label lists, tuned thresholds, pooling, how many chunks are read."""

    categories: list[str]
    tags: list[str]
    thresholds: list[float]
    category_head: dict
    tags_head: dict | None
    pooling: str = "mean"
    max_length: int = CHUNK_MAX_LENGTH
    first_chunks: int = CLASSIFY_CHUNKS
    input: str = "chunks"
    temperature: float = 1.0  # category logits are divided by it (fitted out-of-fold)
    abstain_below: float = 0.0  # calibrated top probability under which the category is abstained
    near_window: float = 0.15  # tags this close under their threshold are "near" (review queue)
    lexical: dict | None = None  # TF-IDF + LR beside the heads (tasks/lexical.py), fused with weights below
    lexical_weight: float = 0.0  # category: p = (1 - w) * neural + w * lexical
    lexical_tag_weight: float = 0.0


@dataclass
class Labels:
    """A document's predicted category (its calibrated probability, margin over the runner-up, whether it is
    only a guess below the confidence threshold) and tags over their thresholds as (tag, score), best first,
    with each one's score - threshold in `tag_margins`; tags just under theirs in `near` (tag, score, margin)."""

    category: str
    category_score: float
    tags: list[tuple[str, float]] = field(default_factory=list)
    category_margin: float = 1.0
    abstained: bool = False
    near: list[tuple[str, float, float]] = field(default_factory=list)
    tag_margins: list[float] = field(default_factory=list)

    def as_row(self) -> dict:
        return {
            "category": self.category, "category_score": self.category_score, "tags": list(self.tags),
            "category_margin": self.category_margin, "abstained": self.abstained, "near": list(self.near),
        }

    def storage_row(self) -> dict:
        """as_row with (tag, score, margin) triples: what store/outputs.save_labels keeps."""
        margins = self.tag_margins or [None] * len(self.tags)
        return self.as_row() | {"tags": [(t, s, m) for (t, s), m in zip(self.tags, margins)]}


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


class Plan(NamedTuple):
    """What the shared pass reads for one document: its first `chunks` chunks; the lexical model's output."""

    chunks: int
    lexical: tuple[np.ndarray, np.ndarray | None] | None = None


@dataclass
class Classifier:
    """Trained heads + label lists (+ the lexical model when fused); predicts with the `classify` adapter."""

    heads: ClassifyHeads
    config: ClassifyConfig
    lexical: LexicalModel | None = None

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor], config: dict | ClassifyConfig) -> Classifier:
        config = config if isinstance(config, ClassifyConfig) else ClassifyConfig.from_dict(config)
        heads = ClassifyHeads(config.category_head["hidden_size"], len(config.categories), len(config.tags))
        heads.category = load_head(config.category_head, state, "category.")
        if config.tags_head:
            heads.tags = load_head(config.tags_head, state, "tags.")
        lexical = LexicalModel(config.lexical, state) if config.lexical else None
        return cls(heads.eval(), config, lexical)

    @classmethod
    def from_result(cls, result) -> Classifier:
        return cls.from_tensors(result.head_state, result.head_config)

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def first_chunks(self) -> int:
        return self.config.first_chunks

    def shares_trunk(self) -> bool:
        return True

    # --- the shared enrichment pass: all chunks (up to first_chunks) -> pooled (vector, tokens) -> combined -> heads
    def plan(self, doc: DocInput, encoded) -> Plan:
        return Plan(min(self.first_chunks, len(doc.chunks)), self._lexical([model_input(doc.title, doc.text)]))

    def chunks_read(self, plan: Plan) -> range:
        return range(plan.chunks)

    def read(self, hidden: Tensor, mask: Tensor, keys, plans, found: dict) -> None:
        vectors, counts = pooled_chunks(hidden, mask, self.config.pooling)
        for (d, c), vector, count in zip(keys, vectors.float(), counts):
            found.setdefault(d, {})[c] = (vector, count)

    def finish(self, plans: dict[int, Plan], found: dict[int, dict]) -> dict[int, Labels]:
        docs = [d for d in plans if d in found]
        if not docs:
            return {}
        x = torch.cat([_combined(found[d]) for d in docs])  # (N, D)
        lexical = None
        if self.lexical is not None:
            cat = np.concatenate([plans[d].lexical[0] for d in docs])
            tags = None if plans[docs[0]].lexical[1] is None else np.concatenate([plans[d].lexical[1] for d in docs])
            lexical = (cat, tags)
        return dict(zip(docs, self.predict_vectors(x, lexical)))

    def _lexical(self, texts: Sequence[str]):
        return self.lexical.probabilities(texts) if self.lexical is not None else None

    def predict(
        self, adapters, texts: Sequence[str] | Sequence[DocInput], batch_size: int = 32,
        chunks: Sequence[Sequence[str]] | None = None,
    ) -> list[Labels]:
        """One Labels per document: each reads its chunks (up to first_chunks; its text when it has none).

        texts: DocInputs (read as `model_input` when they have no chunks), or plain texts with `chunks`
        (each document's chunk texts in order); plain texts are what the lexical model reads.
        """
        if not texts:
            return []
        if isinstance(texts[0], DocInput):
            groups = [
                [c.text for c in doc.chunks[: self.first_chunks]] or [model_input(doc.title, doc.text)] for doc in texts
            ]
            plain = [model_input(doc.title, doc.text) for doc in texts]
        else:
            given = chunks if chunks is not None else [()] * len(texts)
            groups = [list(c[: self.first_chunks]) if c else [t] for t, c in zip(texts, given)]
            plain = list(texts)
        with adapters.using(NAME), torch.no_grad():
            x = pooled_groups_in_batches(adapters, groups, self.config.max_length, self.config.pooling, batch_size)
        return self.predict_vectors(x, self._lexical(plain))

    def probabilities(self, x: Tensor, lexical=None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated category probabilities (N, C) and tag probabilities (N, L), fused with the lexical model's."""
        self.heads.eval()
        with torch.no_grad():
            cat_logits, tag_logits = self.heads(x.float())
        cat_p = torch.softmax(cat_logits.double() / self.config.temperature, -1).numpy()  # (N, C)
        tag_p = torch.sigmoid(tag_logits.double()).numpy() if tag_logits is not None else np.zeros((len(x), 0))
        if lexical is not None:
            w, wt = self.config.lexical_weight, self.config.lexical_tag_weight
            cat_p = (1 - w) * cat_p + w * lexical[0]
            if lexical[1] is not None and tag_p.shape[1]:
                tag_p = (1 - wt) * tag_p + wt * lexical[1]
        return cat_p, tag_p

    def predict_vectors(self, x: Tensor, lexical=None) -> list[Labels]:
        """The heads on pooled document vectors (N, D) (and the lexical model's probabilities, if fused)."""
        return self.labels(*self.probabilities(x, lexical))

    def labels(self, cat_p: np.ndarray, tag_p: np.ndarray) -> list[Labels]:
        """Labels from probabilities: the best category (abstained below the threshold), tags over theirs."""
        config = self.config
        thresholds = np.asarray(config.thresholds, dtype=np.float64)
        out = []
        for i in range(len(cat_p)):
            order = np.argsort(-cat_p[i], kind="stable")
            best = int(order[0])
            margin = float(cat_p[i, best] - (cat_p[i, order[1]] if len(order) > 1 else 0.0))
            applied, near = [], []
            for j, tag in enumerate(config.tags):
                score, gap = float(tag_p[i, j]), float(tag_p[i, j] - thresholds[j])
                if thresholds[j] > 1.0:  # a tag too rare (or too unreliable) to apply
                    continue
                if gap >= 0:
                    applied.append((tag, score, gap))
                elif gap >= -min(config.near_window, NEAR_SHARE * thresholds[j]):  # "just under" is relative
                    near.append((tag, score, gap))
            applied.sort(key=lambda t: -t[1])
            out.append(Labels(
                config.categories[best], float(cat_p[i, best]), [(t, score) for t, score, _ in applied],
                margin, bool(cat_p[i, best] < config.abstain_below),
                sorted(sorted(near, key=lambda t: -t[2])[:MAX_NEAR], key=lambda t: -t[1]),
                [gap for *_, gap in applied],
            ))
        return out


def _combined(chunks: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
    """One document's vector (1, D) from its read chunks' (vector, token count), in chunk order."""
    ordered = [chunks[c] for c in sorted(chunks)]
    vectors = torch.stack([v for v, _ in ordered])  # (k, D)
    counts = torch.stack([n for _, n in ordered])  # (k,)
    return combine_chunks(vectors, counts, [len(ordered)])


def fingerprint_rows(session: Session) -> list[tuple]:
    """(document id, version, category, tags) of each active document with a gold category or tag (file or review)."""
    tags = gold_tags_by_document(session)
    categories = gold_categories(session)
    query = select(Document.id, Document.version).where(Document.status == "active")
    return [
        (doc_id, version, categories.get(doc_id, (None,))[0], tags.get(doc_id, []))
        for doc_id, version in session.execute(query)
        if doc_id in categories or tags.get(doc_id)
    ]


def _needing(session: Session, version: int, ids: Sequence[int] | None) -> list[int]:
    return [d for d, *_ in outputs.docs_needing_labels(session, version, ids)]


def _save(session: Session, rows: Sequence[tuple[int, int, Labels]], version: int) -> None:
    outputs.save_labels(
        session, [dict(out.storage_row(), document_id=d, document_version=v) for d, v, out in rows], version
    )


SPEC = TaskSpec(
    name=NAME,
    trainer=".classify",  # training/classify (resolved by training/trainers.py)
    primary_metric="macro_f1",
    baseline="always the most common training category (and the tags most training documents carry)",
    # sized for a 2-core CPU; chunks are tokenised exactly as enrichment tokenises them (never truncated)
    default_train=TrainConfig(epochs=10, batch_size=16, max_length=CHUNK_MAX_LENGTH, lr=2e-3),
    fingerprint_rows=fingerprint_rows,
    load=Classifier.from_tensors,
    outputs=OutputStore(needing=_needing, save=_save),
)
