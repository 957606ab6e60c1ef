"""Which documents are held out: a deterministic, stratified split by a hash of each relative path.

Within each gold category, documents are ordered by sha256("kb-eval:" + relative path) and the first
round(share * n) go to the test side (at least one document of each category stays in training). The
split depends only on the paths and labels, not on file order, machine or ingest ids, so re-running an
eval on the same corpus holds out the same documents. `test_glob` replaces all of this with an explicit
choice (fnmatch on the path relative to the corpus folder).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from kb_pipeline.evaluation.errors import EvalError
from kb_pipeline.training.datasets import split_fraction as hash_fraction

TEST_SHARE = 0.2
MIN_CATEGORY_DOCS = 8  # classify must still have train and validation documents after the test side is taken
MIN_CATEGORIES = 2


@dataclass(frozen=True)
class GoldDoc:
    """One document of the corpus as ingested into the scratch KB, with its gold labels."""

    doc_id: int
    uri: str  # path relative to the corpus folder
    title: str
    text: str
    category: str | None
    tags: tuple[str, ...]
    summary: str | None

    @property
    def labelled(self) -> bool:
        return bool(self.category or self.tags or self.summary)


def split_fraction(uri: str) -> float:
    """A number in [0, 1) fixed by the relative path alone (the training split's hash, salted apart)."""
    return hash_fraction(uri, salt="kb-eval")


def check_corpus(docs: Sequence[GoldDoc], source: Path) -> None:
    """Refuse a corpus too small to train and score a classifier on, naming the folder and the shortfall."""
    counts = Counter(d.category for d in docs if d.category)
    labelled = sum(counts.values())
    if labelled >= MIN_CATEGORY_DOCS and len(counts) >= MIN_CATEGORIES:
        return
    found = ", ".join(f"{c!r} ({n})" for c, n in sorted(counts.items())) or "none"
    raise EvalError(
        f"{source}: kb eval needs at least {MIN_CATEGORY_DOCS} documents with a `category` in their front matter, "
        f"across at least {MIN_CATEGORIES} categories; found {len(docs)} documents, {labelled} with a category "
        f"(categories: {found})"
    )


def choose_test(
    docs: Sequence[GoldDoc], share: float = TEST_SHARE, test_glob: str | None = None, source: Path | None = None
) -> set[int]:
    """Ids of the held-out documents; only labelled documents are ever held out."""
    where = f"{source}: " if source else ""
    if test_glob:
        chosen = {d.doc_id for d in docs if d.labelled and fnmatchcase(d.uri, test_glob)}
        if not chosen:
            raise EvalError(
                f"{where}--test-glob {test_glob!r} matches no labelled document "
                "(paths are relative to the corpus folder)"
            )
        train_categories = {d.category for d in docs if d.category and d.doc_id not in chosen}
        if len(train_categories) < MIN_CATEGORIES:
            raise EvalError(
                f"{where}--test-glob {test_glob!r} leaves {len(train_categories)} categories to train on; "
                f"at least {MIN_CATEGORIES} are needed"
            )
        return chosen
    if not 0.0 < share < 1.0:
        raise EvalError(f"the test share must be between 0 and 1, got {share}")
    strata: dict[str | None, list[GoldDoc]] = defaultdict(list)
    for d in docs:
        if d.labelled:
            strata[d.category].append(d)
    chosen: set[int] = set()
    for members in strata.values():
        members.sort(key=lambda d: (split_fraction(d.uri), d.uri))
        n_test = min(int(share * len(members) + 0.5), len(members) - 1)
        chosen.update(d.doc_id for d in members[:n_test])
    if not chosen:  # a tiny corpus: hold out the single lowest-hash document of a category with two or more
        pool = [d for members in strata.values() if len(members) >= 2 for d in members]
        if pool:
            chosen.add(min(pool, key=lambda d: (split_fraction(d.uri), d.uri)).doc_id)
    return chosen
