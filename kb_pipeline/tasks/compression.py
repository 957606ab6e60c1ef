"""Deletion-based compression of extracted sentences: keep the words a short human summary would keep.

Whole-sentence extraction is bounded against one-line summaries: a 30-word sentence scored against a
10-word reference loses most of its ROUGE precision. A word tagger (backbone/heads.WordTagger) reads each
word's token states inside its chunk (the same states the sentence scorer pools) and learns, from an
LCS alignment of the selected sentences to the gold summary, which words to keep, in order. The output
stays readable: whole words only, one contiguous phrase per sentence (the run of words the tagger most
wants to keep), and the full sentence whenever that phrase would be shorter than `min_words`.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from kb_pipeline.tasks.chunks import EncodedChunk, Slot
from kb_pipeline.tasks.plain_text import Span

MIN_WORDS = 5  # a compression shorter than this reads as a fragment: the whole sentence is kept instead
WordSlots = list[tuple[int, int]]  # per word of a sentence: its tokens [start, end) in the slot's chunk


def normalise(word: str) -> str:
    return re.sub(r"[^\w]+", "", word.lower())


def lcs_keep(words: Sequence[str], reference: str) -> list[int]:
    """1 for each word of `words` on a longest common subsequence with the reference's words, else 0."""
    a = [normalise(w) for w in words]
    b = [normalise(w) for w in reference.split()]
    b = [w for w in b if w]
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if a[i] and a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
    keep, i, j = [0] * n, 0, 0
    while i < n and j < m:
        if a[i] and a[i] == b[j]:
            keep[i], i, j = 1, i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return keep


def word_slots(span: Span, slot: Slot, chunk_start: int, encoded: EncodedChunk) -> WordSlots:
    """Each word's token range inside the chunk its sentence is read in ((0, 0) when it lies past a truncation)."""
    real = [i for i, (a, b) in enumerate(encoded.offsets) if b > a]
    starts = [encoded.offsets[i][0] for i in real]
    ends = [encoded.offsets[i][1] for i in real]
    out = []
    for word in span.words:
        lo, hi = word.start - chunk_start, word.end - chunk_start
        a, b = bisect_right(ends, lo), bisect_left(starts, hi)
        first, last = (real[a], real[b - 1] + 1) if b > a else (0, 0)
        out.append((max(first, slot.start), min(last, slot.end)) if last > first else (0, 0))
    return out


def compress(
    span: Span, probs: Sequence[float], threshold: float, min_words: int = MIN_WORDS, max_words: int | None = None
) -> str:
    """The sentence's best contiguous phrase: the run of at most max_words words maximising sum(p - threshold).

    One contiguous run of whole words reads as a phrase of the original ("the backup of volume 3 failed"),
    where keeping every word above the threshold reads as word salad. The whole sentence is kept when the
    phrase would be shorter than min_words (or the sentence's own length).
    """
    n = len(span.words)
    if not probs or len(probs) != n:
        return span.text
    gains = [p - threshold for p in probs]
    prefix = [0.0]
    for g in gains:
        prefix.append(prefix[-1] + g)
    longest = n if max_words is None else max(1, max_words)
    best, best_range = 0.0, None
    for end in range(1, n + 1):
        for start in range(max(0, end - longest), end):
            if prefix[end] - prefix[start] > best:
                best, best_range = prefix[end] - prefix[start], (start, end)
    if best_range is None or best_range[1] - best_range[0] < min(min_words, n):
        return span.text
    start, end = _trimmed(span.words, *_balanced(span.words, *best_range))
    if end - start < min(min_words, n):
        return span.text
    words = [w.text for w in span.words[start:end]]
    words[-1] = words[-1].rstrip(",;:")
    phrase = " ".join(w for w in words if w)
    phrase = phrase[:1].upper() + phrase[1:]
    if end < n and not phrase.endswith((".", "!", "?")):
        phrase += "…"  # says the sentence goes on; a cut-off phrase must not pass for a whole sentence
    return phrase


_OPEN, _CLOSE = "([{", ")]}"
# a phrase never ends on these ("incident, and…") nor starts on a conjunction: it would read as a broken sentence
_DANGLING = frozenset("a an and as at but by for from in of on or the that to which with".split())
_CONJUNCTIONS = frozenset("and but or".split())


def _bare(word) -> str:
    return word.text.strip(",;:.!?\"'()[]{}").lower()


def _trimmed(words, start: int, end: int) -> tuple[int, int]:
    """Drop a leading conjunction and trailing function words from the phrase [start, end)."""
    while start < end and _bare(words[start]) in _CONJUNCTIONS:
        start += 1
    while end > start and _bare(words[end - 1]) in _DANGLING:
        end -= 1
    return start, end


def _balanced(words, start: int, end: int) -> tuple[int, int]:
    """Shrink [start, end) so that no bracket is left open or closed without its partner ("(often a deploy")."""
    opened: list[int] = []
    for i in range(start, end):
        text = words[i].text
        for ch in text:
            if ch in _OPEN:
                opened.append(i)
            elif ch in _CLOSE:
                if opened:
                    opened.pop()
                else:
                    start, opened = i + 1, []  # a closing bracket whose opening was cut off: start after it
    if opened:
        end = opened[0]  # stop before the first bracket that never closes
    return start, max(start, end)
