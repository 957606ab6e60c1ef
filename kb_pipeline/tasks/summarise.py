"""summarise: extractive for encoder backbones, abstractive for decoder backbones.

An encoder cannot write text, so it learns which sentences to keep (training/summarise.py labels them
with a greedy ROUGE oracle). A sentence is read in context (BERTSUM-style): the summarise adapter encodes
the document's chunks, exactly as embed encodes them, and a sentence's vector is the mean of its tokens'
states inside its chunk; so at enrichment time the summariser branches off the chunk trunk the other
tasks share; a small word tagger reading the same states may compress each chosen sentence to one phrase
(tasks/compression.py), when that scored higher on validation. A decoder writes a one-line summary after a
fixed prompt, in left-padded batches, within a length budget derived from the training summaries. Both are judged
against the lead-sentences baseline, which is hard to beat on documents that open with their point.
`split_sentences` is the one sentence splitter of summaries, their baselines and their oracle: it yields
plain prose sentences only (never headings, table rows or Markdown syntax; tasks/plain_text.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import Tensor

from kb_pipeline.backbone.heads import SentenceScorer, WordTagger, load_head, position_features, segment_mean, span_mean
from kb_pipeline.store import outputs
from kb_pipeline.store.schema import Document, GoldLabel
from kb_pipeline.tasks.chunks import CHUNK_MAX_LENGTH, EncodedChunk, Slot, chunk_spans, encode_chunks, sentence_slots
from kb_pipeline.tasks.compression import MIN_WORDS, WordSlots, compress, word_slots
from kb_pipeline.tasks.encoding import pad_batch, pad_id, token_limit
from kb_pipeline.tasks.plain_text import Span, candidate_sentences
from kb_pipeline.tasks.spec import DocInput, OutputStore, SavedConfig, TaskSpec, TrainConfig

NAME = "summarise"
MAX_SENTENCES, MAX_WORDS = 3, 60
MAX_SCORED = 128  # sentences considered per document; later ones are rarely summary material
PROMPT = "Write a one-line summary of the document.\n\nDocument:\n{text}\n\nOne-line summary:"

def split_sentences(text: str) -> list[Span]:
    """Candidate summary sentences: plain prose with char offsets in `text` (so callers can highlight them).

    Headings, table rows, code and metadata lines are never candidates; Markdown syntax is stripped
    from each sentence's text (tasks/plain_text.py).
    """
    return candidate_sentences(text)


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


def lead_words(text: str, n: int) -> str:
    """The first n words of the document's candidate sentences (the lead-N-words baseline)."""
    return " ".join(" ".join(s.text for s in split_sentences(text)).split()[: max(1, n)])


class DocPlan(NamedTuple):
    """A document's scored sentences, where each is read (sentences without a slot are never picked), and
    per slot the token range of each of its words in the same chunk (for the compressor)."""

    spans: list[Span]
    slots: list[Slot]
    words: list[WordSlots] = []

    def by_chunk(self) -> dict[int, list[int]]:
        """chunk index -> indices into `slots`, for the chunks that hold scored sentences."""
        out: dict[int, list[int]] = {}
        for k, slot in enumerate(self.slots):
            out.setdefault(slot.chunk, []).append(k)
        return out


def plan_document(text: str, chunks: Sequence[tuple[int, int]], encoded: Sequence[EncodedChunk]) -> DocPlan:
    spans = split_sentences(text)[:MAX_SCORED]
    slots = sentence_slots(spans, chunks, encoded)
    words = [word_slots(spans[s.sentence], s, chunks[s.chunk][0], encoded[s.chunk]) for s in slots]
    return DocPlan(spans, slots, words)


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


