"""How a batch flows: tokens -> frozen lower layers (once) -> each task's adapted top layers -> its head.

When the task adapters sit only in the top N layers, the layers below them (the trunk) compute the same
function for every task, so they run once:

- training (`hidden_states`): a text's trunk output is cached in a `TrunkCache` keyed by its token ids, so
  every epoch, every validation pass and every task reading the same chunk reuses it;
- enrichment (`branched_states`): one trunk forward per batch, then each task's top layers on its rows.

How the trunk is skipped, and which transformers internals that relies on
--------------------------------------------------------------------------
Nothing of a model's forward is reimplemented: embeddings, positions, attention masks and caches are built
by the model itself, through the public call `model.base_model(input_ids=..., attention_mask=...)`
and its `.last_hidden_state`. Around that call we only (1) capture the trunk, with a forward hook on layer
split-1 that stops the model once that layer's output is in hand, and (2) replay it, by shadowing the
instance `forward` of layers[:split]: identities, the last one handing back the cached states. That still
relies on three things transformers does not promise as public API (tests/test_forward.py checks each on
a BERT-style encoder and a Llama-style decoder and says which one broke):

a. the layers are one `nn.ModuleList` of `num_hidden_layers` modules (`find_transformer_layers`;
   bert: `encoder.layer`, llama: `model.layers`): how we find what to hook and shadow;
b. the model runs them in order, feeding each layer's output straight into the next as its
   `hidden_states` (first positional argument), with nothing in between: why a shadowed layer may just
   return its input, and why the last one may return the cached output;
c. a layer returns its hidden states as a plain tensor (transformers 5; older versions returned a tuple
   and the model took item 0): what the replayed layers return.

Attention-mask helpers (`get_extended_attention_mask`, `create_causal_mask`) are not called here: the
model builds its masks itself, so changes to them cannot break the replay.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kb_pipeline.backbone.loading import Backbone

if TYPE_CHECKING:
    from kb_pipeline.backbone.adapters import AdapterSet

DEFAULT_BUDGET_BYTES = 768 * 1024 * 1024
Head = Callable[[torch.Tensor, torch.Tensor], Any]  # (states (R, T, H), mask (R, T)) -> the task's output


# -- the flow ----------------------------------------------------------------------------------------------


def hidden_states(
    adapters: AdapterSet, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, output_all: bool = False
) -> torch.Tensor:
    """(B, T, H) last hidden state with the active adapter; output_all: (L+1, B, T, H), embeddings first.

    The trunk below the active adapter comes from `adapters.trunk` (computed only for rows not cached yet).
    Decoders run their inner transformer (e.g. LlamaModel): final-norm hidden states, no LM head.
    """
    backbone = adapters.backbone
    split = 0 if output_all else adapters.trunk_split()
    if not split:
        return full_forward(backbone, input_ids, attention_mask, output_all=output_all)
    trunk = cached_lower_layers(backbone, split, adapters.trunk, input_ids, attention_mask)  # (B, T, H)
    return top_layers(backbone, split, trunk, input_ids, attention_mask)


def branched_states(
    adapters: AdapterSet,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: Mapping[str | None, Sequence[int]],
    *,
    share: bool = True,
    heads: Mapping[str | None, Head] | None = None,
) -> dict[str | None, Any]:
    """One batch, several tasks: the frozen lower layers run ONCE, then each task's top layers on its rows.

    input_ids, attention_mask: (B, T), right-padded. rows: task (None = the plain backbone) -> indices into
    the batch. Returns task -> (len(rows), T_task, H) last hidden states, T_task trimmed to the longest of
    the task's rows, or, for a task in `heads`, its head applied to those states and their mask. Equal (up to
    float rounding) to each task's own `hidden_states` on those rows. share=False runs every task's full
    forward instead (what benchmarks compare against). The trunk runs without gradient; the top layers follow
    the caller's grad mode. The previously active task is active again afterwards.
    """
    wanted = {task: list(r) for task, r in rows.items() if len(r)}
    if not wanted:
        return {}
    backbone, heads = adapters.backbone, heads or {}
    split = adapters.shared_split(list(wanted)) if share else 0
    if split:
        needed = sorted({r for task_rows in wanted.values() for r in task_rows})
        ids, mask = _trimmed(input_ids[needed], attention_mask[needed])
        trunk = lower_layers(backbone, split, ids, mask)  # (N, W, H): the only lower-layer forward of this batch
        position = {row: i for i, row in enumerate(needed)}
    out: dict[str | None, Any] = {}
    with adapters.using(adapters.active):  # restores the active task afterwards
        for task, task_rows in wanted.items():
            adapters.activate(task)
            ids, mask = _trimmed(input_ids[task_rows], attention_mask[task_rows])
            if split:
                task_trunk = trunk[[position[r] for r in task_rows], : ids.shape[1]]  # (R, W, H)
                states = top_layers(backbone, split, task_trunk, ids, mask)
            else:
                states = full_forward(backbone, ids, mask)
            out[task] = heads[task](states, mask) if task in heads else states
    return out


# -- the steps ---------------------------------------------------------------------------------------------


def full_forward(
    backbone: Backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, output_all: bool = False
) -> torch.Tensor:
    """Every layer runs: (B, T, H), or (L+1, B, T, H) with output_all."""
    base, extra = _inner(backbone)
    out = base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_all, **extra)
    if output_all:
        return torch.stack(out.hidden_states)  # (L+1, B, T, H)
    return out.last_hidden_state  # (B, T, H)


def lower_layers(backbone: Backbone, split: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) output of layers[:split] (no cache, no gradient): the trunk every task branches from."""
    base, extra = _inner(backbone)
    last_frozen = backbone.transformer_layers()[split - 1]
    return _capture(base, last_frozen, input_ids, attention_mask, **extra)


