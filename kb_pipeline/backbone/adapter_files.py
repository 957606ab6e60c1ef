"""Saving and loading one task's adapter (+ head tensors) as safetensors + JSON, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet

ADAPTER_FILE, META_FILE = "adapter.safetensors", "adapter.json"
FORMAT_VERSION = 1


def save_adapter(
    adapters: AdapterSet,
    task: str,
    folder: Path,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    meta: dict | None = None,
) -> Path:
    """Write adapter.safetensors ("adapter."/"head." prefixes) + adapter.json; atomic: temp folder, then rename."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {f"adapter.{n}": t for n, t in adapters.state_dict(task).items()}
    tensors.update({f"head.{n}": t.detach().cpu().contiguous().clone() for n, t in (extra_tensors or {}).items()})
    info = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "config": adapters.config(task).to_dict(),
        "backbone": {"name": adapters.backbone.name, "weights_hash": adapters.backbone.weights_hash},
        "meta": meta or {},
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    work.chmod(0o755)  # mkdtemp's 0700 would follow the folder into place
    try:
        save_file(tensors, str(work / ADAPTER_FILE), metadata={"format": "pt"})
        (work / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        if folder.exists():  # set the old one aside first: a directory cannot be renamed over a full one
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(work, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # already gone when the rename succeeded
    return folder


def load_adapter(
    adapters: AdapterSet, folder: Path, task: str | None = None
) -> tuple[AdapterConfig, dict[str, torch.Tensor], dict]:
    """Install a saved adapter (under its saved task name unless `task` is given).

    Returns (config, extra tensors with "head." stripped, meta). Refuses an adapter trained on another backbone.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    info = json.loads((folder / META_FILE).read_text())
    saved, ours = info["backbone"]["weights_hash"], adapters.backbone.weights_hash
    if saved != ours:
        raise ValueError(
            f"adapter in {folder} was trained on backbone {info['backbone']['name']!r} with weights_hash {saved}; "
            f"this backbone {adapters.backbone.name!r} has weights_hash {ours}"
        )
    tensors = load_file(str(folder / ADAPTER_FILE))
    state = {n.removeprefix("adapter."): t for n, t in tensors.items() if n.startswith("adapter.")}
    extra = {n.removeprefix("head."): t for n, t in tensors.items() if n.startswith("head.")}
    stray = sorted(n for n in tensors if not n.startswith(("adapter.", "head.")))
    if stray:
        raise ValueError(f"{folder / ADAPTER_FILE}: tensors outside the adapter./head. prefixes: {stray}")
    config = AdapterConfig.from_dict(info["config"])
    adapters.load(task or info["task"], config, state)
    return config, extra, info.get("meta", {})
