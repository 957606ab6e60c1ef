"""Documents as their stored chunks: the one input all three tasks read, so a batch shares one trunk pass.

Embed encodes every chunk; classify pools a document's first chunks; the extractive summariser scores each
sentence from the token states of its span inside a chunk (chunk context, BERTSUM-style) instead of encoding
it alone. All of them tokenise a chunk the same way (`encode_chunks`, the same call `tasks.encode` makes),
so a chunk has one token-id sequence and therefore one frozen lower-layer output: computed once per
enrichment batch for every task, and cached once per text during training (backbone/trunk.py).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from kb_pipeline.backbone.heads import pool
from kb_pipeline.tasks.encoding import encode

# Chunks are at most KB_CHUNK_TOKENS (200) tokens plus the special tokens: 256 never truncates them.
CHUNK_MAX_LENGTH = 256
DEFAULT_CHUNK_TOKENS, DEFAULT_CHUNK_OVERLAP = 200, 40  # Settings' defaults, for text that was never ingested

CharSpan = tuple[int, int]  # (char_start, char_end) in the document text


class EncodedChunk(NamedTuple):
    ids: list[int]
    offsets: list[tuple[int, int]]  # char offsets inside the chunk text; (0, 0) for special tokens


class Slot(NamedTuple):
    """Where a sentence is read: tokens [start, end) of chunk `chunk` (an index into the document's chunks)."""

    sentence: int
    chunk: int
    start: int
    end: int


def encode_chunks(tokenizer, texts: Sequence[str], max_length: int) -> list[EncodedChunk]:
    """Token ids (truncated to max_length, with special tokens) and char offsets of each chunk text."""
    if not texts:
        return []
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    return [
        EncodedChunk(list(ids), [tuple(o) for o in offsets])
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])
    ]


def chunk_spans(
    text: str,
    tokenizer,
    max_length: int | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[CharSpan]:
    """Chunk a text the way ingestion does (for text that has no stored chunks); fits max_length if given."""
    from kb_pipeline.ingest.chunking import chunk_text

    size = chunk_tokens if max_length is None else max(16, min(chunk_tokens, max_length - 2))  # room for specials
    overlap = max(0, min(overlap, size // 2 - 1))
    return [(c.char_start, c.char_end) for c in chunk_text(text, tokenizer, max_tokens=size, overlap_tokens=overlap)]


class _Tokens:
    """Bisectable char offsets of a chunk's real (non-special) tokens."""

    def __init__(self, offsets: Sequence[tuple[int, int]]):
        self.positions = [i for i, (a, b) in enumerate(offsets) if b > a]
        self.starts = [offsets[i][0] for i in self.positions]
        self.ends = [offsets[i][1] for i in self.positions]

    def covering(self, lo: int, hi: int) -> tuple[int, int]:
        """Token positions [first, last) of the tokens overlapping chars [lo, hi); first == last if none."""
        a, b = bisect_right(self.ends, lo), bisect_left(self.starts, hi)
        if b <= a:
            return 0, 0
        return self.positions[a], self.positions[b - 1] + 1


def sentence_slots(
    sentences: Sequence[Sequence[int]], chunks: Sequence[CharSpan], encoded: Sequence[EncodedChunk]
) -> list[Slot]:
    """Each sentence (start, end, ...) read in the first chunk that holds it whole, else the one holding most of it.

    Sentences with no token in any chunk (text past a truncation) get no slot.
    """
    starts, ends = [c[0] for c in chunks], [c[1] for c in chunks]
    tokens: dict[int, _Tokens] = {}
    slots = []
    for i, sentence in enumerate(sentences):
        s, e = sentence[0], sentence[1]
        last_starting = bisect_right(starts, s) - 1  # chunks are ordered: starts and ends both increase
        first_ending = bisect_left(ends, e)
        if 0 <= first_ending <= last_starting:
            best = first_ending
        else:
            lo, hi = min(last_starting, first_ending), max(last_starting, first_ending)
            window = range(max(0, lo - 1), min(len(chunks), hi + 2))
            overlap, best = max(((min(e, ends[j]) - max(s, starts[j]), -j) for j in window), default=(0, 0))
            best = -best
            if overlap <= 0:
                continue
        if best not in tokens:
            tokens[best] = _Tokens(encoded[best].offsets)
        first, last = tokens[best].covering(s - starts[best], e - starts[best])
        if last > first:
            slots.append(Slot(i, best, first, last))
    return slots


def combine_chunks(vectors: Tensor, counts: Tensor, sizes: Sequence[int]) -> Tensor:
    """Token-weighted mean of consecutive groups of chunk vectors: (F, D), (F,), group sizes -> (G, D)."""
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes)))  # (F,)
    weights = counts.to(vectors.dtype)  # (F,)
    total = vectors.new_zeros((len(sizes), vectors.shape[1])).index_add(0, groups, vectors * weights[:, None])
    mass = weights.new_zeros(len(sizes)).index_add(0, groups, weights).clamp(min=1.0)
    return total / mass[:, None]  # (G, D)


def pooled_chunks(hidden: Tensor, mask: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """Per-chunk pooled vectors and real-token counts: (B, T, H), (B, T) -> (B, D), (B,)."""
    return pool(hidden, mask, method), mask.sum(dim=1)


# A long document's category is spread through it, not only in its opening: classify pools all its chunks,
# up to this cap (~10,000 tokens) so one huge file cannot make a batch unbounded.
CLASSIFY_CHUNKS = 64


def pooled_chunks_in_batches(
    adapters, texts: Sequence[str], max_length: int | None, method: str = "mean", batch_size: int = 32
) -> tuple[Tensor, Tensor]:
    """No-grad pooled vectors (N, D) and real-token counts (N,) of many chunk texts, with the active adapter.

    Batches are length-sorted (less padding); results come back in input order.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors, counts = [], []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            ids, mask = encode(adapters, [texts[i] for i in order[start : start + batch_size]], max_length)
            v, n = pooled_chunks(adapters.hidden_states(ids, mask), mask, method)
            vectors.append(v.float())
            counts.append(n)
    if not vectors:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    index = torch.tensor(order)
    v, n = torch.cat(vectors), torch.cat(counts)
    out_v, out_n = torch.empty_like(v), torch.empty_like(n)
    out_v[index], out_n[index] = v, n
    return out_v, out_n
