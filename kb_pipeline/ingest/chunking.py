"""Split document text into token-bounded chunks, cutting at the most natural boundary available.

The text is tokenised once (fast tokenizer, char offsets) and all planning happens in token space:
structural boundaries found by regex in char space (headings, blank lines, line breaks, sentence ends)
are mapped onto token indices, so a chunk can be sized exactly and never cuts through a token.
A slice can tokenise a token or two differently from the same span inside the whole text (byte-level
BPE and metaspace tokens carry their leading space; a cut between WordPiece pieces turns "##ing" into
"ing"), so a planned chunk is re-tokenised on its own (in batches) and re-planned with a smaller budget
if it comes out too long. For BERT-style tokenizers a chunk bounded by whitespace on both sides is
provably tokenised exactly as inside the whole text, so its count is read off the whole-text offsets and
only the rare chunk cut inside an unbroken run is re-tokenised.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, islice
from operator import itemgetter, le
from typing import Any

__all__ = ["ChunkSpan", "chunk_text"]

_HEADING = re.compile(r"#{1,6}[ \t]")  # matched at a line's first non-blank character
_LINE_BREAK = re.compile(r"\n\s*")  # a newline plus following blank space; ends where the next line's text starts
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*[ \t]+(?=\S)")
_INITIALS = re.compile(r"[^\W\d_](?:\.[^\W\d_])*")  # "e", "e.g", "U.S": a period after these rarely ends a sentence
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "cf", "al", "approx", "fig", "dept", "inc", "ltd", "co"}
)
_NON_SPACE = re.compile(r"\S")
_VERIFY_BATCH = 64  # chunks re-tokenised per tokenizer call: amortises call overhead, bounds re-work on a miss
_BERT_WHITESPACE = frozenset(" \t\n\r")  # whitespace every BERT normaliser/pre-tokeniser splits at


@dataclass(frozen=True)
class ChunkSpan:
    ordinal: int  # 0..n-1
    text: str  # == source_text[char_start:char_end]
    char_start: int
    char_end: int
    token_count: int  # tokens of `text` without special tokens, <= max_tokens


CHARS_PER_TOKEN_LIMIT = 20  # default character bound of a chunk: this many characters per token of budget


def chunk_text(
    text: str, tokenizer: Any, *, max_tokens: int = 200, overlap_tokens: int = 40, max_chars: int | None = None
) -> list[ChunkSpan]:
    """Chunks of at most `max_tokens` tokens and `max_chars` characters covering every non-blank character.

    Cuts go, in order of preference, before a heading, at a blank line, at a line break, at a sentence
    end, between words, and only inside an unbroken run between tokens. Consecutive chunks share about
    `overlap_tokens` tokens (starting at a sentence/line/word start), except across a heading cut.
    The character bound (default CHARS_PER_TOKEN_LIMIT * max_tokens) matters when tokens are huge: a
    WordPiece tokenizer makes one [UNK] token of a whole 10 MB run without spaces. A single token longer
    than the bound is cut inside it, at whitespace if it has any, else anywhere.
    """
    if max_tokens < 16:
        raise ValueError(f"max_tokens must be >= 16, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens // 2:
        raise ValueError(f"overlap_tokens must be >= 0 and < max_tokens // 2 ({max_tokens // 2}), got {overlap_tokens}")
    max_chars = CHARS_PER_TOKEN_LIMIT * max_tokens if max_chars is None else max_chars
    if max_chars < 16:
        raise ValueError(f"max_chars must be >= 16, got {max_chars}")
    if not text.strip():
        return []
    chunks = _chunk_tokens(text, tokenizer, max_tokens, overlap_tokens, max_chars)
    if all(c.char_end - c.char_start <= max_chars for c in chunks):
        return chunks
    return _split_long_chunks(text, chunks, tokenizer, max_tokens, max_chars)


def _split_long_chunks(
    text: str, chunks: list[ChunkSpan], tokenizer: Any, max_tokens: int, max_chars: int
) -> list[ChunkSpan]:
    """Replace each chunk over `max_chars` (a token, or a run with no token boundary, that long) by pieces.

    Each piece of at most `max_chars` characters is chunked on its own, so its chunks are token-bounded too
    (a byte-level BPE turns a cut token into several), and its offsets are shifted back into `text`.
    """
    out: list[ChunkSpan] = []
    for chunk in chunks:
        if chunk.char_end - chunk.char_start <= max_chars:
            out.append(chunk)
            continue
        for lo, hi in _hard_pieces(text, chunk.char_start, chunk.char_end, max_chars):
            for sub in _chunk_tokens(text[lo:hi], tokenizer, max_tokens, 0, max_chars):
                out.append(ChunkSpan(0, sub.text, lo + sub.char_start, lo + sub.char_end, sub.token_count))
    return [ChunkSpan(i, c.text, c.char_start, c.char_end, c.token_count) for i, c in enumerate(out)]


def _hard_pieces(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """Consecutive non-blank spans of text[start:end], each at most max_chars, cut at the last whitespace in reach."""
    pos = start
    while pos < end:
        if text[pos].isspace():
            pos += 1
            continue
        stop = min(pos + max_chars, end)
        if stop < end:
            cut = next((i for i in range(stop, pos, -1) if text[i].isspace()), stop)
            stop = cut
        yield pos, stop
        pos = stop


def _chunk_tokens(text: str, tokenizer: Any, max_tokens: int, overlap_tokens: int, max_chars: int) -> list[ChunkSpan]:
    """The chunker proper: token-bounded chunks, at most max_chars long wherever a token boundary allows."""
    if not text.strip():
        return []
    layout = _Layout(text, tokenizer, max_tokens, overlap_tokens, max_chars)
    budgets: dict[int, int] = {}  # chunk start token -> reduced token budget after a re-tokenisation miss
    chunks: list[ChunkSpan] = []
    state = (0, 0)  # (first token of next chunk, first token not yet in any chunk)
    finished = False
    while not finished:
        plans = list(islice(layout.plan(*state, budgets), _VERIFY_BATCH))
        pieces = [layout.trimmed(start, end) for start, end, _, _ in plans]
        known = [layout.exact_count(s, e) for s, e in pieces]  # None: the slice must be re-tokenised
        count_iter = iter(_count_tokens(tokenizer, [text[s:e] for (s, e), n in zip(pieces, known) if n is None]))
        for (start, end, fresh, next_start), (char_start, char_end), count in zip(plans, pieces, known):
            if count is None:
                count = next(count_iter)
            if count > max_tokens:
                budget = min(budgets.get(start, max_tokens), end - start)
                if budget <= 1:
                    raise RuntimeError(f"a single token re-tokenises to {count} tokens; cannot fit {max_tokens}")
                budgets[start] = max(1, budget - (count - max_tokens))
                state = (start, fresh)
                break
            # Skip chunks with no text, or whose text lies inside the previous chunk (whitespace-only tail).
            if char_end > char_start and (not chunks or char_end > chunks[-1].char_end):
                chunks.append(ChunkSpan(len(chunks), text[char_start:char_end], char_start, char_end, count))
            state = (next_start, end)
            finished = end >= layout.n_tokens
    return chunks


def _count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Exact token counts of each text on its own; batched because per-call overhead dominates short texts."""
    if not texts:
        return []
    encoded = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
    )
    return [len(ids) for ids in encoded["input_ids"]]


