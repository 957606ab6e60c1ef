"""Small per-task adapters (LoRA through peft, Houlsby bottlenecks) sharing one frozen backbone.

config.py: what an adapter is (plain data); lora.py and bottleneck.py: the two kinds, each wrapping single
modules of the backbone; adapter_set.py: every task's adapter on one backbone, keyed by task name.
"""

from kb_pipeline.backbone.adapters.adapter_set import BUDGET_SHARE, AdapterSet
from kb_pipeline.backbone.adapters.bottleneck import BottleneckAdapter, BottleneckLayer
from kb_pipeline.backbone.adapters.config import KINDS, AdapterConfig
from kb_pipeline.backbone.adapters.lora import default_lora_targets

__all__ = [
    "BUDGET_SHARE", "KINDS", "AdapterConfig", "AdapterSet", "BottleneckAdapter", "BottleneckLayer",
    "default_lora_targets",
]
