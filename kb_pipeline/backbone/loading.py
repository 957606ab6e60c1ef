"""Find and load the one backbone (tokenizer + frozen model) the whole process shares."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

# Path resolution lives in the torch-free `paths` module (light CLI commands use it); re-exported here.
from kb_pipeline.backbone.paths import PACKAGED_BACKBONES, BackboneError, minilm_path, resolve_backbone

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "PACKAGED_BACKBONES", "BackboneError", "Backbone", "backbone_from_model", "base_state_dict", "detect_family",
    "load_backbone", "load_tokenizer", "minilm_path", "resolve_backbone", "weights_hash",
]

MAX_LENGTH_CAP = 512  # longer windows cost quadratic attention for no gain on our chunk sizes
# Causal-LM families whose checkpoints may not say "CausalLM" in config.architectures.
DECODER_MODEL_TYPES = frozenset(
    {
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gpt2", "gpt_neo", "gpt_neox", "gptj",
        "phi", "phi3", "gemma", "gemma2", "gemma3_text", "falcon", "opt", "bloom", "olmo", "olmo2", "smollm3",
        "starcoder2", "granite", "stablelm", "cohere",
    }
)


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str = "minilm", models_dir: str | None = None):
    """The backbone's fast tokenizer (offsets are needed for chunking); cached per process."""
    from transformers import AutoTokenizer

    location = resolve_backbone(name, Path(models_dir) if models_dir else None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except OSError as exc:
        raise BackboneError(f"cannot load tokenizer for backbone {name!r} from {location}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise BackboneError(f"backbone {name!r} has no fast tokenizer; chunk offsets need one")
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    """Decoder tokenizers often ship without a pad token; batching needs one, and eos is the usual stand-in."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def detect_family(config, model: nn.Module | None = None) -> str:
    """'decoder' for causal LMs, else 'encoder'; decided from the config (and the model class when given)."""
    architectures = list(getattr(config, "architectures", None) or [])
    if model is not None:
        architectures.append(type(model).__name__)
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if causal or getattr(config, "is_decoder", False) or config.model_type in DECODER_MODEL_TYPES:
        return "decoder"
    return "encoder"


def _is_wrapper(module: nn.Module) -> bool:
    """peft tuner layers and our bottleneck layers: `base_layer` is the original module, the rest is adapter."""
    return isinstance(getattr(module, "base_layer", None), nn.Module) and hasattr(module, "adapter_layer_names")


def _base_tensors(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if _is_wrapper(module):  # see through the wrapper: same names as before it was installed
        yield from _base_tensors(module.base_layer, prefix)
        return
    for name, param in module._parameters.items():
        if param is not None:
            yield prefix + name, param
    for name, buffer in module._buffers.items():
        if buffer is not None and name not in module._non_persistent_buffers_set:
            yield prefix + name, buffer
    for name, child in module._modules.items():
        if child is not None:
            yield from _base_tensors(child, f"{prefix}{name}.")


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors under their original names, whatever adapters are installed (detached, not copied)."""
    return {name: tensor.detach() for name, tensor in _base_tensors(model)}


def weights_hash(model: nn.Module) -> str:
    """sha256 over the backbone tensors (name, dtype, shape, bytes) in sorted order; adapters are ignored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base_state_dict(model).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return digest.hexdigest()[:16]


def find_transformer_layers(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The first ModuleList with one entry per hidden layer (bert: encoder.layer; llama: model.layers)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and name:
            return name, module
    raise BackboneError(f"{type(model).__name__}: no ModuleList of {num_layers} transformer layers found")


@dataclass(eq=False)
class Backbone:
    """A frozen pretrained model plus what the adapters and heads need to know about it."""

    name: str
    family: str
    model: nn.Module = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    weights_hash: str
    num_layers: int
    hidden_size: int
    num_parameters: int
    max_length: int
    _adapter_set: object | None = field(default=None, init=False, repr=False)

    @property
    def adapter_set(self) -> object | None:
        """The AdapterSet installed on this backbone (at most one is live), or None."""
        return self._adapter_set

    def attach_adapter_set(self, adapter_set: object) -> None:
        """Record `adapter_set` as the live one; the caller has closed the previous one."""
        self._adapter_set = adapter_set

    def detach_adapter_set(self, adapter_set: object) -> None:
        """Forget `adapter_set` if it is still the live one (a newer set may have taken over)."""
        if self._adapter_set is adapter_set:
            self._adapter_set = None

    def transformer_layers(self) -> nn.ModuleList:
        return find_transformer_layers(self.model, self.num_layers)[1]

    def transformer_layers_path(self) -> str:
        """Dotted path of the layer stack; peft needs its last part to pick layers by index."""
        return find_transformer_layers(self.model, self.num_layers)[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's own tensors under their original names (adapter tensors excluded)."""
        return base_state_dict(self.model)

    def current_hash(self) -> str:
        """Recompute the weights hash now; equal to `weights_hash` unless the backbone weights changed."""
        return weights_hash(self.model)


def backbone_from_model(model: nn.Module, tokenizer, name: str = "custom") -> Backbone:
    """Wrap an already-built model: eval mode, every parameter frozen, hash computed once."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    config = model.config
    family = detect_family(config, model)
    if family == "decoder":
        ensure_pad_token(tokenizer)
        if getattr(config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id  # generate() warns without one
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers = int(text_config.num_hidden_layers)
    find_transformer_layers(model, num_layers)  # fail now rather than at adapter time
    limits = [MAX_LENGTH_CAP, int(getattr(tokenizer, "model_max_length", MAX_LENGTH_CAP) or MAX_LENGTH_CAP)]
    if getattr(text_config, "max_position_embeddings", None):
        limits.append(int(text_config.max_position_embeddings))
    return Backbone(
        name=name,
        family=family,
        model=model,
        tokenizer=tokenizer,
        weights_hash=weights_hash(model),
        num_layers=num_layers,
        hidden_size=int(text_config.hidden_size),
        num_parameters=sum(p.numel() for p in model.parameters()),
        max_length=min(limits),
    )


def load_backbone(name: str = "minilm", models_dir: Path | None = None) -> Backbone:
    """The shared frozen backbone; loaded once per (name, models_dir) per process."""
    folder = str(Path(models_dir).expanduser().resolve()) if models_dir is not None else None
    return _load_backbone(name, folder)


@functools.lru_cache(maxsize=4)
def _load_backbone(name: str, models_dir: str | None) -> Backbone:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars own stderr
    location = resolve_backbone(name, Path(models_dir) if models_dir else None)
    try:
        config = AutoConfig.from_pretrained(location)
        loader = AutoModelForCausalLM if detect_family(config) == "decoder" else AutoModel
        model = loader.from_pretrained(location, config=config)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load backbone {name!r} from {location}: {exc}") from exc
    return backbone_from_model(model, load_tokenizer(name, models_dir), name)
