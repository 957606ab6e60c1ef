"""How a batch flows: tokens -> frozen lower layers (once) -> each task's adapted top layers -> its head.

When the task adapters sit only in the top N layers, the layers below them (the trunk) compute the same
function for every task, so they run once:

- training (`hidden_states`): a text's trunk output is cached in a `TrunkCache` keyed by its token ids (in
  bfloat16, read back as float32), so every epoch, every validation pass and every task reading the same
  chunk reuses it;
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
from typing import TYPE_CHECKING, Any, NamedTuple

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
            rows[i] = cache.put(keys[i], fresh[j, : int(lengths[i])])  # as a later hit will return it
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
    """(split layer, token ids) -> (T, H) trunk output, at most `budget_bytes` of rows stored in `dtype`.

    Why this layout: training keeps these rows for the whole run while every step allocates and frees large
    activations. Rows as separate small tensors sat between those activations in the C heap, which then
    could not shrink: on BBC (LoRA on the top 2 MiniLM layers, 15 steps + scoring 200 texts) 82 MB of rows
    raised peak RSS by 386 MB over no cache at all (1,178 vs 792 MB). So rows are copied into a ring of large slabs
    (allocated as needed, each above glibc's 32 MB mmap threshold when the budget allows, so they live
    outside the heap and `clear` returns them to the OS) and the oldest rows are overwritten first.

    Rows are stored in bfloat16 by default (half the bytes; about 3 significant digits, bf16 keeps float32's
    range) and come back in the dtype they were put in. `put` returns that same rounded row, so a text's trunk
    is identical whether it was just computed or read back. Eviction is first in, first out: training reads
    every text once per epoch, so LRU would evict the same rows.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES, dtype: torch.dtype | None = torch.bfloat16):
        self.budget = budget_bytes
        self.dtype = dtype  # None: store rows as they come
        self.used = 0  # bytes of the rows held now
        self.hits = 0
        self.misses = 0
        self._slabs: list[torch.Tensor] = []  # 1-D, `_slab_elems` each, allocated as the ring reaches them
        self._slab_dtype: torch.dtype | None = None
        self._slab_elems = 0
        self._count = 0  # slabs in the ring
        self._head = 0  # elements written since the ring started (never wraps; slab = head // size % count)
        self._rows: OrderedDict[tuple[int, bytes], _Entry] = OrderedDict()  # oldest first

    def get(self, key: tuple[int, bytes]) -> torch.Tensor | None:
        entry = self._rows.get(key)
        if entry is None:
            return None
        return self._read(entry)

    def put(self, key: tuple[int, bytes], row: torch.Tensor) -> torch.Tensor:
        """Store `row` (unless it alone exceeds a slab); return it as `get` will (rounded to the stored dtype)."""
        if key in self._rows:
            return self._read(self._rows[key])
        stored = self._storage_dtype(row)
        if self._slab_dtype is None:
            self._start(stored)
        if stored != self._slab_dtype or row.numel() > self._slab_elems:
            return _rounded(row, stored)  # not stored, but equal to what a stored copy would give back
        n = row.numel()
        offset = self._head % self._slab_elems
        if offset + n > self._slab_elems:  # rows never straddle slabs: skip the rest of this one
            self._head += self._slab_elems - offset
            offset = 0
        capacity = self._slab_elems * self._count
        while self._rows and next(iter(self._rows.values())).start + capacity < self._head + n:
            _, old = self._rows.popitem(last=False)  # its region is the one about to be overwritten
            self.used -= old.nbytes
        slab = self._slab(self._head // self._slab_elems % self._count)
        slab[offset : offset + n].copy_(row.detach().reshape(-1))  # casts to the stored dtype
        entry = _Entry(self._head, slab, offset, tuple(row.shape), row.dtype, n * slab.element_size())
        self._rows[key] = entry
        self._head += n
        self.used += entry.nbytes
        return self._read(entry)

    def clear(self) -> None:
        self._rows.clear()
        self._slabs = []  # the slabs' memory goes back to the OS
        self._slab_dtype = None
        self._head = 0
        self.used = 0

    def __len__(self) -> int:
        return len(self._rows)

    def _storage_dtype(self, row: torch.Tensor) -> torch.dtype:
        if self.dtype is None or not row.is_floating_point() or row.element_size() <= _itemsize(self.dtype):
            return row.dtype  # never widen: a bf16/fp16 model's rows stay as they are
        return self.dtype

    def _start(self, dtype: torch.dtype) -> None:
        """Size the ring for `dtype`: as few slabs of at most SLAB_BYTES as fit the budget."""
        self._slab_dtype = dtype
        self._count = max(1, -(-self.budget // SLAB_BYTES))
        self._slab_elems = self.budget // self._count // _itemsize(dtype)

    def _slab(self, index: int) -> torch.Tensor:
        while len(self._slabs) <= index:  # torch.empty: pages become resident only once written
            self._slabs.append(torch.empty(self._slab_elems, dtype=self._slab_dtype))
        return self._slabs[index]

    @staticmethod
    def _read(entry: _Entry) -> torch.Tensor:
        row = entry.slab[entry.offset : entry.offset + entry.nbytes // entry.slab.element_size()]
        return row.view(entry.shape).to(entry.dtype, copy=True)  # a copy: callers never alias the slab


SLAB_BYTES = 64 * 1024 * 1024  # > glibc's largest mmap threshold (32 MB): slabs are mmapped, never heap


class _Entry(NamedTuple):
    start: int  # position in the ring when written (elements, never wraps)
    slab: torch.Tensor
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype  # what was put; rows come back in it
    nbytes: int  # as stored


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _rounded(row: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return row.detach().to(dtype).to(row.dtype, copy=True)
