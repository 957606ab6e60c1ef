"""Training the summarise adapter (the task itself, and its inference: kb_pipeline/tasks/summarise.py).

Extractive (encoder backbones): each sentence is labelled by a greedy ROUGE oracle against the gold
summary and a SentenceScorer learns those labels, reading each sentence inside its chunk; a WordTagger
learns, on the oracle sentences, which words an LCS alignment with the gold summary keeps. The keep-threshold,
the sentence budget and whether to compress are then chosen on validation ROUGE-L. Abstractive
(decoder backbones): the adapter learns to write the summary after a fixed prompt, with the loss on
summary tokens only. Both are judged against the lead-sentences baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kb_pipeline.backbone.heads import SentenceScorer, WordTagger, head_state, position_features, segment_mean, span_mean
from kb_pipeline.tasks.compression import lcs_keep
from kb_pipeline.tasks.encoding import pad_batch, pad_id, token_limit
from kb_pipeline.tasks.registry import load_task
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.tasks.summarise import (
    MAX_SENTENCES,
    MAX_WORDS,
    NAME,
    PROMPT,
    TAGGER,
    Span,
    SummariseConfig,
    Summariser,
    encoded_document,
    lead_summary,
    plan_document,
    prompt_and_target,
)
from kb_pipeline.training import losses
from kb_pipeline.training.base import (
    InsufficientData,
    SummaryExample,
    TrainResult,
    count_parameters,
    fresh_adapter,
    param_groups,
    set_mode,
    training_task,
)
from kb_pipeline.training.datasets import summarise_data as data  # noqa: F401  (the trainer's data)
from kb_pipeline.training.loop import shuffled_batches, train_loop
from kb_pipeline.training.metrics import mean_rouge, rouge_n

TASK = NAME


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


class ChunkItem(NamedTuple):
    """One chunk of a training document, the scored sentences read in it, and the words of its summary sentences."""

    ids: list[int]
    starts: list[int]
    ends: list[int]
    index: list[int]  # sentence index in the document
    count: int  # scored sentences in the document
    labels: list[int]
    words: list[tuple[int, int, int, int, int, int]] = []  # (sentence k in this item, position, count, start, end, keep)


def word_labels(spans: Sequence[Span], labels: Sequence[int], summary: str) -> dict[int, list[int]]:
    """Keep-labels of the words of each oracle sentence: an LCS of their words, in order, with the summary's."""
    chosen = [i for i, y in enumerate(labels) if y]
    keep = lcs_keep([w.text for i in chosen for w in spans[i].words], summary)
    out, at = {}, 0
    for i in chosen:
        out[i] = keep[at : at + len(spans[i].words)]
        at += len(spans[i].words)
    return out


def chunk_items(tokenizer, examples: Sequence[SummaryExample], max_length: int) -> list[ChunkItem]:
    items = []
    for e in examples:
        chunks, encoded = encoded_document(tokenizer, e.text, e.chunks, max_length)
        plan = plan_document(e.text, chunks, encoded)
        labels = oracle_labels(plan.spans, e.summary, MAX_SENTENCES, MAX_WORDS)
        keep = word_labels(plan.spans, labels, e.summary)
        for chunk, members in sorted(plan.by_chunk().items()):
            slots = [plan.slots[k] for k in members]
            words = [
                (n, j, len(plan.words[k]), a, b, keep[plan.slots[k].sentence][j])
                for n, k in enumerate(members) if plan.slots[k].sentence in keep
                for j, (a, b) in enumerate(plan.words[k]) if b > a
            ]
            items.append(
                ChunkItem(
                    encoded[chunk].ids, [s.start for s in slots], [s.end for s in slots],
                    [s.sentence for s in slots], len(plan.spans), [labels[s.sentence] for s in slots], words,
                )
            )
    return items


def check_data(train: Sequence[SummaryExample], val: Sequence[SummaryExample]) -> None:
    usable = [e for e in train if e.text.strip() and e.summary.strip()]
    if len(usable) < 2:
        raise InsufficientData(f"summarise needs at least 2 training documents with a summary; found {len(usable)}")
    if not any(e.summary.strip() for e in val):
        raise InsufficientData("summarise needs validation documents with a summary to compare against; found 0")


