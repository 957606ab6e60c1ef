"""Each registered task's trainer, found from its spec: the one place training meets the task registry.

A spec names its trainer by module, as an import would (".classify" -> kb_pipeline.training.classify, or
an absolute module for a task defined elsewhere), so kb_pipeline.tasks never imports training.
A trainer module provides:

    data(session) -> Split                      the labelled examples, split into train and validation
    check_data(train, val)                      raises InsufficientData naming what is missing
    train(adapters, train, val, adapter_config, train_config, on_step) -> TrainResult
    evaluate(adapters, folder, val, train_config, spec) -> metrics of a saved version (for the gate)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kb_pipeline.tasks.spec import TaskSpec

REQUIRED = ("data", "check_data", "train", "evaluate")


def trainer_for(spec: TaskSpec) -> ModuleType:
    """The trainer module of a task; raises if it lacks one of REQUIRED."""
    module = importlib.import_module(spec.trainer, package=__package__)
    name = module.__name__
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"trainer {name} of task {spec.name!r} lacks {', '.join(missing)}")
    return module
