"""The one training loop every task uses: AdamW, per-epoch validation, keep-best, early stopping.

Tasks supply closures (how to compute a batch loss, how to batch an epoch, how to
validate); the loop owns optimisation, seeding and bookkeeping, so all three adapters
are trained, stopped and reported the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.nn import Parameter

from kb_pipeline.tasks.spec import TrainConfig

T = TypeVar("T")


@dataclass
class TrainHistory:
    losses: list[float] = field(default_factory=list)  # one per optimiser step
    val: list[dict] = field(default_factory=list)  # one per epoch
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


ParamsLike = Sequence[Parameter] | Sequence[dict[str, Any]]


def shuffled_batches(items: Sequence[T], batch_size: int, epoch: int, seed: int = 0) -> list[list[T]]:
    """A new, reproducible order every epoch: a Generator seeded by (seed, epoch), independent of global RNG use."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(items), generator=generator).tolist()
    return [[items[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


def _param_groups(params: ParamsLike) -> list[dict[str, Any]]:
    """Accept bare parameters or torch-style groups ({"params": [...], "lr": ...})."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**g, "params": list(g["params"])} for g in groups]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("train_loop: no trainable parameters were given")
    return groups


def warmup_linear(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR factor: rises linearly over the warm-up steps (the first Adam steps are the wildest), then decays to ~0."""
    warmup = max(1, round(warmup_ratio * total)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def train_loop(
    params: ParamsLike,
    step_fn: Callable[[Any], Tensor],
    batches_fn: Callable[[int], Iterable[Any]],
    validate_fn: Callable[[], dict],
    metric: str,
    cfg: TrainConfig,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainHistory:
    """Minimise step_fn(batch) over batches_fn(epoch); keep the parameters with the best validate_fn()[metric].

    `metric` is higher-is-better. At the end the best epoch's parameters are copied back
    in place, so the caller's modules hold the selected model. on_step(step, total, loss)
    is called after every optimiser step (1-based step) for progress bars.
    """
    torch.manual_seed(cfg.seed)
    groups = _param_groups(params)
    flat = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    first = list(batches_fn(0))
    total = cfg.epochs * len(first)
    total = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total, cfg.warmup_ratio))

    history = TrainHistory()
    best_value, best_state, stale = -math.inf, None, 0
    started, step = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        batches = first if epoch == 0 else list(batches_fn(epoch))
        for batch in batches:
            loss = step_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(flat, cfg.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            history.losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, total, history.losses[-1])
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break

        with torch.no_grad():
            scores = dict(validate_fn())
        if metric not in scores:
            raise KeyError(f"validate_fn returned {sorted(scores)}; the selection metric {metric!r} is missing")
        history.val.append({"epoch": epoch, "step": step, **scores})
        value = float(scores[metric])
        if value > best_value:
            best_value, history.best_epoch, stale = value, epoch, 0
            best_state = [p.detach().clone() for p in flat]
        else:
            stale += 1
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        if stale >= cfg.patience:
            history.stopped_early = epoch < cfg.epochs - 1
            break

    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(flat, best_state):
                p.copy_(saved)
    history.seconds = time.perf_counter() - started
    return history