def _splits_at_whitespace(tokenizer: Any) -> bool:
    """Whether a slice with whitespace (or the text's edge) on each side gets the whole text's tokens.

    That is, it tokenises on its own to exactly the tokens the whole text has inside it. True for
    BERT-style pipelines: BertNormalizer never looks across whitespace, BertPreTokenizer splits at every
    whitespace character, WordPiece sees one word at a time, and an added token (matched before all
    that) can neither contain whitespace nor, without lstrip/rstrip, swallow it. Not true for byte-level
    BPE or metaspace, where a word's first token depends on the space before it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)  # transformers fast tokenizers and ChunkTokenizer
    if backend is None:
        return False
    from tokenizers import models, normalizers, pre_tokenizers

    if not isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
        return False
    if not isinstance(backend.model, models.WordPiece):
        return False
    if backend.normalizer is not None and not isinstance(backend.normalizer, normalizers.BertNormalizer):
        return False
    return all(
        token.content and not token.lstrip and not token.rstrip and not any(c.isspace() for c in token.content)
        for token in backend.get_added_tokens_decoder().values()
    )


class _Layout:
    """The tokenised text and its ranked cut points, as token indices (a cut at i ends a chunk before token i)."""

    def __init__(self, text: str, tokenizer: Any, max_tokens: int, overlap_tokens: int, max_chars: int) -> None:
        self.text = text
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.overlap_tokens = overlap_tokens
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]
        self.n_tokens = len(offsets)
        self.starts = list(map(itemgetter(0), offsets))
        self.whitespace_exact = _splits_at_whitespace(tokenizer)
        # Running max of token ends: monotone even if a tokenizer reports overlapping pieces (byte fallback);
        # usually the ends already are, and checking that is 5x cheaper than the running max.
        ends = list(map(itemgetter(1), offsets))
        self.reach = ends if all(map(le, ends, islice(ends, 1, None))) else list(accumulate(ends, max))

        paragraphs, lines, heading_chars = _line_structure(text)
        heading_zones = _heading_zones(heading_chars, sorted(paragraphs + lines), len(text))
        # A cut strictly after a heading's start and up to its first following line would leave the
        # heading as a chunk's last line; those cuts are only a last resort.
        self.zones = [(self.token_at(h), self.token_at(q)) for h, q in heading_zones]
        self.zone_starts = [h for h, _ in self.zones]
        self.headings = self._cuts(heading_chars)
        self.levels = (self._cuts(paragraphs), self._cuts(lines), self._cuts(_sentence_starts(text)))

    def char_limit(self, start: int) -> int:
        """The end of the longest run of tokens from `start` spanning at most max_chars characters."""
        return max(start, bisect_right(self.reach, (self.starts[start] if start else 0) + self.max_chars))

    def token_at(self, char: int) -> int:
        """The first token ending after `char`: a cut there starts the next chunk at or just before `char`."""
        return bisect_right(self.reach, char)

    def cuttable(self, i: int) -> bool:
        return 0 < i < self.n_tokens and self.starts[i] >= self.reach[i - 1]

    def forbidden(self, i: int) -> bool:
        k = bisect_left(self.zone_starts, i) - 1
        return k >= 0 and i <= self.zones[k][1]

    def _cuts(self, chars: Iterable[int]) -> list[int]:
        tokens = dict.fromkeys(map(partial(bisect_right, self.reach), chars))  # token_at, without a call per char
        return [i for i in tokens if self.cuttable(i) and not self.forbidden(i)]

    def exact_count(self, char_start: int, char_end: int) -> int | None:
        """Tokens of text[char_start:char_end] on its own, when the whole-text offsets prove it; else None."""
        if char_end <= char_start:
            return 0
        if not self.whitespace_exact:
            return None
        text = self.text
        if char_start > 0 and text[char_start - 1] not in _BERT_WHITESPACE:
            return None
        if char_end < len(text) and text[char_end] not in _BERT_WHITESPACE:
            return None
        return bisect_left(self.starts, char_end) - bisect_left(self.starts, char_start)

    def trimmed(self, start: int, end: int) -> tuple[int, int]:
        """Char span of tokens [start, end), with surrounding whitespace removed."""
        lo = self.starts[start] if start else 0
        hi = self.starts[end] if end < self.n_tokens else len(self.text)
        segment = self.text[lo:hi]
        stripped = segment.strip()
        if not stripped:
            return lo, lo
        left = lo + len(segment) - len(segment.lstrip())
        return left, left + len(stripped)

    def plan(self, start: int, fresh: int, budgets: dict[int, int]) -> Iterator[tuple[int, int, int, int]]:
        """Yield (start, end, fresh, next_start) per chunk; tokens [start, fresh) repeat the previous chunk."""
        while True:
            budget = budgets.get(start, self.max_tokens)
            if start + budget <= fresh or self.char_limit(start) <= fresh:  # the overlap alone fills it: drop it
                start = fresh
                budget = min(budget, budgets.get(start, self.max_tokens))
            end = self._cut(start, fresh, max(min(start + budget, self.char_limit(start)), fresh + 1))
            # A new section starts clean: no overlap across a cut before a heading.
            k = bisect_left(self.zone_starts, end)
            at_heading = k < len(self.zone_starts) and self.zone_starts[k] == end
            next_start = end if at_heading else self._overlap_start(start, end)
            yield start, end, fresh, next_start
            if end >= self.n_tokens:
                return
            start, fresh = next_start, end

    def _cut(self, start: int, fresh: int, limit: int) -> int:
        """Where the chunk beginning at `start` (new text from `fresh`) ends, at most at `limit`."""
        # A heading ends the chunk once a quarter's worth of new text precedes it, even if the rest would fit.
        k = bisect_left(self.headings, fresh + max(1, self.max_tokens // 4))
        if k < len(self.headings) and self.headings[k] <= limit:
            return self.headings[k]
        if limit >= self.n_tokens:
            return self.n_tokens
        half = max(fresh + 1, start + (limit - start) // 2)
        for lo in (half, fresh + 1):  # prefer a chunk at least half full, then anything but a token split
            for cuts in self.levels:
                k = bisect_right(cuts, limit) - 1
                if k >= 0 and cuts[k] >= lo:
                    return cuts[k]
            word = self._scan(lo, limit, words_only=True)
            if word is not None:
                return word
        token = self._scan(fresh + 1, limit, words_only=False)
        if token is not None:
            return token
        # Only heading lines (and their zones) in reach: cutting before a heading beats cutting inside one.
        k = bisect_right(self.zone_starts, limit) - 1
        if k >= 0 and self.zone_starts[k] > fresh and self.cuttable(self.zone_starts[k]):
            return self.zone_starts[k]
        return next((i for i in range(limit, fresh, -1) if self.cuttable(i)), limit)

    def _scan(self, lo: int, hi: int, *, words_only: bool) -> int | None:
        """Latest allowed cut in [lo, hi] that starts a word (or any token boundary when not `words_only`)."""
        for i in range(hi, lo - 1, -1):
            if self.cuttable(i) and not self.forbidden(i) and (not words_only or self._word_start(i)):
                return i
        return None

    def _word_start(self, i: int) -> bool:
        s = self.starts[i]
        if s > self.reach[i - 1] or s == 0 or s >= len(self.text):
            return True
        return self.text[s - 1].isspace() or self.text[s].isspace()

    def _overlap_start(self, start: int, end: int) -> int:
        """Next chunk's start: ~`overlap_tokens` before `end`, snapped forward to a line/sentence/word start."""
        lo = max(end - self.overlap_tokens, start + 1)
        if self.overlap_tokens == 0 or lo >= end:
            return end
        k = bisect_left(self.headings, end) - 1
        if k >= 0 and self.headings[k] >= lo:  # the current section's heading is in reach: start there
            return self.headings[k]
        firsts = [cuts[j] for cuts in self.levels if (j := bisect_left(cuts, lo)) < len(cuts) and cuts[j] < end]
        cut = min(firsts) if firsts else self._first(lo, end, words_only=True)
        if cut is None:
            cut = self._first(lo, end, words_only=False)
        if cut is None:
            return end
        if self.forbidden(cut):  # just after a heading line: take the heading along
            heading = self.zones[bisect_left(self.zone_starts, cut) - 1][0]
            cut = heading if heading > start else cut
        # A start that only adds leading whitespace tokens would not move the chunk's text start forward.
        previous = _NON_SPACE.search(self.text, self.starts[start] if start else 0)
        current = _NON_SPACE.search(self.text, self.starts[cut])
        if previous is None or current is None or current.start() <= previous.start():
            return end
        return cut

    def _first(self, lo: int, hi: int, *, words_only: bool) -> int | None:
        for i in range(lo, hi):
            if self.cuttable(i) and (not words_only or self._word_start(i)):
                return i
        return None


