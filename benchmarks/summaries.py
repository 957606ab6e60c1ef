"""Summaries: ROUGE-1/2/L of the summarise adapter beside lead baselines, on BBC News and the sample corpus.

    python -m benchmarks.summaries [--bbc-train 300 --bbc-val 60 --bbc-test 100] [--skip-bbc] [--skip-sample]
                                   [--decoder] [--json]

BBC: the article body is the document and its headline the gold summary (a stratified sample, benchmarks/
bbc_data.py). Sample corpus: the front-matter `summary:` of its documents (read with the ingest readers; a
deterministic split). The summariser is trained as `kb train summarise` trains it (the spec's TrainConfig,
the default adapter) on the backbone of KB_BACKBONE (MiniLM by default). Each corpus reports, side by side
from one run: sentence extraction alone, extraction with compression (whichever the validation set chose is
marked), the lead sentences within the same budget, the first sentence, and the first N words (N the mean
gold summary length on the training side), all over the same plain candidate sentences.
--decoder: generation speed (docs/s) of the SmolLM2 summariser, batched vs one document at a time, on 16
documents (needs the [smollm2] extra; skipped with a note when SmolLM2 cannot be loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def bbc_sets(n_train: int, n_val: int, n_test: int, seed: int = 0):
    from benchmarks.bbc_data import load_bbc_split
    from kb_pipeline.training.base import SummaryExample

    split = load_bbc_split(seed=seed, train_docs=n_train, test_docs=n_test, val_docs=n_val)
    as_examples = lambda docs: [SummaryExample(d.body.strip(), d.headline.strip()) for d in docs]  # noqa: E731
    return as_examples(split.train), as_examples(split.val), as_examples(split.test)


def sample_corpus_sets(folder: Path = ROOT / "sample_corpus", seed: int = 0):
    """The sample corpus's documents with a front-matter summary: ~60% train, ~15% validation, ~25% test."""
    from kb_pipeline.ingest.readers import is_supported, read_document
    from kb_pipeline.training.base import SummaryExample

    examples = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_supported(p)):
        doc = read_document(path, max_bytes=50_000_000)
        summary = (doc.metadata or {}).get("summary")
        if isinstance(summary, str) and summary.strip():
            examples.append(SummaryExample(doc.text, summary.strip()))
    random.Random(seed).shuffle(examples)
    n_test, n_val = round(0.25 * len(examples)), round(0.15 * len(examples))
    return examples[n_test + n_val :], examples[n_test : n_test + n_val], examples[:n_test]


def run_corpus(name: str, adapters, train, val, test) -> dict:
    from kb_pipeline.backbone.adapters import AdapterConfig
    from kb_pipeline.config import Settings
    from kb_pipeline.tasks.summarise import SPEC, SummariseConfig, Summariser, lead_summary, lead_words
    from kb_pipeline.training.metrics import mean_rouge
    from kb_pipeline.training.summarise import train as train_summarise
    from kb_pipeline.training.summarise import tune

    settings = Settings.from_env()
    layers = settings.adapted_layers(adapters.backbone.num_layers)
    started = time.perf_counter()
    result = train_summarise(adapters, train, val, AdapterConfig(kind=SPEC.default_kind, layers=layers), SPEC.default_train)
    seconds = time.perf_counter() - started
    summariser = Summariser.from_result(result)
    chosen = summariser.config
    validation = tune(summariser, adapters, val)  # the same choice again, with both scores to show
    refs = [e.summary for e in test]
    texts, chunks = [e.text for e in test], [e.chunks for e in test]

    def scores(config: SummariseConfig) -> dict:
        model = Summariser(summariser.scorer, config, summariser.tagger)
        outs = [s.text for s in model.predict(adapters, texts, chunks=chunks)]
        return mean_rouge(outs, refs) | {"mean_words": sum(len(o.split()) for o in outs) / len(outs), "example": outs[0]}

    words = round(sum(len(e.summary.split()) for e in train) / len(train))
    sentences = chosen.to_dict() | {"compress": False}
    compressed = chosen.to_dict() | {"compress": True, "word_threshold": validation["word_threshold"],
                                     "phrase_words": validation["phrase_words"]}
    rows = {
        "sentences": {"label": "summariser: sentence extraction"} | scores(SummariseConfig.from_dict(sentences)),
        "compressed": {"label": "summariser: + compression"} | scores(SummariseConfig.from_dict(compressed)),
    }
    rows["compressed" if chosen.compress else "sentences"]["label"] += " (chosen on validation)"
    for key, label, outs in (
        ("lead", "lead sentences (3 / 60 words)", [lead_summary(t) for t in texts]),
        ("lead1", "lead sentence", [lead_summary(t, max_sentences=1) for t in texts]),
        ("lead_words", f"lead {words} words", [lead_words(t, words) for t in texts]),
    ):
        rows[key] = {"label": label} | mean_rouge(outs, refs) | {"mean_words": sum(len(o.split()) for o in outs) / len(outs)}
    return {
        "corpus": name,
        "train": len(train), "val": len(val), "test": len(test),
        "gold_mean_words": sum(len(r.split()) for r in refs) / len(refs),
        "train_seconds": round(seconds, 1),
        "chosen": {"compress": chosen.compress, "threshold": chosen.threshold, "max_sentences": chosen.max_sentences,
                   "word_threshold": validation["word_threshold"], "phrase_words": validation["phrase_words"]},
        "validation_rougeL": {"sentences": validation["sentences"], "compressed": validation["compressed"]},
        "rows": rows,
        "gold_example": refs[0],
    }


