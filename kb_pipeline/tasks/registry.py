"""The registered tasks, by name: everything that trains, enriches or reports iterates over TASKS.

Adding a task: write tasks/<name>.py with a SPEC (and its trainer in training/<name>.py), add it below.
"""

from __future__ import annotations

from pathlib import Path

from kb_pipeline.backbone.adapter_files import load_adapter
from kb_pipeline.errors import UsageError
from kb_pipeline.tasks import classify, embed, summarise
from kb_pipeline.tasks.spec import HEAD_FORMAT, DocumentPredictor, StaleAdapter, TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (classify.SPEC, embed.SPEC, summarise.SPEC)}


class UnknownTask(UsageError, ValueError):
    """A task name that no registered spec has."""


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTask(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def load_task(adapters, spec: TaskSpec, folder: str | Path, version_id: int | None = None) -> DocumentPredictor | None:
    """Install a saved version's adapter under the task's name and rebuild its head (None: a task without one).

    A version saved before HEAD_FORMAT is refused with the command that replaces it.
    """
    _, head, meta = load_adapter(adapters, Path(folder), task=spec.name)
    if meta.get("head_format") != HEAD_FORMAT:
        which = f"version {version_id}" if version_id is not None else f"the adapter in {folder}"
        raise StaleAdapter(
            f"{spec.name} {which} was saved in an older format (head format {meta.get('head_format', 1)}, "
            f"this code reads {HEAD_FORMAT}); retrain it with `kb train {spec.name}`"
        )
    return spec.load(head, meta["head"])
