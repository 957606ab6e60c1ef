"""The shared trunk: outputs of the frozen layers below the adapters, computed once and branched per task.

When the task adapters sit only in the top N layers, the layers below them compute the same function
for every task. Two uses of that:

- training (`TrunkCache` + `trunk_states`): the trunk output of a text is cached, keyed by its token ids,
  so every epoch, every validation pass and every task that reads the same chunk reuses it;
- enrichment (`lower_states` once per batch, then `replaying` per task): one forward through the frozen
  layers, then each task's adapted top layers start from those states.

Either way the lower layers become an identity during the top-layer forward and the last of them hands
back the given states, so only the adapted top layers run.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

DEFAULT_BUDGET_BYTES = 768 * 1024 * 1024


class _Captured(Exception):
    """Raised from a forward hook to stop the model once the trunk output is in hand."""

    def __init__(self, states: torch.Tensor):
        self.states = states


class TrunkCache:
    """LRU map (split layer, token ids) -> (T, H) trunk output, bounded in bytes."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.budget = budget_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._rows: OrderedDict[tuple[int, bytes], torch.Tensor] = OrderedDict()

    def get(self, key: tuple[int, bytes]) -> torch.Tensor | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: tuple[int, bytes], row: torch.Tensor) -> None:
        size = row.element_size() * row.nelement()
        if size > self.budget or key in self._rows:
            return
        while self.used + size > self.budget:
            _, old = self._rows.popitem(last=False)
            self.used -= old.element_size() * old.nelement()
        self._rows[key] = row
        self.used += size

    def clear(self) -> None:
        self._rows.clear()
        self.used = 0


def trunk_states(
    base: nn.Module, layers: nn.ModuleList, split: int, cache: TrunkCache, input_ids: torch.Tensor,
    attention_mask: torch.Tensor, **kwargs,
) -> torch.Tensor:
    """(B, T, H) output of layers[:split] for the batch, computing only the rows not cached yet."""
    lengths = attention_mask.sum(dim=1).tolist()
    keys = [(split, input_ids[i, : int(n)].numpy().tobytes()) for i, n in enumerate(lengths)]
    rows = [cache.get(k) for k in keys]
    missing = [i for i, row in enumerate(rows) if row is None]
    cache.hits += len(rows) - len(missing)
    cache.misses += len(missing)
    if missing:
        fresh = _capture(base, layers[split - 1], input_ids[missing], attention_mask[missing], **kwargs)
        for j, i in enumerate(missing):
            rows[i] = fresh[j, : int(lengths[i])].clone()
            cache.put(keys[i], rows[i])
    states = rows[0].new_zeros((len(rows), input_ids.shape[1], rows[0].shape[-1]))  # (B, T, H)
    for i, row in enumerate(rows):
        states[i, : row.shape[0]] = row
    return states


def lower_states(
    base: nn.Module, layers: nn.ModuleList, split: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs
) -> torch.Tensor:
    """(B, T, H) output of layers[:split] (no cache, no gradient): the trunk every task branches from."""
    return _capture(base, layers[split - 1], input_ids, attention_mask, **kwargs)


def _capture(base: nn.Module, last_frozen: nn.Module, input_ids, attention_mask, **kwargs) -> torch.Tensor:
    def stop(_module, _inputs, output):
        raise _Captured(output[0] if isinstance(output, tuple) else output)

    handle = last_frozen.register_forward_hook(stop)
    try:
        with torch.no_grad():
            base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    except _Captured as captured:
        return captured.states.detach()
    finally:
        handle.remove()
    raise RuntimeError("the model finished without running its transformer layers")


@contextmanager
def replaying(layers: nn.ModuleList, split: int, states: torch.Tensor) -> Iterator[None]:
    """Within the block, layers[:split] cost nothing: identities, the last one returning `states`."""

    def identity(hidden_states, *args, **kwargs):
        return hidden_states

    def cached(hidden_states, *args, **kwargs):
        return states

    swapped = list(layers[:split])
    for layer in swapped[:-1]:
        layer.forward = identity
    swapped[-1].forward = cached
    try:
        yield
    finally:
        for layer in swapped:
            del layer.forward  # back to the class's forward
