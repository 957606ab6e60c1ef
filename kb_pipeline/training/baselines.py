"""The "majority" baselines, in one place and named for what they guess.

Training's classify gate and `kb eval` report different majority figures on purpose (kept as they were):
training guesses the category seen first among the most frequent ones and every tag on more than half
of the training documents; `kb eval` breaks category ties alphabetically and guesses the most frequent
exact tag set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def most_frequent_category(categories: Sequence[str], ties: str = "alphabetical") -> str:
    """The most common category; ties go to the alphabetically first ("alphabetical") or the first seen ("first")."""
    counts = Counter(categories)
    if ties == "first":
        return counts.most_common(1)[0][0]
    return min(counts, key=lambda c: (-counts[c], c))


def tags_on_most_documents(tagsets: Sequence[Iterable[str]], vocabulary: Iterable[str]) -> set[str]:
    """Every tag of the vocabulary that more than half of the documents carry."""
    sets = [set(tags) for tags in tagsets]
    return {t for t in vocabulary if sum(t in tags for tags in sets) * 2 > len(sets)}


def most_frequent_tagset(tagsets: Sequence[Sequence[str]]) -> frozenset[str]:
    """The most common exact set of tags (ties: the smaller, then sorted first); empty when there are none."""
    counts = Counter(frozenset(tags) for tags in tagsets)
    if not counts:
        return frozenset()
    return min(counts, key=lambda s: (-counts[s], len(s), sorted(s)))
