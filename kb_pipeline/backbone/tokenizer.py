"""The backbone's tokenizer for chunking, without importing torch or transformers.

Ingestion only needs token ids and character offsets. Loading `tokenizer.json` through the Rust
`tokenizers` library gives exactly what transformers' fast tokenizer gives (it wraps the same object)
while keeping `kb ingest` free of a multi-second torch/transformers import.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from kb_pipeline.backbone.paths import resolve_backbone


class ChunkTokenizer:
    """Callable like a transformers fast tokenizer for the subset chunking uses."""

    def __init__(self, tokenizer) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer

    def __call__(
        self, text: str | list[str], *, add_special_tokens: bool = True, return_offsets_mapping: bool = False, **_: Any
    ) -> dict[str, Any]:
        if isinstance(text, str):
            enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
            out: dict[str, Any] = {"input_ids": enc.ids}
            if return_offsets_mapping:
                out["offset_mapping"] = enc.offsets
            return out
        encs = self._tok.encode_batch(list(text), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encs]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encs]
        return out


@functools.lru_cache(maxsize=4)
def chunk_tokenizer(backbone: str = "minilm", models_dir: str | None = None):
    """tokenizer.json via `tokenizers` when the backbone folder has one, else transformers' tokenizer."""
    location = Path(resolve_backbone(backbone, Path(models_dir) if models_dir else None))
    if (location / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return ChunkTokenizer(Tokenizer.from_file(str(location / "tokenizer.json")))
    from kb_pipeline.backbone.loading import load_tokenizer

    return load_tokenizer(backbone, models_dir)
