"""The backbone's tokenizer for chunking, without importing torch or transformers.

Ingestion only needs token ids and character offsets. Loading `tokenizer.json` through the Rust
`tokenizers` library gives exactly what transformers' fast tokenizer gives (it wraps the same object)
while keeping `kb ingest` free of a multi-second torch/transformers import.

For BERT-style WordPiece tokenizers (MiniLM, the default backbone) plain-ASCII text takes a faster
route that gives the very same ids and offsets: the Rust pipeline spends ~1 µs per character on
normalisation and pre-tokenisation bookkeeping, which for ASCII reduces to "lower-case, split into
alphanumeric runs and single punctuation characters". Each distinct word is still split into
WordPiece pieces by the Rust model itself (and cached), so the vocabulary logic is never re-implemented.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from kb_pipeline.backbone.paths import resolve_backbone

# Text the ASCII route handles: printable ASCII plus the three whitespace controls BERT keeps.
# Any other control character is deleted by BertNormalizer (joining its neighbours), so it takes the Rust route.
_NOT_SIMPLE_ASCII = re.compile(r"[^\t\n\r\x20-\x7e]")
# BertPreTokenizer on ASCII: whitespace separates, every punctuation character is a word of its own.
# split() with this group gives [gap, word, gap, word, ..., gap] (re.split is ~2x faster than finditer).
_ASCII_WORDS = re.compile(r"([A-Za-z0-9]+|[^A-Za-z0-9 \t\n\r])")
_CACHE_LIMIT = 200_000  # distinct words remembered; cleared when full so memory stays bounded
_MAX_CACHED_WORD = 100  # longer words are rare ([UNK] past max_input_chars_per_word) and not worth keeping


class ChunkTokenizer:
    """Callable like a transformers fast tokenizer for the subset chunking uses."""

    def __init__(self, tokenizer) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self._ascii = _AsciiWordPiece.for_tokenizer(tokenizer)

    @property
    def backend_tokenizer(self):
        """The `tokenizers.Tokenizer` (same name as on transformers' fast tokenizers), for pipeline checks."""
        return self._tok

    def __call__(
        self, text: str | list[str], *, add_special_tokens: bool = True, return_offsets_mapping: bool = False, **_: Any
    ) -> dict[str, Any]:
        if isinstance(text, str):
            fast = self._ascii.encode(text) if self._ascii is not None and not add_special_tokens else None
            if fast is not None:
                ids, offsets = fast
            else:
                enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
                ids, offsets = enc.ids, enc.offsets
            out: dict[str, Any] = {"input_ids": ids}
            if return_offsets_mapping:
                out["offset_mapping"] = offsets
            return out
        encs = self._tok.encode_batch(list(text), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encs]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encs]
        return out


class _AsciiWordPiece:
    """Exact BertNormalizer + BertPreTokenizer + WordPiece encoding of printable-ASCII text.

    On such text the normaliser only lower-cases (accent stripping, CJK spacing and control-character
    removal have nothing to act on) and maps \\t \\n \\r to spaces, so offsets stay one-to-one; the
    pre-tokeniser yields alphanumeric runs and single ASCII punctuation characters. Text containing an
    added token (e.g. a literal "[SEP]", matched before normalisation) or anything else goes to Rust.
    """

    def __init__(self, tokenizer, lowercase: bool, added: list[str]) -> None:
        self._model = tokenizer.model
        self._lowercase = lowercase
        self._added = added  # lower-cased contents: a conservative, case-blind presence check
        self._cache: dict[str, tuple[tuple[int, int, int], ...]] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer) -> _AsciiWordPiece | None:
        """The ASCII route for a BERT-style tokenizer, or None when its pipeline is anything else."""
        from tokenizers import models, normalizers, pre_tokenizers

        normalizer = tokenizer.normalizer
        if not isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
            return None
        if not isinstance(tokenizer.model, models.WordPiece):
            return None
        if normalizer is not None and not isinstance(normalizer, normalizers.BertNormalizer):
            return None
        added = [token.content for token in tokenizer.get_added_tokens_decoder().values()]
        if not all(added):
            return None
        lowercase = bool(normalizer is not None and normalizer.lowercase)
        return cls(tokenizer, lowercase, [content.lower() for content in added])

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
        """(ids, char offsets) without special tokens, or None when `text` needs the full Rust pipeline."""
        if not text.isascii() or _NOT_SIMPLE_ASCII.search(text):
            return None
        lowered = text.lower()
        if any(content in lowered for content in self._added):
            return None
        parts = _ASCII_WORDS.split(lowered if self._lowercase else text)
        cache = self._cache
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        position = 0
        for gap, word in zip(parts[0::2], parts[1::2]):
            position += len(gap)
            pieces = cache.get(word) or self._pieces(word)
            if len(pieces) == 1:  # most words: skip the inner loop
                token_id, start, end = pieces[0]
                ids.append(token_id)
                offsets.append((position + start, position + end))
            else:
                for token_id, start, end in pieces:
                    ids.append(token_id)
                    offsets.append((position + start, position + end))
            position += len(word)
        return ids, offsets

    def _pieces(self, word: str) -> tuple[tuple[int, int, int], ...]:
        # WordPiece offsets are byte offsets within the word; for ASCII they are character offsets.
        pieces = tuple((token.id, *token.offsets) for token in self._model.tokenize(word))
        if len(word) <= _MAX_CACHED_WORD:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = pieces
        return pieces


@functools.lru_cache(maxsize=4)
def chunk_tokenizer(backbone: str = "minilm", models_dir: str | None = None):
    """tokenizer.json via `tokenizers` when the backbone folder has one, else transformers' tokenizer."""
    location = Path(resolve_backbone(backbone, Path(models_dir) if models_dir else None))
    if (location / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return ChunkTokenizer(Tokenizer.from_file(str(location / "tokenizer.json")))
    from kb_pipeline.backbone.loading import load_tokenizer

    return load_tokenizer(backbone, models_dir)