def cached_lower_layers(
    backbone: Backbone, split: int, cache: TrunkCache, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T, H) output of layers[:split] for the batch, computing only the rows not cached yet."""
    lengths = attention_mask.sum(dim=1).tolist()
    keys = [(split, input_ids[i, : int(n)].numpy().tobytes()) for i, n in enumerate(lengths)]
    rows = [cache.get(k) for k in keys]
    missing = [i for i, row in enumerate(rows) if row is None]
    cache.hits += len(rows) - len(missing)
    cache.misses += len(missing)
    if missing:
        fresh = lower_layers(backbone, split, input_ids[missing], attention_mask[missing])
        for j, i in enumerate(missing):
            rows[i] = fresh[j, : int(lengths[i])].clone()
            cache.put(keys[i], rows[i])
    states = rows[0].new_zeros((len(rows), input_ids.shape[1], rows[0].shape[-1]))  # (B, T, H)
    for i, row in enumerate(rows):
        states[i, : row.shape[0]] = row
    return states


def top_layers(
    backbone: Backbone, split: int, trunk: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T, H) last hidden state from the trunk (B, T, H): only layers[split:] (and the final norm) run."""
    base, extra = _inner(backbone)
    with replaying(backbone.transformer_layers(), split, trunk):
        return base(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def _inner(backbone: Backbone) -> tuple[nn.Module, dict]:
    """The transformer to call (bert: the model; causal LMs: the inner model, no LM head) and its extra kwargs."""
    extra = {"use_cache": False} if backbone.family == "decoder" else {}
    return backbone.model.base_model, extra


def _trimmed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows cut to the longest real row among them."""
    width = int(attention_mask.sum(dim=1).max())
    return input_ids[:, :width], attention_mask[:, :width]


# -- capture and replay ------------------------------------------------------------------------------------


class _Captured(Exception):
    """Raised from a forward hook to stop the model once the trunk output is in hand."""

    def __init__(self, states: torch.Tensor):
        self.states = states


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
