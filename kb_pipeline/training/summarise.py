"""Summarise adapter: extractive for encoder backbones, abstractive for decoder backbones.

An encoder cannot write text, so it learns which sentences to keep: each sentence is
labelled by a greedy ROUGE oracle against the gold summary and a SentenceScorer learns
those labels. A sentence is read in context (BERTSUM-style): the summarise adapter encodes
the document's chunks, exactly as embed encodes them, and a sentence's vector is the mean
of its tokens' states inside its chunk; so at enrichment time the summariser branches off
the chunk trunk the other tasks share. Versions trained before that (no "input" in their
config) encode each sentence on its own and keep doing so.
A decoder learns to write the summary after a fixed prompt, with the loss on summary
tokens only. Both are judged against the lead-sentences baseline, which is hard to beat
on documents that open with their point.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from kb_pipeline.backbone.heads import SentenceScorer, head_state, load_head, position_features, span_mean
from kb_pipeline.training import losses
from kb_pipeline.training.chunked import EncodedChunk, Slot, chunk_spans, encode_chunks, sentence_slots
from kb_pipeline.training.loop import TrainConfig, shuffled_batches, train_loop
from kb_pipeline.training.metrics import mean_rouge, rouge_n
from kb_pipeline.training.tasks import (
    InsufficientData,
    SummaryExample,
    TrainResult,
    count_parameters,
    fresh_adapter,
    pad_batch,
    pad_id,
    param_groups,
    pooled_in_batches,
    set_mode,
    token_limit,
    training_task,
)

TASK = "summarise"
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


def oracle_labels(spans: Sequence[Span], summary: str, max_sentences: int, max_words: int) -> list[int]:
    """Greedy oracle: add the sentence that most raises ROUGE-1 + ROUGE-2 F, until none helps or the budget is full."""
    chosen: list[int] = []
    best, words = 0.0, 0
    while len(chosen) < max_sentences:
        pick = None
        for i, span in enumerate(spans):
            n = len(span.text.split())
            if i in chosen or (chosen and words + n > max_words):
                continue
            text = " ".join(spans[j].text for j in sorted(chosen + [i]))
            score = rouge_n(text, summary, 1)["f"] + rouge_n(text, summary, 2)["f"]
            if score > best:
                best, pick = score, i
        if pick is None:
            break
        chosen.append(pick)
        words += len(spans[pick].text.split())
    return [int(i in chosen) for i in range(len(spans))]


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


class ChunkItem(NamedTuple):
    """One chunk of a training document and the scored sentences read in it."""

    ids: list[int]
    starts: list[int]
    ends: list[int]
    index: list[int]  # sentence index in the document
    count: int  # scored sentences in the document
    labels: list[int]


def encoded_document(tokenizer, text: str, chunks: Sequence[tuple[int, int]], max_length: int):
    """(chunks, their encodings): the stored chunk spans, or the text chunked now when it has none."""
    chunks = list(chunks) or chunk_spans(text, tokenizer, max_length)
    return chunks, encode_chunks(tokenizer, [text[a:b] for a, b in chunks], max_length)


def chunk_items(tokenizer, examples: Sequence[SummaryExample], max_length: int) -> list[ChunkItem]:
    items = []
    for e in examples:
        chunks, encoded = encoded_document(tokenizer, e.text, e.chunks, max_length)
        plan = plan_document(e.text, chunks, encoded)
        labels = oracle_labels(plan.spans, e.summary, MAX_SENTENCES, MAX_WORDS)
        for chunk, members in sorted(plan.by_chunk().items()):
            slots = [plan.slots[k] for k in members]
            items.append(
                ChunkItem(
                    encoded[chunk].ids, [s.start for s in slots], [s.end for s in slots],
                    [s.sentence for s in slots], len(plan.spans), [labels[s.sentence] for s in slots],
                )
            )
    return items


def slot_vectors(hidden: Tensor, rows: Sequence[int], slots: Sequence[Slot]) -> Tensor:
    """Sentence vectors (N, H): slot k read from row rows[k] of hidden (B, T, H)."""
    return span_mean(
        hidden,
        torch.tensor(list(rows), dtype=torch.long),
        torch.tensor([s.start for s in slots], dtype=torch.long),
        torch.tensor([s.end for s in slots], dtype=torch.long),
    )


def check_data(train: Sequence[SummaryExample], val: Sequence[SummaryExample]) -> None:
    usable = [e for e in train if e.text.strip() and e.summary.strip()]
    if len(usable) < 2:
        raise InsufficientData(f"summarise needs at least 2 training documents with a summary; found {len(usable)}")
    if not any(e.summary.strip() for e in val):
        raise InsufficientData("summarise needs validation documents with a summary to compare against; found 0")


def train_summarise(
    adapters,
    train: list[SummaryExample],
    val: list[SummaryExample],
    config,
    cfg: TrainConfig,
    on_step=None,
    max_new_tokens: int = 96,
) -> TrainResult:
    """Extractive (encoder) or abstractive (decoder) summariser; ROUGE-1/2/L against the lead baseline."""
    check_data(train, val)
    train = [e for e in train if e.text.strip() and e.summary.strip()]
    val = [e for e in val if e.summary.strip()]
    fresh_adapter(adapters, TASK, config, cfg.seed)
    torch.manual_seed(cfg.seed)
    if adapters.backbone.family == "decoder":
        settings = {"mode": "abstractive", "prompt": PROMPT, "max_new_tokens": max_new_tokens}
        summariser = Summariser(None, {**settings, "max_length": cfg.max_length})
        params, step, batches, select, validate = _abstractive(adapters, summariser, train, val, cfg)
    else:
        scorer = SentenceScorer(adapters.backbone.hidden_size)
        budget = {"max_sentences": MAX_SENTENCES, "max_words": MAX_WORDS, "threshold": 0.5}  # threshold: tuned below
        # "input": sentences are read in their chunk (see Summariser.reads_chunks)
        settings = {"mode": "extractive", "input": "chunks", "scorer": scorer.config(), **budget}
        summariser = Summariser(scorer, {**settings, "max_length": cfg.max_length})
        params, step, batches, select, validate = _extractive(adapters, summariser, train, val, cfg)

    with training_task(adapters, TASK):
        history = train_loop(params, step, batches, validate, select, cfg, on_step)
    if summariser.scorer is not None:
        summariser.tune_threshold(adapters, val)
    chunks = [e.chunks for e in val]
    metrics = mean_rouge(summariser.predict(adapters, [e.text for e in val], chunks=chunks), [e.summary for e in val])
    baseline = mean_rouge([lead_summary(e.text) for e in val], [e.summary for e in val])
    scorer = summariser.scorer
    return TrainResult(
        task=TASK,
        config=config,
        train_config=cfg,
        head_state=head_state(scorer) if scorer is not None else {},
        head_config=summariser.config,
        metrics=metrics,
        baseline=baseline,
        history=history,
        adapter_params=adapters.num_parameters(TASK),
        head_params=count_parameters(scorer),
        backbone_params=adapters.backbone.num_parameters,
        primary_metric="rougeL",
    )


def _extractive(adapters, summariser: "Summariser", train, val, cfg: TrainConfig):
    scorer = summariser.scorer
    tokenizer = adapters.backbone.tokenizer
    items = chunk_items(tokenizer, train, token_limit(adapters, cfg.max_length))
    labels = [y for it in items for y in it.labels]
    positives = sum(labels)
    # summary sentences are rare; weight them so the scorer does not learn "never"
    pos_weight = torch.tensor(min(20.0, max(1.0, (len(labels) - positives) / max(1, positives))))

    def step(batch: list[ChunkItem]) -> Tensor:
        set_mode(adapters, scorer, True)
        ids, mask = pad_batch([it.ids for it in batch], pad_id(tokenizer))  # (B, T)
        hidden = adapters.hidden_states(ids, mask)  # (B, T, H): chunk trunks come from the cache after epoch 1
        rows = [b for b, it in enumerate(batch) for _ in it.index]
        starts = torch.tensor([x for it in batch for x in it.starts])  # (N,)
        ends = torch.tensor([x for it in batch for x in it.ends])  # (N,)
        vectors = span_mean(hidden, torch.tensor(rows), starts, ends)  # (N, H)
        index = torch.tensor([i for it in batch for i in it.index])  # (N,)
        count = torch.tensor([it.count for it in batch for _ in it.index])  # (N,)
        logits = scorer(vectors, position_features(index, count))  # (N,)
        targets = torch.tensor([y for it in batch for y in it.labels], dtype=torch.float32)  # (N,)
        return losses.multilabel_bce(logits, targets, pos_weight)

    def validate() -> dict:
        set_mode(adapters, scorer, False)
        candidates = summariser.predict(adapters, [e.text for e in val], chunks=[e.chunks for e in val])
        return mean_rouge(candidates, [e.summary for e in val])

    batches = lambda epoch: shuffled_batches(items, cfg.batch_size, epoch, cfg.seed)  # noqa: E731
    return param_groups(adapters, TASK, scorer, cfg), step, batches, "rougeL", validate


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


def _abstractive(adapters, summariser: "Summariser", train, val, cfg: TrainConfig):
    tokenizer = adapters.backbone.tokenizer
    limit = token_limit(adapters, cfg.max_length)
    budget = summariser.summary_budget(limit)

    def lm_batch(batch: Sequence[SummaryExample]) -> Tensor:
        pairs = [prompt_and_target(tokenizer, e.text, e.summary, limit, budget) for e in batch]
        ids, mask = pad_batch([p + t for p, t in pairs], pad_id(tokenizer))  # (B, T)
        labels, _ = pad_batch([[-100] * len(p) + t for p, t in pairs], 0, fill_labels=True)  # (B, T)
        return losses.lm_loss(adapters.lm_logits(ids, mask), labels)

    def step(batch: list[SummaryExample]) -> Tensor:
        set_mode(adapters, None, True)
        return lm_batch(batch)

    def validate() -> dict:
        set_mode(adapters, None, False)
        # selecting on validation loss: generating every epoch would cost far more than it tells
        chunks = [val[i : i + cfg.batch_size] for i in range(0, len(val), cfg.batch_size)]
        loss = sum(float(lm_batch(c)) * len(c) for c in chunks) / len(val)
        return {"neg_val_loss": -loss}

    batches = lambda epoch: shuffled_batches(train, cfg.batch_size, epoch, cfg.seed)  # noqa: E731
    return param_groups(adapters, TASK, None, cfg), step, batches, "neg_val_loss", validate


@dataclass
class Summariser:
    """Turns documents into summaries with the `summarise` adapter; `scorer` is None for abstractive mode."""

    scorer: SentenceScorer | None
    config: dict

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor], config: dict) -> "Summariser":
        scorer = load_head(config["scorer"], state) if config["mode"] == "extractive" else None
        return cls(scorer, config)

    @classmethod
    def from_result(cls, result: TrainResult) -> "Summariser":
        return cls.from_tensors(result.head_state, result.head_config)

    def summary_budget(self, limit: int) -> int:
        return min(self.config.get("max_new_tokens", 96), max(8, limit // 3))

    @property
    def reads_chunks(self) -> bool:
        """Extractive, scoring sentences inside their chunks (shares the enrichment trunk); older versions: alone."""
        return self.config["mode"] == "extractive" and self.config.get("input") == "chunks"

    def predict(
        self,
        adapters,
        texts: Sequence[str],
        batch_size: int = 64,
        chunks: Sequence[Sequence[tuple[int, int]]] | None = None,
    ) -> list[str]:
        """One summary per text; chunks: each text's stored chunk spans (chunked here when missing or empty)."""
        with adapters.using(TASK), torch.no_grad():
            if self.reads_chunks:
                scored = self.chunk_probs(adapters, texts, chunks, batch_size)
                return [self.select(spans, probs, self.config.get("threshold", 0.5)) for spans, probs in scored]
            if self.config["mode"] == "extractive":
                return [self._extract(adapters, text, batch_size) for text in texts]
            return [self._generate(adapters, text) for text in texts]

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
        limit = token_limit(adapters, self.config["max_length"])
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
    def collect(hidden: Tensor, keys: Sequence[tuple[int, int]], plans: Sequence[DocPlan], out: list[dict]) -> None:
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
        return self.select(plan.spans, self.probs(plan, vectors), self.config.get("threshold", 0.5))

    def _extract(self, adapters, text: str, batch_size: int = 64, threshold: float | None = None) -> str:
        spans, probs = self.sentence_probs(adapters, text, batch_size)
        return self.select(spans, probs, self.config.get("threshold", 0.5) if threshold is None else threshold)

    def sentence_probs(self, adapters, text: str, batch_size: int = 64) -> tuple[list[Span], list[float]]:
        """Older versions: each sentence encoded on its own (active adapter must be `summarise`)."""
        spans = split_sentences(text)[:MAX_SCORED]
        if not spans:
            return [], []
        self.scorer.eval()
        vectors = pooled_in_batches(adapters, [s.text for s in spans], self.config["max_length"], "mean", batch_size)
        positions = position_features(torch.arange(len(spans)), torch.full((len(spans),), len(spans)))
        with torch.no_grad():
            return spans, torch.sigmoid(self.scorer(vectors, positions)).tolist()  # (N,)

    def select(self, spans: Sequence[Span], probs: Sequence[float], threshold: float) -> str:
        """Sentences at or above the threshold, best first, within the budget; never empty for a non-empty text."""
        order = sorted(range(len(spans)), key=lambda i: -probs[i])
        keep = [i for i in order if probs[i] >= threshold] or order[:1]
        keep = within_budget(keep, spans, self.config["max_sentences"], self.config["max_words"])
        return " ".join(spans[i].text for i in keep)

    def tune_threshold(self, adapters, val: Sequence[SummaryExample]) -> float:
        """Pick the keep-threshold with the best validation ROUGE-L (ties: closest to 0.5) and store it."""
        with adapters.using(TASK):
            if self.reads_chunks:
                probs = self.chunk_probs(adapters, [e.text for e in val], [e.chunks for e in val])
            else:
                probs = [self.sentence_probs(adapters, e.text) for e in val]
        scored = list(zip(probs, [e.summary for e in val]))
        best = (-1.0, 0.0, 0.5)
        for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            value = mean_rouge([self.select(sp, pr, t) for (sp, pr), _ in scored], [ref for _, ref in scored])["rougeL"]
            best = max(best, (value, -abs(t - 0.5), t))
        self.config["threshold"] = best[2]
        return best[2]

    def _generate(self, adapters, text: str) -> str:
        """Greedy decoding one document at a time (no left-padding subtleties; CPU batches gain little)."""
        tokenizer = adapters.backbone.tokenizer
        limit = token_limit(adapters, self.config["max_length"])
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
