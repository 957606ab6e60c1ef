"""Training losses as pure functions of tensors, so each is testable without a model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def in_batch_contrastive_loss(q: Tensor, p: Tensor, scale: float = 20.0, groups: Tensor | None = None) -> Tensor:
    """MultipleNegativesRankingLoss: query i must pick passage i among all passages in the batch.

    Cosine similarities are scaled (temperature 1/scale) and fed to cross-entropy with
    diagonal targets. `groups` (B,) marks passages of the same document: such off-diagonal
    pairs are true positives, not negatives, so they are masked out of the softmax.
    """
    q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)  # (B, H), (B, H)
    logits = q @ p.T * scale  # (B, B)
    if groups is not None:
        same = groups[:, None] == groups[None, :]  # (B, B)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    targets = torch.arange(q.shape[0], device=q.device)  # (B,)
    return F.cross_entropy(logits, targets)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Single-label classification; labels equal to -100 are ignored. (B, C), (B,) -> scalar."""
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def multilabel_bce(logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Independent sigmoid per label (tags; also 1-label sentence scores). Any shape, targets in {0,1}."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pos_weight)


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy: position t predicts labels[t+1]; -100 marks tokens not to learn (prompt, padding).

    (B, T, V), (B, T) -> scalar, averaged over the supervised tokens.
    """
    logits = logits[:, :-1, :]  # (B, T-1, V)
    labels = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
