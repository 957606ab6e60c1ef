"""All task adapters on ONE frozen backbone, PEFT-style: per-task state keyed by task name.

LoRA (through peft, `lora.py`) and bottleneck (`bottleneck.py`) adapters both install wrappers in the
backbone's module tree; each wrapper keeps the original module as `base_layer` and its per-task tensors in
dicts keyed by task, so the backbone's own tensors (`Backbone.state_dict()`, `weights_hash`) are untouched
and one task's training cannot reach another's weights. How a batch then flows is in `backbone/forward.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from kb_pipeline.backbone import forward
from kb_pipeline.backbone.adapters.bottleneck import BottleneckAdapters, Switch
from kb_pipeline.backbone.adapters.config import AdapterConfig, check_task_name, top_layers
from kb_pipeline.backbone.adapters.lora import LoraAdapters
from kb_pipeline.backbone.forward import TrunkCache
from kb_pipeline.backbone.loading import Backbone

BUDGET_SHARE = 0.02  # an adapter larger than 2% of the backbone defeats the point of sharing it


def _is_wrapper(module: nn.Module) -> bool:
    return isinstance(getattr(module, "base_layer", None), nn.Module) and hasattr(module, "adapter_layer_names")


class AdapterSet:
    """All task adapters living on ONE backbone. Switching task never reloads or changes the backbone.

    Exactly the active task's adapter affects outputs, and only its parameters have requires_grad=True.
    A backbone carries at most one live set: creating another closes the previous one.
    """

    def __init__(self, backbone: Backbone, trunk_dtype: torch.dtype | None = None):
        """`trunk_dtype`: how cached trunk rows are stored; None keeps them exact (float32), which inference
        needs (a query embedded through torch must match the stored chunk vectors); training passes bfloat16,
        half the memory, and its outputs agree at cosine >= 0.99999 (tests/test_trunk.py)."""
        previous = backbone.adapter_set
        if isinstance(previous, AdapterSet):
            previous.close()
        self.backbone = backbone
        self._configs: dict[str, AdapterConfig] = {}
        self._switch = Switch()
        self._lora = LoraAdapters(backbone)
        self._bottleneck = BottleneckAdapters(backbone, self._switch)
        self._training = False
        self._closed = False
        self.trunk = TrunkCache(dtype=trunk_dtype)  # frozen lower-layer outputs, shared by every task adapted above them
        backbone.attach_adapter_set(self)

    def __repr__(self) -> str:
        kinds = {task: cfg.kind for task, cfg in self._configs.items()}
        return f"AdapterSet(backbone={self.backbone.name!r}, tasks={kinds}, active={self.active!r})"

    @property
    def active(self) -> str | None:
        return self._switch.task

    def tasks(self) -> list[str]:
        return list(self._configs)

    def config(self, task: str) -> AdapterConfig:
        if task not in self._configs:
            raise KeyError(f"no adapter for task {task!r}; have {self.tasks()}")
        return self._configs[task]

    # -- adding and removing -------------------------------------------------------------------------------

    def add(self, task: str, config: AdapterConfig, seed: int = 0) -> None:
        """A fresh adapter for `task` (replacing any it had); initialised from `seed`, global RNG untouched."""
        self._check_open()
        check_task_name(task)
        was_active = self.active == task
        if task in self._configs:
            self.remove(task)
        layers = top_layers(config.layers, self.backbone.num_layers, self.backbone.name)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self._kind(config.kind).add(task, config, layers)
        self._configs[task] = config
        self.activate(task if was_active else self.active)  # peft activates new adapters; undo that

    def remove(self, task: str) -> None:
        """Drop the task's adapter; wrappers left with no task are taken out, restoring the original modules."""
        self._check_open()
        config = self.config(task)
        if self.active == task:
            self._switch.task = None
        del self._configs[task]
        self._kind(config.kind).remove(task)
        self.activate(self.active)

    @property
    def closed(self) -> bool:
        """True once closed, or taken over by a newer AdapterSet on the same backbone (e.g. by training)."""
        return self._closed

    def close(self) -> None:
        """Remove every adapter and release the backbone; the set is unusable afterwards."""
        if self._closed:
            return
        for task in self.tasks():
            self.remove(task)
        self.trunk.clear()
        self.backbone.detach_adapter_set(self)
        self._closed = True

    def _kind(self, kind: str) -> LoraAdapters | BottleneckAdapters:
        return self._lora if kind == "lora" else self._bottleneck

    # -- switching -----------------------------------------------------------------------------------------

    def activate(self, task: str | None) -> None:
        """Make `task` the only adapter in effect (None: the plain backbone) and the only one with gradients."""
        self._check_open()
        if task is not None:
            self.config(task)
        self._bottleneck.activate(task)
        self._lora.activate(task)
        self._sync_modes()

    @contextmanager
    def using(self, task: str | None) -> Iterator[AdapterSet]:
        """Activate `task` for the block, then restore whichever was active before."""
        previous = self.active
        self.activate(task)
        try:
            yield self
        finally:
            self.activate(previous if previous is None or previous in self._configs else None)

    def train(self, mode: bool = True) -> AdapterSet:
        """Adapter dropout on (mode=True) or off; the backbone itself always stays in eval mode."""
        self._training = mode
        self._sync_modes()
        return self

    def _sync_modes(self) -> None:
        # peft flips requires_grad when adapters are added or switched; re-impose "only the active task".
        for task in self._configs:
            for param in self._named_parameters(task).values():
                param.requires_grad_(task == self.active)
        for module in self.backbone.model.modules():
            if _is_wrapper(module):  # new modules start in train mode: wrappers follow the backbone, adapters the set
                module.training = module.base_layer.training
                for name, child in module.named_children():
                    if name != "base_layer":
                        child.train(self._training)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"this AdapterSet was closed (a newer AdapterSet took over backbone {self.backbone.name!r})"
            )

    # -- parameters and state ------------------------------------------------------------------------------

    def _named_parameters(self, task: str) -> dict[str, nn.Parameter]:
        """The task's tensors, named by module path with the task key left out (portable between task names)."""
        found: dict[str, nn.Parameter] = {}
        for module_name, module in self.backbone.model.named_modules():
            if not _is_wrapper(module):
                continue
            for container_name in module.adapter_layer_names:
                container = getattr(module, container_name, None)
                if container is None or task not in container:
                    continue
                prefix = f"{module_name}.{container_name}"
                item = container[task]
                if isinstance(item, nn.Parameter):
                    found[prefix] = item
                else:
                    found.update({f"{prefix}.{n}": p for n, p in item.named_parameters()})
        return found

    def parameters(self, task: str) -> list[nn.Parameter]:
        """The task's trainable parameters; requires_grad is True on them only while the task is active."""
        self.config(task)
        return list(self._named_parameters(task).values())

    def num_parameters(self, task: str) -> int:
        return sum(p.numel() for p in self.parameters(task))

    def budget_report(self, task: str) -> dict:
        adapter, backbone = self.num_parameters(task), self.backbone.num_parameters
        return {
            "task": task,
            "kind": self.config(task).kind,
            "adapter_parameters": adapter,
            "backbone_parameters": backbone,
            "share": adapter / backbone,
            "within_budget": adapter <= BUDGET_SHARE * backbone,
        }

    def state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """A snapshot of only this task's adapter tensors: CPU, contiguous, detached copies."""
        self.config(task)
        return {n: p.detach().cpu().contiguous().clone() for n, p in self._named_parameters(task).items()}

    def load(self, task: str, config: AdapterConfig, state: dict[str, torch.Tensor]) -> None:
        """Install `config` for `task` with weights `state`; strict, and a failed load keeps the previous adapter."""
        was_active = self.active == task
        previous = (self._configs[task], self.state_dict(task)) if task in self._configs else None
        self.add(task, config)
        try:
            self._copy_in(task, state)
        except ValueError:
            self.remove(task)
            if previous is not None:
                self.add(task, previous[0])
                self._copy_in(task, previous[1])
                if was_active:
                    self.activate(task)
            raise

    def _copy_in(self, task: str, state: dict[str, torch.Tensor]) -> None:
        params = self._named_parameters(task)
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"adapter state for task {task!r} does not fit its config: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        wrong = [n for n, p in params.items() if tuple(state[n].shape) != tuple(p.shape)]
        if wrong:
            raise ValueError(f"adapter state for task {task!r} has wrong shapes for {wrong}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

    # -- running -------------------------------------------------------------------------------------------

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, output_all: bool = False
    ) -> torch.Tensor:
        """(B, T, H) last hidden state with the active adapter; output_all: (L+1, B, T, H), embeddings first.

        Decoders run their inner transformer (e.g. LlamaModel): final-norm hidden states, no LM head.
        """
        self._check_open()
        return forward.hidden_states(self, input_ids, attention_mask, output_all=output_all)

    def trunk_split(self) -> int:
        """How many lower layers the active adapter leaves untouched (their output can be cached)."""
        if self.active is None:
            return 0
        return self.split_for(self.active)

    def split_for(self, task: str | None) -> int:
        """Lower layers `task`'s adapter leaves untouched; the plain backbone (None) can be split anywhere."""
        if task is None:
            return self.backbone.num_layers
        top = self.config(task).layers
        return max(0, self.backbone.num_layers - top) if top else 0

    def shared_split(self, tasks: Sequence[str | None]) -> int:
        """Lower layers that none of `tasks` adapts: the trunk they can share (0: nothing to share)."""
        split = min((self.split_for(t) for t in tasks), default=0)
        return 0 if split >= self.backbone.num_layers else split

    def branched_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        rows: Mapping[str | None, Sequence[int]],
        *,
        share: bool = True,
        heads: Mapping[str | None, forward.Head] | None = None,
    ) -> dict[str | None, Any]:
        """One batch, several tasks: the frozen lower layers run once, then each task's top layers on its rows.

        See `forward.branched_states` (what `rows`, `share` and `heads` mean, and the shapes returned).
        """
        self._check_open()
        return forward.branched_states(self, input_ids, attention_mask, rows, share=share, heads=heads)

    def lm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, V) next-token logits with the active adapter; decoders only."""
        self._require_decoder("lm_logits")
        out = self.backbone.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits  # (B, T, V)

    def generate(self, **kwargs):
        """`model.generate` with the active adapter; decoders only. pad_token_id defaults to the tokenizer's."""
        self._require_decoder("generate")
        kwargs.setdefault("pad_token_id", self.backbone.tokenizer.pad_token_id)
        return self.backbone.model.generate(**kwargs)

    def _require_decoder(self, what: str) -> None:
        self._check_open()
        if self.backbone.family != "decoder":
            raise TypeError(f"{what} needs a decoder backbone; {self.backbone.name!r} is an encoder")
