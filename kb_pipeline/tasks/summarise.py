"""summarise: extractive for encoder backbones, abstractive for decoder backbones.

An encoder cannot write text, so it learns which sentences to keep (training/summarise.py labels them
with a greedy ROUGE oracle). A sentence is read in context (BERTSUM-style): the summarise adapter encodes
the document's chunks, exactly as embed encodes them, and a sentence's vector is the mean of its tokens'
states inside its chunk; so at enrichment time the summariser branches off the chunk trunk the other
tasks share. A decoder writes the summary after a fixed prompt, one document at a time. Both are judged
against the lead-sentences baseline, which is hard to beat on documents that open with their point.
`split_sentences` is the one sentence splitter of summaries, their baseline and their oracle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import Tensor

from kb_pipeline.backbone.heads import SentenceScorer, load_head, position_features, span_mean
from kb_pipeline.store import outputs
from kb_pipeline.store.schema import Document, GoldLabel
from kb_pipeline.tasks.chunks import CHUNK_MAX_LENGTH, EncodedChunk, Slot, chunk_spans, encode_chunks, sentence_slots
from kb_pipeline.tasks.encoding import pad_batch, pad_id, token_limit
from kb_pipeline.tasks.spec import DocInput, OutputStore, SavedConfig, TaskSpec, TrainConfig

NAME = "summarise"
MAX_SENTENCES, MAX_WORDS = 3, 60
MAX_SCORED = 128  # sentences considered per document; later ones are rarely summary material
PROMPT_HEAD, PROMPT_TAIL = "Summarise the document.\n\nDocument:\n", "\n\nSummary:"
PROMPT = PROMPT_HEAD + "{text}" + PROMPT_TAIL

# a sentence: starts at non-space, ends after .!? (+ closing quotes/brackets) before whitespace,
# or before a blank line / a bullet line, or at the end of the text
_SENTENCE = re.compile(
    r"\S.*?(?:[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|(?=[ \t]*\n[ \t]*\n)|(?=[ \t]*\n[ \t]*(?:[-*\u2022]|\d+[.)])\s)|\Z)",
    re.S,
)


class Span(NamedTuple):
    start: int
    end: int
    text: str


def split_sentences(text: str) -> list[Span]:
    """Sentences with their character offsets in `text` (so callers can highlight them)."""
    spans = []
    for match in _SENTENCE.finditer(text):
        start, end = match.start(), match.start() + len(match.group().rstrip())
        if end > start:
            spans.append(Span(start, end, text[start:end]))
    return spans


def within_budget(order: Sequence[int], spans: Sequence[Span], max_sentences: int, max_words: int) -> list[int]:
    """Take sentences in preference order while the budget allows; return them in document order."""
    chosen, words = [], 0
    for i in order:
        n = len(spans[i].text.split())
        if chosen and words + n > max_words:
            continue
        chosen.append(i)
        words += n
        if len(chosen) == max_sentences:
            break
    return sorted(chosen)


def lead_summary(text: str, max_sentences: int = MAX_SENTENCES, max_words: int = MAX_WORDS) -> str:
    spans = split_sentences(text)
    return " ".join(spans[i].text for i in within_budget(range(len(spans)), spans, max_sentences, max_words))


class DocPlan(NamedTuple):
    """A document's scored sentences and where each is read (sentences without a slot are never picked)."""

    spans: list[Span]
    slots: list[Slot]

    def by_chunk(self) -> dict[int, list[int]]:
        """chunk index -> indices into `slots`, for the chunks that hold scored sentences."""
        out: dict[int, list[int]] = {}
        for k, slot in enumerate(self.slots):
            out.setdefault(slot.chunk, []).append(k)
        return out


def plan_document(text: str, chunks: Sequence[tuple[int, int]], encoded: Sequence[EncodedChunk]) -> DocPlan:
    spans = split_sentences(text)[:MAX_SCORED]
    return DocPlan(spans, sentence_slots(spans, chunks, encoded))


def encoded_document(tokenizer, text: str, chunks: Sequence[tuple[int, int]], max_length: int):
    """(chunks, their encodings): the stored chunk spans, or the text chunked now when it has none."""
    chunks = list(chunks) or chunk_spans(text, tokenizer, max_length)
    return chunks, encode_chunks(tokenizer, [text[a:b] for a, b in chunks], max_length)


def slot_vectors(hidden: Tensor, rows: Sequence[int], slots: Sequence[Slot]) -> Tensor:
    """Sentence vectors (N, H): slot k read from row rows[k] of hidden (B, T, H)."""
    return span_mean(
        hidden,
        torch.tensor(list(rows), dtype=torch.long),
        torch.tensor([s.start for s in slots], dtype=torch.long),
        torch.tensor([s.end for s in slots], dtype=torch.long),
    )


