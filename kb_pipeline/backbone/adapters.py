"""Small per-task adapters (LoRA through peft, Houlsby bottlenecks) sharing one frozen backbone.

Both kinds install wrappers in the backbone module tree (peft's `lora.Linear`, our `BottleneckLayer`); each keeps
the original module as `base_layer` and its per-task tensors in dicts keyed by task, so the backbone's own tensors
(`Backbone.state_dict()`, `weights_hash`) are untouched and one task's training cannot reach another's weights.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from kb_pipeline.backbone.bottleneck import ACTIVATIONS, BottleneckAdapter, BottleneckLayer, _Switch
from kb_pipeline.backbone.loading import Backbone
from kb_pipeline.backbone.trunk import TrunkCache, lower_states, replaying, trunk_states

KINDS = ("lora", "bottleneck")
BUDGET_SHARE = 0.02  # an adapter larger than 2% of the backbone defeats the point of sharing it
# Where a layer's feed-forward output is, before its residual add (bert-likes first: their `mlp` does not exist).
FFN_PATHS = ("output.dense", "mlp", "ffn", "feed_forward")
TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # becomes a ModuleDict key: no dots


@dataclass(frozen=True)
class AdapterConfig:
    """Plain data describing one task's adapter; what gets saved next to its weights."""

    kind: str = "lora"  # "lora" | "bottleneck"
    layers: int | None = None  # adapt only the top N transformer layers; None = all
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # LoRA targets; None = peft's default for the model type
    bottleneck_size: int = 64
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"adapter kind {self.kind!r} is not one of {KINDS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {tuple(ACTIVATIONS)}")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers={self.layers}: adapt at least one layer, or None for all")
        if self.rank < 1 or self.bottleneck_size < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"invalid sizes in {self}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))  # lists from JSON

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown AdapterConfig keys: {unknown}")
        return cls(**d)


def _is_wrapper(module: nn.Module) -> bool:
    return isinstance(getattr(module, "base_layer", None), nn.Module) and hasattr(module, "adapter_layer_names")


def default_lora_targets(backbone: Backbone) -> tuple[str, ...]:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

    model_type = backbone.model.config.model_type
    if model_type in TARGETS:
        return tuple(TARGETS[model_type])
    return ("q_proj", "v_proj") if backbone.family == "decoder" else ("query", "value")


