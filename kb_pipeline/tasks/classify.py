"""classify: one category (softmax) and any number of tags (sigmoid) per document.

Both heads read one pooled vector from the `classify` adapter: the token-weighted mean of the document's
first chunks (CLASSIFY_CHUNKS), each encoded exactly as embed encodes it, so at enrichment time classify
branches off the chunk trunk the other tasks share. Tag thresholds are tuned per tag on validation data
(training/classify.py) because tag frequencies differ wildly and one global 0.5 under-predicts rare tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import Tensor, nn

from kb_pipeline.backbone.heads import ClassifierHead, load_head
from kb_pipeline.store import outputs
from kb_pipeline.store.queries import gold_tags_by_document
from kb_pipeline.store.schema import Document, GoldLabel
from kb_pipeline.tasks.chunks import (
    CHUNK_MAX_LENGTH,
    CLASSIFY_CHUNKS,
    combine_chunks,
    pooled_chunks,
    pooled_chunks_in_batches,
)
from kb_pipeline.tasks.encoding import encode, model_input
from kb_pipeline.tasks.spec import DocInput, OutputStore, SavedConfig, TaskSpec, TrainConfig

NAME = "classify"
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



@dataclass
class Labels:
    """A document's predicted category (with its probability) and tags above their thresholds, best first."""

    category: str
    category_score: float
    tags: list[tuple[str, float]] = field(default_factory=list)

    def as_row(self) -> dict:
        return {"category": self.category, "category_score": self.category_score, "tags": list(self.tags)}


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


@dataclass
class Classifier:
    """Trained heads + label lists; predicts with the `classify` adapter of an AdapterSet."""

    heads: ClassifyHeads
    config: ClassifyConfig

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor], config: dict | ClassifyConfig) -> Classifier:
        config = config if isinstance(config, ClassifyConfig) else ClassifyConfig.from_dict(config)
        heads = ClassifyHeads(config.category_head["hidden_size"], len(config.categories), len(config.tags))
        heads.category = load_head(config.category_head, state, "category.")
        if config.tags_head:
            heads.tags = load_head(config.tags_head, state, "tags.")
        return cls(heads.eval(), config)

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

    # --- the shared enrichment pass: first chunks -> pooled (vector, tokens) -> combined -> heads
    def plan(self, doc: DocInput, encoded) -> int:
        return min(self.first_chunks, len(doc.chunks))

    def chunks_read(self, plan: int) -> range:
        return range(plan)

    def read(self, hidden: Tensor, mask: Tensor, keys, plans, found: dict) -> None:
        vectors, counts = pooled_chunks(hidden, mask, self.config.pooling)
        for (d, c), vector, count in zip(keys, vectors.float(), counts):
            found.setdefault(d, {})[c] = (vector, count)

    def finish(self, plans: dict[int, int], found: dict[int, dict]) -> dict[int, Labels]:
        docs = [d for d in plans if d in found]
        if not docs:
            return {}
        x = torch.cat([_combined(found[d]) for d in docs])  # (N, D)
        return dict(zip(docs, self.predict_vectors(x)))

    def predict(
        self, adapters, texts: Sequence[str] | Sequence[DocInput], batch_size: int = 32,
        chunks: Sequence[Sequence[str]] | None = None,
    ) -> list[Labels]:
        """One Labels per document: each reads its first chunks (or its text when it has none).

        texts: DocInputs (read as `model_input` when they have no chunks), or plain texts with `chunks`
        (each document's chunk texts in order).
        """
        if not texts:
            return []
        if isinstance(texts[0], DocInput):
            groups = [
                [c.text for c in doc.chunks[: self.first_chunks]] or [model_input(doc.title, doc.text)] for doc in texts
            ]
        else:
            given = chunks if chunks is not None else [()] * len(texts)
            groups = [list(c[: self.first_chunks]) if c else [t] for t, c in zip(texts, given)]
        with adapters.using(NAME), torch.no_grad():
            x = pooled_groups_in_batches(adapters, groups, self.config.max_length, self.config.pooling, batch_size)
        return self.predict_vectors(x)

    def predict_vectors(self, x: Tensor) -> list[Labels]:
        """The heads on pooled document vectors (N, D)."""
        categories, tags, thresholds = self.config.categories, self.config.tags, self.config.thresholds
        self.heads.eval()
        with torch.no_grad():
            cat_logits, tag_logits = self.heads(x.float())
        cat_p = torch.softmax(cat_logits, -1)  # (N, C)
        tag_p = torch.sigmoid(tag_logits) if tag_logits is not None else torch.zeros(len(x), 0)  # (N, L)
        out = []
        for i in range(len(x)):
            best = int(cat_p[i].argmax())
            chosen = [(tags[j], float(tag_p[i, j])) for j in range(len(tags)) if tag_p[i, j] >= thresholds[j]]
            out.append(Labels(categories[best], float(cat_p[i, best]), sorted(chosen, key=lambda pair: -pair[1])))
        return out


def _combined(chunks: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
    """One document's vector (1, D) from its read chunks' (vector, token count), in chunk order."""
    ordered = [chunks[c] for c in sorted(chunks)]
    vectors = torch.stack([v for v, _ in ordered])  # (k, D)
    counts = torch.stack([n for _, n in ordered])  # (k,)
    return combine_chunks(vectors, counts, [len(ordered)])


def fingerprint_rows(session: Session) -> list[tuple]:
    """(document id, version, category, tags) of each active document with a gold category or tag."""
    tags = gold_tags_by_document(session)
    query = select(Document.id, Document.version, GoldLabel.category).join(
        GoldLabel, GoldLabel.document_id == Document.id, isouter=True
    ).where(Document.status == "active")
    return [
        (doc_id, version, category, tags.get(doc_id, []))
        for doc_id, version, category in session.execute(query)
        if category or tags.get(doc_id)
    ]


def _needing(session: Session, version: int, ids: Sequence[int] | None) -> list[int]:
    return [d for d, *_ in outputs.docs_needing_labels(session, version, ids)]


def _save(session: Session, rows: Sequence[tuple[int, int, Labels]], version: int) -> None:
    outputs.save_labels(
        session, [dict(out.as_row(), document_id=d, document_version=v) for d, v, out in rows], version
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
