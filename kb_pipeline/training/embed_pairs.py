"""Query/passage pairs for the embed adapter, mined from the KB itself, and the screening that keeps noise out.

A KB's own text offers three kinds of query for a passage: a person's summary of the document, a
section heading, and the document's title. Only the first is written as a query; headings and titles often
say nothing (file ids such as `doc-000123` or `IMG_2041`, one "Overview" heading in every document, titles that
differ only by a number). Training on such pairs teaches the adapter noise, and validating on them makes
the promotion gate judge noise, so every uninformative pair is flagged here with the reason, kept out of
training and validation, and counted per source (`accounting`). Flags that need the untuned model (no
word in common with the passage and no more similar to it than to random passages) are set in
`screen_by_similarity`, called by the trainer once the backbone is loaded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from kb_pipeline.store.schema import Chunk, Document, GoldLabel
from kb_pipeline.tasks.encoding import heading_and_section, model_input, strip_leading_heading
from kb_pipeline.training.base import Pair
from kb_pipeline.training.datasets import Split, _split

SOURCES = ("summary", "heading", "title")  # most trustworthy first: a summary is written as a query
SHARED_MIN_DOCS = 3  # a query given to this many documents cannot pick one of them
MIN_SECTION_WORDS = 8
DISTRACTORS_PER_SOURCE = 1000  # training passages added to each validation ranking (harder, steadier metric)
NULL_SAMPLE = 64  # random other-document passages per query for its similarity floor
NULL_QUANTILE = 0.9  # own passage must beat this share of random passages (when no word is shared)

# file-name prefixes and words that name no content
_FILE_WORDS = {
    "doc", "docs", "document", "img", "image", "file", "scan", "page", "pic", "dsc", "dscn", "photo", "untitled",
    "copy", "draft", "final", "new", "version", "rev", "tmp", "temp", "export", "report", "item", "note", "notes",
}
_STOP = {
    "the", "and", "for", "with", "from", "that", "this", "are", "was", "were", "has", "have", "how", "what", "who",
    "why", "when", "our", "your", "its", "into", "about", "not", "all", "any", "can", "will", "out", "one", "two",
}
_EXTENSION = re.compile(r"\.[a-z0-9]{1,5}$", re.I)
_HEXISH = re.compile(r"^(?=.*\d)[0-9a-f]{6,}$", re.I)  # hashes, uuid parts: hex with at least one digit
_TOKEN = re.compile(r"[0-9A-Za-z]+")
_WORD = re.compile(r"[a-z]{3,}")
_NUMBER = re.compile(r"\d+")


@dataclass
class MinedPair(Pair):
    """A pair with where its query came from and, if it is kept out, why (None = kept)."""

    source: str = "title"
    dropped: str | None = None
    distractor: bool = False  # a training passage that only fills validation rankings (its query is unused)
    screened: bool = False  # the similarity screen has run on it


# --------------------------------------------------------------------------- what makes a query uninformative


def is_id_like(query: str) -> bool:
    """A file id, not a description: `doc-000123`, `IMG_2041.jpg`, a uuid or hash, mostly digits, or no real word."""
    stem = _EXTENSION.sub("", query.strip())
    tokens = [t for t in _TOKEN.findall(stem) if not _HEXISH.match(t)]
    alnum = sum(len(t) for t in _TOKEN.findall(stem))
    if not alnum:
        return True
    digits = sum(c.isdigit() for c in stem)
    words = [w for t in tokens for w in _WORD.findall(t.lower()) if w not in _FILE_WORDS]
    return not words or digits / alnum >= 0.5


def template(query: str) -> str:
    """The query with numbers blanked: `Meeting notes 2024-03-01` and `Meeting notes 2024-03-08` share one."""
    return _NUMBER.sub("#", " ".join(query.lower().split()))


def content_words(text: str) -> set[str]:
    """Lower-case words of 3+ letters, minus a few stop words, cut to 5 letters (a crude stem: policy/policies)."""
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP}


def flag_static(pairs: Sequence[MinedPair]) -> None:
    """Flag what the text alone shows to be noise: id-like titles, shared and templated queries, duplicates.

    Sharing is counted over every document of the KB (training and validation alike): a heading that
    opens a section in many documents is no query for any one of them.
    """
    docs_by_query: dict[str, set[str]] = {}
    docs_by_template: dict[str, set[str]] = {}
    for p in pairs:
        if p.distractor:
            continue
        docs_by_query.setdefault(" ".join(p.query.lower().split()), set()).add(p.doc_key)
        docs_by_template.setdefault(template(p.query), set()).add(p.doc_key)
    seen: set[tuple[str, str]] = set()
    for p in pairs:
        if p.distractor or p.dropped:
            continue
        norm = " ".join(p.query.lower().split())
        if (p.doc_key, norm) in seen:
            p.dropped = "duplicate query"  # e.g. a title equal to the summary: the summary pair already has it
        elif p.source != "summary" and is_id_like(p.query):
            p.dropped = "id-like"
        elif len(docs_by_query[norm]) >= SHARED_MIN_DOCS:
            p.dropped = "shared"
        elif _NUMBER.search(p.query) and len(docs_by_template[template(p.query)]) >= SHARED_MIN_DOCS:
            p.dropped = "templated"
        seen.add((p.doc_key, norm))


def screen_by_similarity(pairs: Sequence[MinedPair], query_vecs: np.ndarray, passage_vecs: np.ndarray, seed: int = 0) -> None:
    """Flag kept pairs whose query shares no word with its passage and is no closer to it than to random ones.

    Vectors are the untuned backbone's, L2-normalised, row i for pairs[i]. The floor is relative: the
    NULL_QUANTILE of the query's cosine to NULL_SAMPLE passages of other documents, so it adapts to
    each backbone's (and each query's) similarity scale rather than being a magic absolute number.
    """
    rng = np.random.default_rng(seed)
    docs = np.array([p.doc_key for p in pairs])
    for i, p in enumerate(pairs):
        if p.distractor or p.dropped or p.screened:
            continue
        p.screened = True
        if content_words(p.query) & content_words(p.passage):
            continue
        others = np.flatnonzero(docs != p.doc_key)
        if not len(others):
            continue
        sample = rng.choice(others, size=min(NULL_SAMPLE, len(others)), replace=False)
        floor = np.quantile(passage_vecs[sample] @ query_vecs[i], NULL_QUANTILE)
        if float(query_vecs[i] @ passage_vecs[i]) <= floor:
            p.dropped = "no overlap, low similarity"


def as_mined(pairs: Iterable[Pair]) -> list[MinedPair]:
    """Pairs built elsewhere (benchmarks, tests) as MinedPairs: a plain Pair counts as a written query (a summary)."""
    return [p if isinstance(p, MinedPair) else MinedPair(p.query, p.passage, p.doc_key, source="summary") for p in pairs]


def kept(pairs: Iterable[MinedPair]) -> list[MinedPair]:
    return [p for p in pairs if not p.distractor and not p.dropped]


def accounting(train: Sequence[MinedPair], val: Sequence[MinedPair]) -> dict:
    """Per source: pairs mined, kept (training / validation) and dropped, with the count of each reason."""
    out = {}
    for source in SOURCES:
        mine = [p for p in (*train, *val) if p.source == source and not p.distractor]
        reasons = Counter(p.dropped for p in mine if p.dropped)
        out[source] = {
            "mined": len(mine),
            "kept": len(mine) - sum(reasons.values()),
            "kept_train": sum(1 for p in train if p.source == source and not p.distractor and not p.dropped),
            "kept_val": sum(1 for p in val if p.source == source and not p.distractor and not p.dropped),
            "dropped": dict(sorted(reasons.items())),
        }
    return out


def describe(counts: dict) -> str:
    """One line per run for logs: `summary 48/48 kept; title 0/240 kept (id-like 192, duplicate query 48)`."""
    parts = []
    for source, c in counts.items():
        if not c["mined"]:
            continue
        why = ", ".join(f"{reason} {n}" for reason, n in c["dropped"].items())
        parts.append(f"{source} {c['kept']}/{c['mined']} kept" + (f" ({why})" if why else ""))
    return "; ".join(parts) or "no pairs mined"


# --------------------------------------------------------------------------- mining from the database


def mine_document(key: str, title: str | None, text: str, summary: str | None, chunks: Sequence[str]) -> list[MinedPair]:
    """A document's pairs: (summary, document), (title, first chunk), (heading, section) for later chunks."""
    pairs = []
    if summary:  # the body without its title: a title that repeats the summary would make the pair trivial
        body = strip_leading_heading(text, title or "") or model_input(title or "", text)
        pairs.append(MinedPair(summary, body, key, source="summary"))
    if title and chunks:
        first = strip_leading_heading(chunks[0], title)
        if first:
            pairs.append(MinedPair(title, first, key, source="title"))
    for chunk in chunks[1:]:
        heading, section = heading_and_section(chunk)
        if heading and len(section.split()) >= MIN_SECTION_WORDS:
            pairs.append(MinedPair(heading, section, key, source="heading"))
    return pairs