class AdapterSet:
    """All task adapters living on ONE backbone. Switching task never reloads or changes the backbone.

    Exactly the active task's adapter affects outputs, and only its parameters have requires_grad=True.
    A backbone carries at most one live set: creating another closes the previous one.
    """

    def __init__(self, backbone: Backbone):
        previous = backbone._adapter_set
        if isinstance(previous, AdapterSet):
            previous.close()
        self.backbone = backbone
        self._configs: dict[str, AdapterConfig] = {}
        self._switch = _Switch()
        self._peft = None  # peft.PeftModel around backbone.model, created with the first LoRA task
        self._training = False
        self._closed = False
        self.trunk = TrunkCache()  # frozen lower-layer outputs, shared by every task adapted above them
        backbone._adapter_set = self

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
        if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
            raise ValueError(f"task name {task!r} must match {TASK_NAME.pattern}")
        was_active = self.active == task
        if task in self._configs:
            self.remove(task)
        layers = self._layer_indices(config.layers)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if config.kind == "lora":
                self._add_lora(task, config, layers)
            else:
                self._add_bottleneck(task, config, layers)
        self._configs[task] = config
        self.activate(task if was_active else self.active)  # peft activates new adapters; undo that

    def remove(self, task: str) -> None:
        """Drop the task's adapter; wrappers left with no task are taken out, restoring the original modules."""
        self._check_open()
        config = self.config(task)
        if self.active == task:
            self._switch.task = None
        del self._configs[task]
        if config.kind == "lora":
            if any(c.kind == "lora" for c in self._configs.values()):
                with warnings.catch_warnings():  # "adapter X was active": our own switch decides what is active
                    warnings.filterwarnings("ignore", message="Adapter .* was active", category=UserWarning)
                    self._peft.delete_adapter(task)
            else:
                self._unload_lora()
        else:
            self._remove_bottleneck(task)
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
        if self.backbone._adapter_set is self:
            self.backbone._adapter_set = None
        self._closed = True

    def _layer_indices(self, top: int | None) -> list[int]:
        total = self.backbone.num_layers
        if top is None:
            return list(range(total))
        if top > total:
            raise ValueError(f"layers={top} but backbone {self.backbone.name!r} has {total}")
        return list(range(total - top, total))

    def _add_lora(self, task: str, config: AdapterConfig, layers: list[int]) -> None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules or default_lora_targets(self.backbone)),
            layers_to_transform=layers,  # always given: keeps LoRA inside the transformer stack
            layers_pattern=self.backbone.transformer_layers_path().rsplit(".", 1)[-1],
            bias="none",
        )
        if self._peft is None:
            self._peft = get_peft_model(self.backbone.model, lora, adapter_name=task)
        else:
            self._peft.add_adapter(task, lora)

    def _add_bottleneck(self, task: str, config: AdapterConfig, layers: list[int]) -> None:
        stack = self.backbone.transformer_layers()
        for index in layers:
            wrapper = self._bottleneck_layer(stack[index])
            ref = next(wrapper.base_layer.parameters())
            dtype = torch.float32 if ref.dtype in (torch.float16, torch.bfloat16) else ref.dtype  # train in fp32
            adapter = BottleneckAdapter(
                self.backbone.hidden_size, config.bottleneck_size, config.activation, config.dropout
            )
            wrapper.bottleneck[task] = adapter.to(device=ref.device, dtype=dtype)

    def _bottleneck_layer(self, layer: nn.Module) -> BottleneckLayer:
        """The layer's FFN wrapper, installing it on first use."""
        for path in FFN_PATHS:
            parent_path, _, attr = path.rpartition(".")
            try:
                parent = layer.get_submodule(parent_path)
            except AttributeError:
                continue
            module = getattr(parent, attr, None)
            if isinstance(module, BottleneckLayer):
                return module
            if isinstance(module, nn.Module):
                wrapper = BottleneckLayer(module, self._switch)
                setattr(parent, attr, wrapper)
                return wrapper
        raise ValueError(f"{type(layer).__name__} has no feed-forward module at any of {FFN_PATHS}")

    def _unload_lora(self) -> None:
        """Swap every peft layer back for its base layer. Not peft's unload(): that also strips our wrappers."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        model = self.backbone.model
        for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]:
            parent_path, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, module.get_base_layer())
        if hasattr(model, "peft_config"):
            del model.peft_config
        self._peft = None

    def _remove_bottleneck(self, task: str) -> None:
        model = self.backbone.model
        wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, BottleneckLayer)]
        for name, wrapper in wrappers:
            if task in wrapper.bottleneck:
                del wrapper.bottleneck[task]
            if len(wrapper.bottleneck) == 0:
                parent_path, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_path), attr, wrapper.base_layer)

    # -- switching -----------------------------------------------------------------------------------------

    def activate(self, task: str | None) -> None:
        """Make `task` the only adapter in effect (None: the plain backbone) and the only one with gradients."""
        self._check_open()
        if task is not None:
            self.config(task)
        self._switch.task = task  # bottleneck layers read this on every forward
        if self._peft is not None:
            if task is not None and self._configs[task].kind == "lora":
                self._peft.base_model.enable_adapter_layers()
                self._peft.set_adapter(task)
            else:
                self._peft.base_model.disable_adapter_layers()
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
        base = self.backbone.model.base_model  # bert: the model itself; causal LMs: the inner transformer
        extra = {"use_cache": False} if self.backbone.family == "decoder" else {}
        split = 0 if output_all else self.trunk_split()
        if split:
            layers = self.backbone.transformer_layers()
            states = trunk_states(base, layers, split, self.trunk, input_ids, attention_mask, **extra)
            with replaying(layers, split, states):
                return base(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        out = base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_all, **extra)
        if output_all:
            return torch.stack(out.hidden_states)  # (L+1, B, T, H)
        return out.last_hidden_state  # (B, T, H)

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
    ) -> dict[str | None, torch.Tensor]:
        """One batch, several tasks: the frozen lower layers run ONCE, then each task's top layers on its rows.

        input_ids, attention_mask: (B, T), right-padded. rows: task (None = the plain backbone) -> indices
        into the batch. Returns task -> (len(rows), T_task, H) last hidden states, T_task trimmed to the
        longest of the task's rows. Equal (up to float rounding) to each task's own `hidden_states` on those
        rows. share=False runs every task's full forward instead: the same outputs at the cost of separate
        passes (what benchmarks compare against). The trunk runs without gradient; the top layers follow the
        caller's grad mode. The previously active task is active again afterwards.
        """
        self._check_open()
        wanted = {task: list(r) for task, r in rows.items() if len(r)}
        if not wanted:
            return {}
        split = self.shared_split(list(wanted)) if share else 0
        base = self.backbone.model.base_model
        extra = {"use_cache": False} if self.backbone.family == "decoder" else {}
        layers = self.backbone.transformer_layers()
        if split:
            needed = sorted({r for task_rows in wanted.values() for r in task_rows})
            width = int(attention_mask[needed].sum(dim=1).max())
            trunk = lower_states(
                base, layers, split, input_ids[needed, :width], attention_mask[needed, :width], **extra
            )  # (N, W, H): the only lower-layer forward of this batch
            position = {row: i for i, row in enumerate(needed)}
        out: dict[str | None, torch.Tensor] = {}
        with self.using(self.active):  # restores the active task afterwards
            for task, task_rows in wanted.items():
                self.activate(task)
                mask = attention_mask[task_rows]
                width = int(mask.sum(dim=1).max())
                ids, mask = input_ids[task_rows, :width], mask[:, :width]
                if split:
                    states = trunk[[position[r] for r in task_rows], :width]  # (R, W, H)
                    with replaying(layers, split, states):
                        out[task] = base(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
                else:
                    out[task] = base(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        return out

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