def prompt_and_target(tokenizer, text: str, summary: str | None, limit: int, summary_budget: int):
    """Token ids of the prompt (document truncated to fit) and of the target summary + eos (None at inference)."""
    head = tokenizer(PROMPT_HEAD, add_special_tokens=True)["input_ids"]
    tail = tokenizer(PROMPT_TAIL, add_special_tokens=False)["input_ids"]
    target = None
    if summary is not None:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        words = tokenizer(" " + summary.strip(), add_special_tokens=False)["input_ids"]
        target = words[: summary_budget - len(eos)] + eos
    doc_budget = max(0, limit - len(head) - len(tail) - summary_budget)
    doc = tokenizer(text, add_special_tokens=False)["input_ids"][:doc_budget]
    return head + doc + tail, target


@dataclass
class SummariseConfig(SavedConfig):
    """How a summariser was trained and reads: extractive (scorer, budget, tuned threshold) or abstractive."""

    mode: str  # "extractive" (encoder backbones) or "abstractive" (decoder backbones)
    max_length: int = CHUNK_MAX_LENGTH
    scorer: dict | None = None  # the SentenceScorer's own config (extractive)
    max_sentences: int = MAX_SENTENCES
    max_words: int = MAX_WORDS
    threshold: float = 0.5  # tuned on validation ROUGE-L after training (extractive)
    input: str = "chunks"  # sentences are read inside their chunks
    prompt: str = PROMPT  # abstractive
    max_new_tokens: int = 96  # abstractive



@dataclass
class Summary:
    """A document's summary: its sentences (extractive) or generated text (abstractive)."""

    text: str


