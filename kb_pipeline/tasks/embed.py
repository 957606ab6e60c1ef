"""embed: retrieval vectors (L2-normalised mean of token states) for chunks and queries.

A chunk's vector is stored under an embed key naming what produced it: the active embed adapter, or the
untuned backbone when there is none (or the gate judged the adapter no better than the backbone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from kb_pipeline.backbone.heads import l2_normalize
from kb_pipeline.store.schema import Document
from kb_pipeline.tasks.chunks import CHUNK_MAX_LENGTH
from kb_pipeline.tasks.encoding import pooled_in_batches
from kb_pipeline.tasks.spec import TaskSpec, TrainConfig

NAME = "embed"
DEFAULT_MAX_LENGTH = 256
EMBED_MAX_LENGTH = CHUNK_MAX_LENGTH  # chunks are <= 200 tokens (never truncated); queries are short


def embed_key(version_id: int | None, backbone_hash: str) -> str:
    """The key stored vectors and the index carry: which adapter version, or which untuned backbone, made them."""
    return f"adapter:{version_id}" if version_id is not None else f"backbone:{backbone_hash[:16]}"


def embed_texts(
    adapters, texts: Sequence[str], task: str | None = NAME, batch_size: int = 32, max_length: int | None = None
) -> np.ndarray:
    """L2-normalised mean-pooled vectors, float32 (N, H); task=None embeds with the untuned backbone."""
    if not texts:
        return np.zeros((0, adapters.backbone.hidden_size), dtype=np.float32)
    with adapters.using(task):
        vectors = pooled_in_batches(adapters, list(texts), max_length or DEFAULT_MAX_LENGTH, "mean", batch_size)
    return l2_normalize(vectors).numpy().astype(np.float32)


def fingerprint_rows(session: Session) -> list[tuple]:
    """Pairs are mined from every active document's title, headings and summary: (id, version) of each."""
    return [tuple(r) for r in session.execute(select(Document.id, Document.version).where(Document.status == "active"))]


SPEC = TaskSpec(
    name=NAME,
    trainer=".embed",  # training/embed (resolved by training/trainers.py)
    primary_metric="ndcg@10",
    baseline="the untuned backbone on the same validation queries",
    must_beat_baseline=True,
    default_train=TrainConfig(epochs=2, batch_size=32, max_length=128, lr=1e-3),
    fingerprint_rows=fingerprint_rows,
)