def prompt_and_target(tokenizer, text: str, summary: str | None, limit: int, summary_budget: int, prompt: str = PROMPT):
    """Token ids of the prompt (document truncated to fit) and of the target summary + eos (None at inference)."""
    head_text, _, tail_text = prompt.partition("{text}")
    head = tokenizer(head_text, add_special_tokens=True)["input_ids"]
    tail = tokenizer(tail_text, add_special_tokens=False)["input_ids"]
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
    """How a summariser was trained and reads: extractive (scorer, budget, tuned threshold, optional
    compression) or abstractive (prompt and length budget, both derived at training time)."""

    mode: str  # "extractive" (encoder backbones) or "abstractive" (decoder backbones)
    max_length: int = CHUNK_MAX_LENGTH
    scorer: dict | None = None  # the SentenceScorer's own config (extractive)
    max_sentences: int = MAX_SENTENCES  # tuned on validation ROUGE-L (extractive)
    max_words: int = MAX_WORDS  # abstractive: cut generated text to this many words
    threshold: float = 0.5  # tuned on validation ROUGE-L after training (extractive)
    input: str = "chunks"  # sentences are read inside their chunks
    prompt: str = PROMPT  # abstractive
    max_new_tokens: int = 96  # abstractive: derived from the gold summaries' length in training
    tagger: dict | None = None  # the WordTagger's config (extractive, trained with the scorer)
    compress: bool = False  # chosen on validation ROUGE-L: compress only where it beats whole sentences
    word_threshold: float = 0.5
    min_words: int = MIN_WORDS
    phrase_words: int | None = None  # longest compressed phrase, chosen on validation (None: no limit)


@dataclass
class Summary:
    """A document's summary: its sentences (extractive, possibly compressed) or generated text (abstractive)."""

    text: str


TAGGER = "tagger."  # prefix of the word tagger's tensors in the adapter's head state