@dataclass
class Summariser:
    """Turns documents into summaries with the `summarise` adapter; `scorer` is None for abstractive mode."""

    scorer: SentenceScorer | None
    config: SummariseConfig

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor], config: dict | SummariseConfig) -> Summariser:
        config = config if isinstance(config, SummariseConfig) else SummariseConfig.from_dict(config)
        scorer = load_head(config.scorer, state) if config.mode == "extractive" else None
        return cls(scorer, config)

    @classmethod
    def from_result(cls, result) -> Summariser:
        return cls.from_tensors(result.head_state, result.head_config)

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def summary_budget(self, limit: int) -> int:
        return min(self.config.max_new_tokens, max(8, limit // 3))

    def shares_trunk(self) -> bool:
        """Extractive summarisers score sentences inside stored chunks; a decoder writes from the whole text."""
        return self.scorer is not None

    # --- the shared enrichment pass: chunks holding scored sentences -> sentence vectors -> scorer -> budget
    def plan(self, doc: DocInput, encoded: Sequence[EncodedChunk]) -> DocPlan:
        return plan_document(doc.text, [(c.start, c.end) for c in doc.chunks], encoded)

    def chunks_read(self, plan: DocPlan) -> list[int]:
        return sorted(plan.by_chunk())

    def read(self, hidden: Tensor, mask: Tensor, keys, plans, found: dict) -> None:
        for doc, _ in keys:
            found.setdefault(doc, {})
        self.collect(hidden, keys, plans, found)

    def finish(self, plans: dict[int, DocPlan], found: dict[int, dict]) -> dict[int, Summary]:
        return {d: Summary(self.summary_from(plan, found.get(d, {}))) for d, plan in plans.items()}

    def predict(
        self,
        adapters,
        texts: Sequence[str] | Sequence[DocInput],
        batch_size: int = 64,
        chunks: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> list[Summary]:
        """One Summary per document: DocInputs, or texts with their stored chunk spans (chunked here when missing)."""
        if texts and isinstance(texts[0], DocInput):
            chunks = [[(c.start, c.end) for c in doc.chunks] for doc in texts]
            texts = [doc.text for doc in texts]
        with adapters.using(NAME), torch.no_grad():
            if self.scorer is not None:
                scored = self.chunk_probs(adapters, texts, chunks, batch_size)
                return [Summary(self.select(spans, probs, self.config.threshold)) for spans, probs in scored]
            return [Summary(self._generate(adapters, text)) for text in texts]

    def chunk_probs(
        self,
        adapters,
        texts: Sequence[str],
        chunks: Sequence[Sequence[tuple[int, int]]] | None = None,
        batch_size: int = 32,
    ) -> list[tuple[list[Span], list[float]]]:
        """Each scored sentence's probability of belonging in the summary, read inside its chunk.

        The active adapter must be `summarise`. Chunks run in length-sorted batches through
        `hidden_states`, so during training their trunk comes from the cache.
        """
        tokenizer = adapters.backbone.tokenizer
        limit = token_limit(adapters, self.config.max_length)
        plans, rows = [], []  # rows: (document, chunk index, token ids) of chunks holding scored sentences
        for i, text in enumerate(texts):
            spans, encoded = encoded_document(tokenizer, text, chunks[i] if chunks is not None else (), limit)
            plan = plan_document(text, spans, encoded)
            plans.append(plan)
            rows += [(i, chunk, encoded[chunk].ids) for chunk in sorted(plan.by_chunk())]
        vectors: list[dict[int, Tensor]] = [{} for _ in texts]  # per document: slot index -> (H,)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            ids, mask = pad_batch([ids for _, _, ids in batch], pad_id(tokenizer))
            with torch.no_grad():
                hidden = adapters.hidden_states(ids, mask)  # (B, T, H)
            self.collect(hidden, [(doc, chunk) for doc, chunk, _ in batch], plans, vectors)
        return [(plan.spans, self.probs(plan, found)) for plan, found in zip(plans, vectors)]

    @staticmethod
    def collect(hidden: Tensor, keys: Sequence[tuple[int, int]], plans, out) -> None:
        """Pool the sentence vectors of rows keys[b] = (document, chunk) of hidden (B, T, H) into out[document]."""
        rows, slots, where = [], [], []
        groups = {doc: plans[doc].by_chunk() for doc, _ in keys}
        for b, (doc, chunk) in enumerate(keys):
            for k in groups[doc].get(chunk, ()):
                rows.append(b)
                slots.append(plans[doc].slots[k])
                where.append((doc, k))
        if not slots:
            return
        pooled = slot_vectors(hidden, rows, slots).float()  # (N, H)
        for (doc, k), vector in zip(where, pooled):
            out[doc][k] = vector

    def probs(self, plan: DocPlan, vectors: dict[int, Tensor]) -> list[float]:
        """Scorer probabilities of a document's sentences from its slot vectors; sentences without one get 0."""
        probs = [0.0] * len(plan.spans)
        if not plan.slots:
            return probs
        self.scorer.eval()
        index = torch.tensor([s.sentence for s in plan.slots])
        positions = position_features(index, torch.full((len(plan.slots),), len(plan.spans)))
        with torch.no_grad():
            p = torch.sigmoid(self.scorer(torch.stack([vectors[k] for k in range(len(plan.slots))]), positions))
        for slot, value in zip(plan.slots, p.tolist()):
            probs[slot.sentence] = value
        return probs

    def summary_from(self, plan: DocPlan, vectors: dict[int, Tensor]) -> str:
        """The extractive summary from a document's slot vectors (the shared enrichment pass ends here)."""
        return self.select(plan.spans, self.probs(plan, vectors), self.config.threshold)

    def select(self, spans: Sequence[Span], probs: Sequence[float], threshold: float) -> str:
        """Sentences at or above the threshold, best first, within the budget; never empty for a non-empty text."""
        order = sorted(range(len(spans)), key=lambda i: -probs[i])
        keep = [i for i in order if probs[i] >= threshold] or order[:1]
        keep = within_budget(keep, spans, self.config.max_sentences, self.config.max_words)
        return " ".join(spans[i].text for i in keep)

    def _generate(self, adapters, text: str) -> str:
        """Greedy decoding one document at a time (no left-padding subtleties; CPU batches gain little)."""
        tokenizer = adapters.backbone.tokenizer
        limit = token_limit(adapters, self.config.max_length)
        prompt, _ = prompt_and_target(tokenizer, text, None, limit, self.summary_budget(limit))
        ids = torch.tensor([prompt])  # (1, T)
        out = adapters.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=self.summary_budget(limit),
            do_sample=False,
            pad_token_id=pad_id(tokenizer),
        )
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def fingerprint_rows(session: Session) -> list[tuple]:
    """(document id, version, gold summary) of each active document with a gold summary."""
    query = select(Document.id, Document.version, GoldLabel.summary).join(
        GoldLabel, GoldLabel.document_id == Document.id
    ).where(Document.status == "active")
    return [(doc_id, version, summary) for doc_id, version, summary in session.execute(query) if summary]


def _needing(session: Session, version: int, ids: Sequence[int] | None) -> list[int]:
    return [d for d, *_ in outputs.docs_needing_summary(session, version, ids)]


def _save(session: Session, rows: Sequence[tuple[int, int, Summary]], version: int) -> None:
    outputs.save_summaries(
        session, [dict(document_id=d, document_version=v, summary=out.text) for d, v, out in rows], version
    )


SPEC = TaskSpec(
    name=NAME,
    trainer=".summarise",  # training/summarise (resolved by training/trainers.py)
    primary_metric="rougeL",
    baseline="the lead sentences within the same budget (3 sentences, 60 words)",
    # batches are chunks (~6 scored sentences each); in-context sentence states need a higher rate than
    # the old sentence-by-sentence scorer did (1e-3) to match its ROUGE
    default_train=TrainConfig(epochs=2, batch_size=16, max_length=CHUNK_MAX_LENGTH, lr=3e-3),
    fingerprint_rows=fingerprint_rows,
    load=Summariser.from_tensors,
    outputs=OutputStore(needing=_needing, save=_save),
)