def train(
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
    heads: nn.Module | None = None
    if adapters.backbone.family == "decoder":
        tokens, words = summary_length(adapters.backbone.tokenizer, train)
        config_ = SummariseConfig(
            "abstractive", cfg.max_length, prompt=PROMPT, max_new_tokens=min(max_new_tokens, tokens), max_words=words
        )
        summariser = Summariser(None, config_)
        params, step, batches, select, validate = _abstractive(adapters, summariser, train, val, cfg)
    else:
        scorer, tagger = SentenceScorer(adapters.backbone.hidden_size), WordTagger(adapters.backbone.hidden_size)
        config_ = SummariseConfig(  # threshold, sentence budget and compression: tuned below
            "extractive", cfg.max_length, scorer.config(), MAX_SENTENCES, MAX_WORDS, threshold=0.5, tagger=tagger.config()
        )
        summariser = Summariser(scorer, config_, tagger)
        heads = nn.ModuleList([scorer, tagger])
        params, step, batches, select, validate = _extractive(adapters, summariser, heads, train, val, cfg)

    with training_task(adapters, TASK):
        history = train_loop(params, step, batches, validate, select, cfg, on_step)
    if summariser.scorer is not None:
        tune(summariser, adapters, val)
    chunks = [e.chunks for e in val]
    candidates = [c.text for c in summariser.predict(adapters, [e.text for e in val], chunks=chunks)]
    metrics = mean_rouge(candidates, [e.summary for e in val])
    baseline = mean_rouge([lead_summary(e.text) for e in val], [e.summary for e in val])
    state = {}
    if summariser.scorer is not None:
        state = head_state(summariser.scorer) | head_state(summariser.tagger, TAGGER)
    return TrainResult(
        task=TASK,
        config=config,
        train_config=cfg,
        head_state=state,
        head_config=summariser.config.to_dict(),
        metrics=metrics,
        baseline=baseline,
        history=history,
        adapter_params=adapters.num_parameters(TASK),
        head_params=count_parameters(heads),
        backbone_params=adapters.backbone.num_parameters,
        primary_metric="rougeL",
    )


def summary_length(tokenizer, train: Sequence[SummaryExample]) -> tuple[int, int]:
    """(max new tokens, max words) for generation: 1.25x the 90th percentile of the training summaries' length."""
    tokens = sorted(len(tokenizer(" " + e.summary.strip(), add_special_tokens=False)["input_ids"]) for e in train)
    words = sorted(len(e.summary.split()) for e in train)
    p90 = lambda values: values[min(len(values) - 1, int(0.9 * len(values)))]  # noqa: E731
    return max(8, math.ceil(1.25 * p90(tokens)) + 1), max(4, math.ceil(1.25 * p90(words)))


def _extractive(adapters, summariser: Summariser, heads: nn.Module, train, val, cfg: TrainConfig):
    scorer, tagger = summariser.scorer, summariser.tagger
    tokenizer = adapters.backbone.tokenizer
    items = chunk_items(tokenizer, train, token_limit(adapters, cfg.max_length))
    labels = [y for it in items for y in it.labels]
    positives = sum(labels)
    # summary sentences are rare; weight them so the scorer does not learn "never"
    pos_weight = torch.tensor(min(20.0, max(1.0, (len(labels) - positives) / max(1, positives))))

    def step(batch: list[ChunkItem]) -> Tensor:
        set_mode(adapters, heads, True)
        ids, mask = pad_batch([it.ids for it in batch], pad_id(tokenizer))  # (B, T)
        hidden = adapters.hidden_states(ids, mask)  # (B, T, H): chunk trunks come from the cache after epoch 1
        rows = torch.tensor([b for b, it in enumerate(batch) for _ in it.index], dtype=torch.long)  # (N,)
        starts = torch.tensor([x for it in batch for x in it.starts])  # (N,)
        ends = torch.tensor([x for it in batch for x in it.ends])  # (N,)
        vectors = span_mean(hidden, rows, starts, ends)  # (N, H)
        index = torch.tensor([i for it in batch for i in it.index])  # (N,)
        count = torch.tensor([it.count for it in batch for _ in it.index])  # (N,)
        logits = scorer(vectors, position_features(index, count))  # (N,)
        targets = torch.tensor([y for it in batch for y in it.labels], dtype=torch.float32)  # (N,)
        loss = losses.multilabel_bce(logits, targets, pos_weight)
        offsets = torch.tensor([0] + [len(it.index) for it in batch]).cumsum(0).tolist()
        words = [(offsets[b] + n, *rest) for b, it in enumerate(batch) for n, *rest in it.words]
        if words:  # the compressor learns on the oracle sentences' words
            sentence, position, total, a, e, keep = (torch.tensor(col, dtype=torch.long) for col in zip(*words))
            word_vectors = segment_mean(hidden, rows[sentence], a, e)  # (M, H)
            word_logits = tagger(word_vectors, vectors[sentence], position_features(position, total))  # (M,)
            loss = loss + F.binary_cross_entropy_with_logits(word_logits, keep.float())
        return loss

    def validate() -> dict:
        set_mode(adapters, heads, False)
        candidates = summariser.predict(adapters, [e.text for e in val], chunks=[e.chunks for e in val])
        return mean_rouge([c.text for c in candidates], [e.summary for e in val])

    batches = lambda epoch: shuffled_batches(items, cfg.batch_size, epoch, cfg.seed)  # noqa: E731
    return param_groups(adapters, TASK, heads, cfg), step, batches, "rougeL", validate


def _abstractive(adapters, summariser: Summariser, train, val, cfg: TrainConfig):
    tokenizer = adapters.backbone.tokenizer
    limit = token_limit(adapters, cfg.max_length)
    budget = summariser.summary_budget(limit)
    prompt = summariser.config.prompt

    def lm_batch(batch: Sequence[SummaryExample]) -> Tensor:
        pairs = [prompt_and_target(tokenizer, e.text, e.summary, limit, budget, prompt) for e in batch]
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


THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PHRASE_WORDS = (None, 16, 10, 6)  # longest compressed phrase: short human summaries favour short phrases


def tune(summariser: Summariser, adapters, val: Sequence[SummaryExample]) -> dict:
    """Pick on validation ROUGE-L the keep-threshold and sentence budget (ties: closest to 0.5, more sentences),
    then whether to compress and at which word threshold: compression is kept only where it scores higher."""
    with adapters.using(TASK):
        found = summariser.chunk_found(adapters, [e.text for e in val], [e.chunks for e in val], words=True)
    refs = [e.summary for e in val]
    probs = [summariser.probs(plan, f) for plan, f in found]

    def rouge_l(threshold: float, sentences: int, word_threshold: float | None) -> float:
        candidates = [
            summariser.compose(plan, f, p, threshold, sentences, word_threshold) for (plan, f), p in zip(found, probs)
        ]
        return mean_rouge(candidates, refs)["rougeL"]

    config = summariser.config
    best = max(
        (rouge_l(t, m, None), -abs(t - 0.5), m, t) for t in THRESHOLDS for m in range(1, MAX_SENTENCES + 1)
    )
    config.threshold, config.max_sentences = best[3], best[2]
    plain = best[0]
    compressed = (-1.0, 0.0, 0.5, None)
    for limit in PHRASE_WORDS:
        config.phrase_words = limit
        for w in THRESHOLDS[1:-1]:
            compressed = max(compressed, (rouge_l(config.threshold, config.max_sentences, w), -abs(w - 0.5), w, limit),
                             key=lambda x: x[:3])
    config.compress = summariser.tagger is not None and compressed[0] > plain
    config.word_threshold = compressed[2] if config.compress else 0.5
    config.phrase_words = compressed[3] if config.compress else None
    return {"sentences": plain, "compressed": compressed[0], "word_threshold": compressed[2], "phrase_words": compressed[3]}


def evaluate(adapters, folder: Path, val: Sequence[SummaryExample], cfg: TrainConfig, spec) -> dict:
    """A saved version's ROUGE on this run's validation documents (for the gate)."""
    summariser = load_task(adapters, spec, folder)
    candidates = summariser.predict(adapters, [e.text for e in val], chunks=[e.chunks for e in val])
    return mean_rouge([c.text for c in candidates], [e.summary for e in val])
