"""Training the embed adapter: in-batch negatives on (query, passage) pairs (the task: tasks/embed.py).

Whether it is worth using is judged against the untuned backbone on the same
validation ranking (nDCG@10); the caller promotes it only if it beats that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kb_pipeline.tasks.embed import NAME, embed_texts
from kb_pipeline.tasks.encoding import pooled
from kb_pipeline.tasks.registry import load_task
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.training import losses
from kb_pipeline.training.base import (
    InsufficientData,
    Pair,
    TrainResult,
    fresh_adapter,
    param_groups,
    set_mode,
    training_task,
)
from kb_pipeline.training.datasets import embed_data as data  # noqa: F401  (the trainer's data)
from kb_pipeline.training.loop import shuffled_batches, train_loop
from kb_pipeline.training.metrics import mrr_at_k, ndcg_at_k, recall_at_k

TASK = NAME
K = 10
SCALE = 20.0  # sentence-transformers' default for MultipleNegativesRankingLoss


def retrieval_metrics(
    query_vecs: np.ndarray, passage_vecs: np.ndarray, passage_docs: list[str], relevant: list[str]
) -> dict:
    """Rank passages per query by cosine, collapse to documents (first hit counts), score against the query's doc."""
    sims = query_vecs @ passage_vecs.T  # (Q, P)
    totals = {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    for i, doc in enumerate(relevant):
        ranked = list(dict.fromkeys(passage_docs[j] for j in np.argsort(-sims[i], kind="stable")))
        totals["ndcg@10"] += ndcg_at_k(ranked, {doc}, K)
        totals["recall@10"] += recall_at_k(ranked, {doc}, K)
        totals["mrr@10"] += mrr_at_k(ranked, {doc}, K)
    return {name: value / max(1, len(relevant)) for name, value in totals.items()}


def evaluate_pairs(adapters, val: Sequence[Pair], task: str | None, max_length: int) -> dict:
    """Each val query against every distinct val passage; the relevant document is its pair's doc_key."""
    passages = list(dict.fromkeys((p.passage, p.doc_key) for p in val))
    q = embed_texts(adapters, [p.query for p in val], task, max_length=max_length)
    d = embed_texts(adapters, [text for text, _ in passages], task, max_length=max_length)
    return retrieval_metrics(q, d, [doc for _, doc in passages], [p.doc_key for p in val])


def check_data(train: Sequence[Pair], val: Sequence[Pair]) -> None:
    docs = {p.doc_key for p in train}
    if len(train) < 2 or len(docs) < 2:
        raise InsufficientData(
            f"embed needs at least 2 training pairs from 2 different documents (in-batch negatives); "
            f"found {len(train)} pairs from {len(docs)} documents"
        )
    if not val:
        raise InsufficientData("embed needs validation pairs to compare against the untuned backbone; found 0")


def train(adapters, train: list[Pair], val: list[Pair], config, cfg: TrainConfig, on_step=None) -> TrainResult:
    """Contrastive tuning of the embed adapter; metrics and baseline are nDCG/recall/MRR@10 on val queries."""
    check_data(train, val)
    baseline = evaluate_pairs(adapters, val, None, cfg.max_length)
    fresh_adapter(adapters, TASK, config, cfg.seed)
    doc_ids = {doc: i for i, doc in enumerate(sorted({p.doc_key for p in train}))}

    def step(batch: list[Pair]) -> Tensor:
        set_mode(adapters, None, True)
        q = pooled(adapters, [p.query for p in batch], cfg.max_length, "mean")  # (B, H)
        d = pooled(adapters, [p.passage for p in batch], cfg.max_length, "mean")  # (B, H)
        groups = torch.tensor([doc_ids[p.doc_key] for p in batch])  # (B,) same doc -> not a negative
        return losses.in_batch_contrastive_loss(q, d, SCALE, groups)

    def batches(epoch: int) -> list[list[Pair]]:
        # a batch of one has no negatives (loss is exactly 0): fold it into the previous batch
        out = shuffled_batches(train, cfg.batch_size, epoch, cfg.seed)
        if len(out) > 1 and len(out[-1]) == 1:
            out[-2].extend(out.pop())
        return out

    def validate() -> dict:
        set_mode(adapters, None, False)
        return evaluate_pairs(adapters, val, TASK, cfg.max_length)

    with training_task(adapters, TASK):
        history = train_loop(
            param_groups(adapters, TASK, None, cfg),
            step,
            batches,
            validate,
            "ndcg@10",
            cfg,
            on_step,
        )
    metrics = evaluate_pairs(adapters, val, TASK, cfg.max_length)
    metrics["beats_baseline"] = bool(metrics["ndcg@10"] >= baseline["ndcg@10"])
    return TrainResult(
        task=TASK,
        config=config,
        train_config=cfg,
        head_state={},
        head_config={"pooling": "mean", "normalize": True, "max_length": cfg.max_length},
        metrics=metrics,
        baseline=baseline,
        history=history,
        adapter_params=adapters.num_parameters(TASK),
        head_params=0,
        backbone_params=adapters.backbone.num_parameters,
        primary_metric="ndcg@10",
    )


def evaluate(adapters, folder: Path, val: Sequence[Pair], cfg: TrainConfig, spec) -> dict:
    """A saved version's retrieval metrics on this run's validation pairs (for the gate)."""
    load_task(adapters, spec, folder)
    return evaluate_pairs(adapters, val, TASK, cfg.max_length)
