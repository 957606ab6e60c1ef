"""Tokenising and pooled forwards shared by every task's inference (and reused by training).

Causal tokenizers often lack a pad token and backbones have position limits; these helpers hide both,
so a task's `predict` only says which texts it reads and how it pools them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kb_pipeline.backbone.heads import pool

if TYPE_CHECKING:
    from kb_pipeline.backbone.adapters import AdapterSet

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")


def token_limit(adapters: AdapterSet, max_length: int | None) -> int:
    """Never exceed the backbone's own position limit, whatever the config asks."""
    limit = adapters.backbone.max_length
    return min(max_length, limit) if max_length else limit


def pad_id(tokenizer) -> int:
    """Causal tokenizers often have no pad token; padded positions are masked anyway, so eos (or 0) will do."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_batch(sequences: Sequence[Sequence[int]], pad: int, fill_labels: bool = False) -> tuple[Tensor, Tensor]:
    """Right-pad token lists: (B, T) ids (or labels padded with -100) and the (B, T) attention mask."""
    width = max(1, max(len(s) for s in sequences))
    fill = -100 if fill_labels else pad
    ids = torch.full((len(sequences), width), fill, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def encode(adapters: AdapterSet, texts: Sequence[str], max_length: int | None) -> tuple[Tensor, Tensor]:
    """Tokenise with the backbone's tokenizer, truncated, right-padded: (B, T) ids and mask."""
    tokenizer = adapters.backbone.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=token_limit(adapters, max_length))
    return pad_batch(encoded["input_ids"], pad_id(tokenizer))


def pooling_for(adapters: AdapterSet) -> str:
    """Encoders: mean of token vectors. Decoders: mean plus the last token, the only one that saw all the text."""
    return "mean+last" if adapters.backbone.family == "decoder" else "mean"


def pooled(adapters: AdapterSet, texts: Sequence[str], max_length: int | None, method: str = "mean") -> Tensor:
    """Backbone hidden states (with whatever adapter is active) pooled per text: (B, H) or (B, 2H)."""
    ids, mask = encode(adapters, texts, max_length)  # (B, T), (B, T)
    hidden = adapters.hidden_states(ids, mask)  # (B, T, H)
    return pool(hidden, mask, method)


def pooled_in_batches(
    adapters: AdapterSet, texts: Sequence[str], max_length: int | None, method: str = "mean", batch_size: int = 32
) -> Tensor:
    """`pooled` for many texts under no_grad; batches are length-sorted (less padding) and returned in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            chunks.append(pooled(adapters, chunk, max_length, method).float())
    if not chunks:
        return torch.zeros(0, 0)
    vectors = torch.cat(chunks)  # (N, H) in sorted order
    out = torch.empty_like(vectors)
    out[torch.tensor(order)] = vectors
    return out


def model_input(title: str, text: str) -> str:
    """A document as one text: its title, then its text (truncated by the tokenizer).

    The passage of (summary, document) embed pairs, what `kb eval`'s TF-IDF baseline reads, and what a
    classifier reads of a document that has no chunks.
    """
    body = strip_leading_heading(text, title)
    return f"{title}\n\n{body}" if title else body


def heading_and_section(text: str) -> tuple[str | None, str]:
    first, _, rest = text.partition("\n")
    match = HEADING.match(first)
    if not match:
        return None, text
    return match.group(2), rest.strip()


def strip_leading_heading(text: str, title: str) -> str:
    """Drop a first line that only repeats the title (it would make (title, chunk) pairs trivial)."""
    heading, rest = heading_and_section(text.lstrip())
    if heading is not None and heading.strip().lower() == title.strip().lower():
        return rest
    return text.strip()