def decoder_speed(texts: list[str], batch_size: int = 8) -> dict:
    """Greedy generation docs/s of the abstractive summariser on SmolLM2, batched vs one at a time."""
    from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.config import Settings
    from kb_pipeline.tasks.summarise import NAME, SPEC, SummariseConfig, Summariser

    settings = Settings.from_env()
    try:
        backbone = load_backbone("smollm2", settings.models_dir)
    except Exception as exc:  # the [smollm2] extra is optional
        return {"note": f"SmolLM2 not available: {type(exc).__name__}: {exc}"}
    adapters = AdapterSet(backbone)
    adapters.add(NAME, AdapterConfig(kind=SPEC.default_kind, layers=settings.adapted_layers(backbone.num_layers)), seed=0)
    summariser = Summariser(None, SummariseConfig("abstractive", max_length=512, max_new_tokens=24, max_words=20))
    out = {"docs": len(texts), "max_new_tokens": 24, "batch_size": batch_size}
    with adapters.using(NAME), torch.no_grad():
        summariser.generate(adapters, texts[:2], batch_size=2)  # warm-up
        for key, size in (("one_at_a_time", 1), ("batched", batch_size)):
            started = time.perf_counter()
            outs = summariser.generate(adapters, texts, batch_size=size)
            out[key] = {"docs_per_s": len(texts) / (time.perf_counter() - started), "example": outs[0]}
    out["same_output"] = out["batched"]["example"] == out["one_at_a_time"]["example"]
    return out


def print_table(report: dict) -> None:
    for corpus in report["corpora"]:
        print(f"\n## {corpus['corpus']}: train {corpus['train']} / val {corpus['val']} / test {corpus['test']}, "
              f"gold summaries {corpus['gold_mean_words']:.1f} words on average; training {corpus['train_seconds']} s")
        print(f"chosen on validation: {corpus['chosen']}; validation ROUGE-L {corpus['validation_rougeL']}")
        print(f"| {'model':58} | ROUGE-1 | ROUGE-2 | ROUGE-L | words |")
        print(f"|{'-' * 60}|---------|---------|---------|-------|")
        for row in corpus["rows"].values():
            print(f"| {row['label']:58} | {row['rouge1']:.3f}   | {row['rouge2']:.3f}   | {row['rougeL']:.3f}   | "
                  f"{row['mean_words']:5.1f} |")
        print(f"gold: {corpus['gold_example']}")
        print(f"sentences: {corpus['rows']['sentences']['example']}")
        print(f"compressed: {corpus['rows']['compressed']['example']}")
    if "decoder" in report:
        d = report["decoder"]
        if "note" in d:
            print(f"\ndecoder: {d['note']}")
        else:
            print(f"\ndecoder (SmolLM2, {d['docs']} docs, {d['max_new_tokens']} new tokens): one at a time "
                  f"{d['one_at_a_time']['docs_per_s']:.2f} docs/s, batched ({d['batch_size']}) "
                  f"{d['batched']['docs_per_s']:.2f} docs/s")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bbc-train", type=int, default=300)
    parser.add_argument("--bbc-val", type=int, default=60)
    parser.add_argument("--bbc-test", type=int, default=100)
    parser.add_argument("--skip-bbc", action="store_true")
    parser.add_argument("--skip-sample", action="store_true")
    parser.add_argument("--decoder", action="store_true", help="also time SmolLM2 generation (needs [smollm2])")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from kb_pipeline.backbone.adapters import AdapterSet
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.config import Settings

    settings = Settings.from_env()
    backbone = load_backbone(os.environ.get("KB_BACKBONE", settings.backbone), settings.models_dir)
    report: dict = {"backbone": backbone.name, "corpora": []}
    if not args.skip_sample:
        report["corpora"].append(run_corpus("sample corpus (front-matter summaries)", AdapterSet(backbone),
                                            *sample_corpus_sets()))
    if not args.skip_bbc:
        train, val, test = bbc_sets(args.bbc_train, args.bbc_val, args.bbc_test)
        report["corpora"].append(run_corpus("BBC News (headline as summary)", AdapterSet(backbone), train, val, test))
    if args.decoder:
        report["decoder"] = decoder_speed([e.text for e in bbc_sets(16, 0, 16)[2]])
    print(json.dumps(report, indent=2) if args.json else "", end="")
    if not args.json:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