@dataclass
class Summariser:
    """Turns documents into summaries with the `summarise` adapter; `scorer` is None for abstractive mode."""

    scorer: SentenceScorer | None
    config: SummariseConfig
    tagger: WordTagger | None = None

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor], config: dict | SummariseConfig) -> Summariser:
        config = config if isinstance(config, SummariseConfig) else SummariseConfig.from_dict(config)
        if config.mode != "extractive":
            return cls(None, config)
        scorer = load_head(config.scorer, {k: v for k, v in state.items() if not k.startswith(TAGGER)})
        tagger = load_head(config.tagger, state, prefix=TAGGER) if config.tagger else None
        return cls(scorer, config, tagger)

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

    def reads_words(self) -> bool:
        return self.tagger is not None and self.config.compress

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
                found = self.chunk_found(adapters, texts, chunks, batch_size)
                return [Summary(self.summary_from(plan, vectors)) for plan, vectors in found]
            return [Summary(text) for text in self.generate(adapters, texts, batch_size=min(batch_size, 16))]

    def chunk_found(
        self,
        adapters,
        texts: Sequence[str],
        chunks: Sequence[Sequence[tuple[int, int]]] | None = None,
        batch_size: int = 32,
        words: bool | None = None,
    ) -> list[tuple[DocPlan, dict]]:
        """Each document's plan and what `collect` found in it (sentence vectors; word keep-probabilities).

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
        found: list[dict] = [{} for _ in texts]  # per document: slot index -> (H,), ("words", slot) -> probs
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            ids, mask = pad_batch([ids for _, _, ids in batch], pad_id(tokenizer))
            with torch.no_grad():
                hidden = adapters.hidden_states(ids, mask)  # (B, T, H)
            self.collect(hidden, [(doc, chunk) for doc, chunk, _ in batch], plans, found, words)
        return list(zip(plans, found))

    def chunk_probs(self, adapters, texts, chunks=None, batch_size: int = 32) -> list[tuple[list[Span], list[float]]]:
        """Each scored sentence's probability of belonging in the summary, read inside its chunk."""
        return [(plan.spans, self.probs(plan, found)) for plan, found in self.chunk_found(adapters, texts, chunks, batch_size)]

    def collect(self, hidden: Tensor, keys: Sequence[tuple[int, int]], plans, out, words: bool | None = None) -> None:
        """Pool the sentence vectors of rows keys[b] = (document, chunk) of hidden (B, T, H) into out[document];
        with words (default: when compressing), also each word's keep-probability under out[document]["words", k]."""
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
        if words if words is not None else self.reads_words():
            for (doc, k), probs in zip(where, self.word_probs(hidden, rows, [plans[d].words[k] for d, k in where], pooled)):
                out[doc]["words", k] = probs

    def word_probs(self, hidden: Tensor, rows: Sequence[int], words: Sequence[WordSlots], sentences: Tensor) -> list[list[float]]:
        """Keep-probability of each word of each sentence n (its tokens in row rows[n]); 1.0 for a word without tokens."""
        flat = [(n, j, len(ws), a, b) for n, ws in enumerate(words) for j, (a, b) in enumerate(ws)]
        out = [[1.0] * len(ws) for ws in words]
        if not flat or self.tagger is None:
            return out
        n, j, count, a, b = (torch.tensor(col, dtype=torch.long) for col in zip(*flat))
        vectors = segment_mean(hidden, torch.tensor(list(rows), dtype=torch.long)[n], a, b).float()  # (M, H)
        self.tagger.eval()
        with torch.no_grad():
            p = torch.sigmoid(self.tagger(vectors, sentences[n], position_features(j, count))).tolist()
        for (s, w, _, lo, hi), value in zip(flat, p):
            if hi > lo:
                out[s][w] = value
        return out

    def probs(self, plan: DocPlan, vectors: dict) -> list[float]:
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

    def summary_from(self, plan: DocPlan, found: dict) -> str:
        """The extractive summary from what `collect` found in a document (the shared enrichment pass ends here)."""
        config = self.config
        return self.compose(plan, found, self.probs(plan, found), config.threshold, config.max_sentences,
                            config.word_threshold if self.reads_words() else None)

    def compose(self, plan: DocPlan, found: dict, probs: Sequence[float], threshold: float, max_sentences: int,
                word_threshold: float | None) -> str:
        """Chosen sentences in document order, each compressed when word_threshold is given."""
        chosen = self.choose(plan.spans, probs, threshold, max_sentences)
        if word_threshold is None:
            return " ".join(plan.spans[i].text for i in chosen)
        slot_of = {s.sentence: k for k, s in enumerate(plan.slots)}
        return " ".join(
            compress(plan.spans[i], found.get(("words", slot_of.get(i)), ()), word_threshold, self.config.min_words,
                     self.config.phrase_words)
            for i in chosen
        )

    def choose(self, spans: Sequence[Span], probs: Sequence[float], threshold: float, max_sentences: int) -> list[int]:
        """Sentences at or above the threshold, best first, within the budget; never empty for a non-empty text."""
        order = sorted(range(len(spans)), key=lambda i: -probs[i])
        keep = [i for i in order if probs[i] >= threshold] or order[:1]
        return within_budget(keep, spans, max_sentences, self.config.max_words)

    def select(self, spans: Sequence[Span], probs: Sequence[float], threshold: float) -> str:
        return " ".join(spans[i].text for i in self.choose(spans, probs, threshold, self.config.max_sentences))

    # --- abstractive (decoder backbones)
    def generate(self, adapters, texts: Sequence[str], batch_size: int = 16) -> list[str]:
        """Greedy summaries, length-sorted batches left-padded so every prompt ends where generation starts."""
        tokenizer = adapters.backbone.tokenizer
        limit = token_limit(adapters, self.config.max_length)
        budget = self.summary_budget(limit)
        prompts = [prompt_and_target(tokenizer, t, None, limit, budget, self.config.prompt)[0] for t in texts]
        out: list[str] = [""] * len(texts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), max(1, batch_size)):
            group = order[start : start + batch_size]
            ids, mask = left_pad([prompts[i] for i in group], pad_id(tokenizer))  # (B, T)
            generated = adapters.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False, pad_token_id=pad_id(tokenizer)
            )
            for row, i in enumerate(group):
                text = tokenizer.decode(generated[row, ids.shape[1] :], skip_special_tokens=True)
                out[i] = clip_words(text, self.config.max_words)
        return out


def left_pad(sequences: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """(B, T) ids and mask, padded on the left (a decoder continues each row from its last real token)."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def clip_words(text: str, max_words: int) -> str:
    """A generated summary's first line (a short summary is one line), at most max_words words."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return " ".join(line.split()[:max_words])


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