def _line_structure(text: str) -> tuple[list[int], list[int], list[int]]:
    """Char positions where a paragraph (after a blank line), a plain line, and a heading line begin."""
    paragraphs: list[int] = []
    lines: list[int] = []
    first = _NON_SPACE.search(text)
    headings = [first.start()] if first and _HEADING.match(text, first.start()) else []
    for match in _LINE_BREAK.finditer(text):
        pos = match.end()
        if pos == len(text):
            break
        (paragraphs if match.group().count("\n") > 1 else lines).append(pos)
        if _HEADING.match(text, pos):
            headings.append(pos)
    return paragraphs, lines, headings


def _heading_zones(headings: list[int], line_starts: list[int], text_end: int) -> list[tuple[int, int]]:
    """(heading start, start of the next line) for each heading line."""
    zones = []
    for h in headings:
        k = bisect_right(line_starts, h)
        zones.append((h, line_starts[k] if k < len(line_starts) else text_end))
    return zones


def _sentence_starts(text: str) -> Iterator[int]:
    """Char positions where a sentence starts after '.', '!' or '?' and a space on the same line.

    Skips likely abbreviations ("e.g.", "Dr.", initials) and ends followed by a lowercase letter;
    decimals like 3.5 never match because a space must follow the terminator.
    """
    for match in _SENTENCE_END.finditer(text):
        pos = match.end()
        if text[pos].islower():
            continue
        if text[match.start()] == ".":
            before = text[max(0, match.start() - 12) : match.start()].split()
            word = before[-1].lstrip("([{\"'“‘") if before and not text[match.start() - 1].isspace() else ""
            if word and (_INITIALS.fullmatch(word) or word.lower() in _ABBREVIATIONS):
                continue
        yield pos
