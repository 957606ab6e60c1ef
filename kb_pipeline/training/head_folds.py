"""Out-of-fold scores of the classify heads on cached document vectors (the trunk and adapter stay fixed).

Tag thresholds tuned on the validation documents alone degenerate on a small KB (16 documents put them
near 0.1 and every document got the same tags). Fresh heads trained k-fold on the training documents'
pooled vectors score every training document with a head that never saw it: cheap (a few hundred
full-batch steps of a small MLP) and many more documents to tune on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kb_pipeline.tasks.classify import ClassifyHeads

FOLDS = 5
STEPS = 200


def fit_heads(x: Tensor, labels: Tensor, targets: Tensor, num_categories: int, steps: int = STEPS,
              lr: float = 3e-3, seed: int = 0) -> ClassifyHeads:
    """Heads trained full-batch on vectors (N, D), category indices (N,) (-100: none) and tag targets (N, L)."""
    torch.manual_seed(seed)
    heads = ClassifyHeads(x.shape[1], num_categories, targets.shape[1])
    optimiser = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-2)
    heads.train()
    labelled = labels >= 0
    for _ in range(steps):
        cat_logits, tag_logits = heads(x)
        loss = F.cross_entropy(cat_logits[labelled], labels[labelled]) if labelled.any() else cat_logits.sum() * 0
        if tag_logits is not None:
            loss = loss + F.binary_cross_entropy_with_logits(tag_logits, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return heads.eval()


def out_of_fold(
    x: Tensor, labels: Tensor, targets: Tensor, num_categories: int, folds: int = FOLDS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) category logits and (N, L) tag probabilities, each row from heads fitted on the other folds."""
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    cat = np.zeros((n, num_categories))
    tags = np.zeros((n, targets.shape[1]))
    for k in range(min(folds, n)):
        held = order[k::folds]
        fit = np.setdiff1d(order, held)
        heads = fit_heads(x[fit], labels[fit], targets[fit], num_categories, seed=seed + k)
        with torch.no_grad():
            cat_logits, tag_logits = heads(x[held])
        cat[held] = cat_logits.double().numpy()
        if tag_logits is not None:
            tags[held] = torch.sigmoid(tag_logits).double().numpy()
    return cat, tags
