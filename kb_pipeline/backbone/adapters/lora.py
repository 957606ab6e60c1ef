"""LoRA task adapters through peft: one `PeftModel` around the backbone, one peft adapter per task name.

peft swaps its `lora.Linear` wrappers into the target modules; each keeps the original as `base_layer` and
the per-task tensors in dicts keyed by task, so the backbone's own weights never change.
"""

from __future__ import annotations

import warnings

from kb_pipeline.backbone.adapters.config import AdapterConfig
from kb_pipeline.backbone.loading import Backbone


def default_lora_targets(backbone: Backbone) -> tuple[str, ...]:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

    model_type = backbone.model.config.model_type
    if model_type in TARGETS:
        return tuple(TARGETS[model_type])
    return ("q_proj", "v_proj") if backbone.family == "decoder" else ("query", "value")


class LoraAdapters:
    """Every LoRA task on one backbone; the PeftModel exists while at least one task has a LoRA adapter."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.tasks: set[str] = set()
        self._peft = None  # peft.PeftModel around backbone.model, created with the first task

    def add(self, task: str, config: AdapterConfig, layers: list[int]) -> None:
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
        self.tasks.add(task)

    def remove(self, task: str) -> None:
        """Drop the task's adapter; with no LoRA task left, the original modules are back in place."""
        self.tasks.discard(task)
        if not self.tasks:
            self._unload()
            return
        with warnings.catch_warnings():  # "adapter X was active": the AdapterSet decides what is active
            warnings.filterwarnings("ignore", message="Adapter .* was active", category=UserWarning)
            self._peft.delete_adapter(task)

    def activate(self, task: str | None) -> None:
        """`task`'s LoRA in effect; any other task (or None) leaves every LoRA layer disabled."""
        if self._peft is None:
            return
        if task in self.tasks:
            self._peft.base_model.enable_adapter_layers()
            self._peft.set_adapter(task)
        else:
            self._peft.base_model.disable_adapter_layers()

    def _unload(self) -> None:
        """Swap every peft layer back for its base layer. Not peft's unload(): that also strips our bottlenecks."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        model = self.backbone.model
        for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]:
            parent_path, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, module.get_base_layer())
        if hasattr(model, "peft_config"):
            del model.peft_config
        self._peft = None