def distractors(train: Sequence[MinedPair], limit: int = DISTRACTORS_PER_SOURCE) -> list[MinedPair]:
    """Training passages of each source (whatever their query's quality), to rank validation queries among."""
    out: list[MinedPair] = []
    for source in SOURCES:
        passages = list(dict.fromkeys((p.passage, p.doc_key) for p in train if p.source == source))[:limit]
        out += [MinedPair("", passage, doc, source=source, distractor=True) for passage, doc in passages]
    return out


def data(session: Session) -> Split[MinedPair]:
    """Every active document's pairs, split by document; flagged, and validation padded with distractors."""
    docs = session.execute(
        select(Document.id, Document.title, Document.text, GoldLabel.summary)
        .outerjoin(GoldLabel, GoldLabel.document_id == Document.id)
        .where(Document.status == "active")
        .order_by(Document.id)
    ).all()
    chunks: dict[int, list[str]] = {}
    for doc_id, text in session.execute(
        select(Chunk.document_id, Chunk.text).join(Document).where(Document.status == "active").order_by(
            Chunk.document_id, Chunk.ordinal
        )
    ):
        chunks.setdefault(doc_id, []).append(text)
    pairs = {}
    for doc_id, title, text, summary in docs:
        doc_pairs = mine_document(str(doc_id), title, text, summary, chunks.get(doc_id, []))
        if doc_pairs:
            pairs[doc_id] = doc_pairs
    split = _split(pairs, session)
    split.train = [p for group in split.train for p in group]
    split.val = [p for group in split.val for p in group]
    flag_static([*split.train, *split.val])
    split.val += distractors(split.train)
    return split
