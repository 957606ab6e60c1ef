"""metrics.json -> report.md: the tables a person reads, with the model beside its baselines."""

from __future__ import annotations

from collections.abc import Sequence


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _get(entry: dict | None, *keys):
    for key in keys:
        if entry is None:
            return None
        entry = entry.get(key)
    return entry


def render_report(m: dict) -> str:
    lines = [f"# kb eval: {m['source']}", ""]
    split = m["split"]
    lines += [
        f"- **Date:** {m['created_at']}",
        f"- **Command:** `{m['command']}`",
        f"- **Split:** {split['documents']} documents ({split['labelled']} labelled); "
        f"train {split['train']}, test {split['test']} ({split['method']}). "
        f"Test documents with a category: {split['test_with_category']}, with tags: {split['test_with_tags']}, "
        f"with a summary: {split['test_with_summary']}.",
        f"- **Backbone:** {_backbone_name(m['backbone'])} ({m['backbone']['family']}, "
        f"{m['backbone']['layers']} layers, "
        f"{m['backbone']['parameters']:,} parameters, adapters on the top {m['backbone']['adapted_layers']}), "
        f"weights hash `{m['backbone']['weights_hash']}`",
        f"- **Time:** {m['seconds']['total']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in m['seconds'].items() if k != 'total')})",
        "",
        "Everything was trained and scored in a temporary KB; the user's KB was not read or written. Held-out "
        "documents' gold labels were deleted there before training, and the documents themselves were hidden from "
        "training, so no adapter saw their text, titles or labels.",
        "",
    ]
    lines += _summary_table(m)
    lines += _classification(m["classification"])
    lines += _search(m["search"])
    lines += _summaries(m["summaries"])
    lines += _training(m["training"])
    lines += ["## Notes", ""] + [f"- {note}" for note in m["notes"]] + [""]
    lines += _environment(m)
    return "\n".join(lines)


def _backbone_name(b: dict) -> str:
    if b["name"] == b["setting"]:
        return f"`{b['setting']}`"
    return f"`{b['name']}` (KB_BACKBONE={b['setting']})"


def _summary_table(m: dict) -> list[str]:
    c, s, r = m["classification"], m["search"], m["summaries"]
    rows = [
        ("category accuracy", _get(c, "model", "category", "accuracy"),
         f"majority {_f(_get(c, 'baselines', 'majority', 'category', 'accuracy'))}; "
         f"TF-IDF + LR {_f(_get(c, 'baselines', 'tfidf_logreg', 'category', 'accuracy'))}"),
        ("category macro-F1", _get(c, "model", "category", "macro_f1"),
         f"majority {_f(_get(c, 'baselines', 'majority', 'category', 'macro_f1'))}; "
         f"TF-IDF + LR {_f(_get(c, 'baselines', 'tfidf_logreg', 'category', 'macro_f1'))}"),
    ]
    if c.get("tags_n"):
        rows.append(("tags micro-F1", _get(c, "model", "tags", "micro_f1"),
                     f"majority tag set {_f(_get(c, 'baselines', 'majority', 'tags', 'micro_f1'))}; "
                     f"TF-IDF + LR {_f(_get(c, 'baselines', 'tfidf_logreg', 'tags', 'micro_f1'))}"))
    if s.get("queries"):
        modes = s["modes"]
        rows.append(("search nDCG@10 (hybrid)", _get(modes, "hybrid", "ndcg@10"),
                     f"BM25 {_f(_get(modes, 'bm25', 'ndcg@10'))}; untuned dense "
                     f"{_f(_get(modes, 'dense_untuned', 'ndcg@10'))}; keyword {_f(_get(modes, 'keyword', 'ndcg@10'))}"))
    if r.get("n"):
        lead = _f(_get(r, "baselines", "lead", "rougeL"))
        words = _get(r, "baselines", "lead_words")
        also = f"; {words['label']} {_f(words['rougeL'])}" if words else ""
        rows.append(("summary ROUGE-L", _get(r, "model", "rougeL"), f"lead sentences {lead}{also}"))
    return ["## Summary", ""] + _table(("metric", "kb-pipeline", "baselines"), rows)


def _classification(c: dict) -> list[str]:
    lines = ["## Classification", ""]
    lines.append(
        f"{c['n']} test documents with a gold category. Baselines: **majority class** (always the most common "
        "training category; for tags, the most common training tag set) and **TF-IDF + logistic regression** "
        "(word 1-2-grams; for tags one model per tag, its threshold tuned by 3-fold cross-validation as the "
        "adapter tunes its thresholds on validation), both trained on the same training documents and reading "
        "the same title + text. Macro-F1 averages every class seen in the gold labels or the predictions."
    )
    lines.append("")
    if c.get("model_note"):
        lines += [f"**{c['model_note']}**", ""]
    systems = [("classify adapter", c.get("model"))] + [(b["label"], b) for b in c["baselines"].values()]
    rows = []
    for name, entry in systems:
        cat = _get(entry, "category")
        ci = _get(cat, "accuracy_ci95")
        rows.append((name, _get(cat, "accuracy"), f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a",
                     _get(cat, "macro_f1"), _get(entry, "tags", "micro_f1"), _get(entry, "tags", "macro_f1")))
    lines += _table(("model", "accuracy", "accuracy 95% CI", "macro-F1", "tags micro-F1", "tags macro-F1"), rows)
    if c.get("tags_n") == 0:
        lines += ["No test document carries gold tags, so tag F1 is not scored.", ""]
    else:
        lines += [f"Tag F1 over the {c['tags_n']} test documents that carry gold tags.", ""]
    lines += ["### Per-class F1", ""]
    header = ["class", "test docs", "train docs"] + [name for name, entry in systems if entry]
    rows = []
    for cls in c["classes"]:
        rows.append([cls, c["support"].get(cls, 0), c["train_support"].get(cls, 0)]
                    + [_get(entry, "category", "per_class_f1", cls) for _, entry in systems if entry])
    lines += _table(header, rows)
    lines += _trust(c.get("model"))
    model = _get(c, "model", "category")
    if model:
        labels = model["confusion_labels"]
        lines += ["### Confusion matrix (classify adapter; rows gold, columns predicted)", ""]
        lines += _table(["gold \\ predicted"] + labels,
                        [[label] + row for label, row in zip(labels, model["confusion_matrix"])])
    lines += ["![confusion matrix](confusion_matrix.png)", "", "![per-class F1](per_class_f1.png)", ""]
    return lines


def _trust(model: dict | None) -> list[str]:
    """Which predictions to trust: per-class and per-tag precision/recall, tag shares, calibration, abstain."""
    if not model:
        return []
    lines = []
    per_class = _get(model, "category", "per_class")
    if per_class:
        lines += ["### Per-class precision and recall (classify adapter)", ""]
        lines += _table(("class", "precision", "recall", "F1", "gold share", "predicted share"),
                        [(c, s["precision"], s["recall"], s["f1"], s["gold_share"], s["predicted_share"])
                         for c, s in per_class.items()])
    per_tag = _get(model, "tags", "per_tag")
    if per_tag:
        flagged = [t for t, s in per_tag.items() if s["over_predicted"]]
        lines += ["### Tags (classify adapter)", "",
                  f"Micro-F1 {_f(model['tags']['micro_f1'])}, macro-F1 {_f(model['tags']['macro_f1'])}; "
                  f"{model['tags'].get('distinct_tag_sets', 'n/a')} distinct predicted tag sets. A tag is flagged when "
                  "it is predicted on more than twice its gold share plus 10 points: "
                  + (", ".join(f"**{t}**" for t in flagged) if flagged else "none") + ".", ""]
        lines += _table(("tag", "test docs", "precision", "recall", "F1", "gold share", "predicted share", "flag"),
                        [(t, s["support"], s["precision"], s["recall"], s["f1"], s["gold_share"], s["predicted_share"],
                          "over-predicted" if s["over_predicted"] else "") for t, s in per_tag.items()])
    confidence = model.get("confidence")
    if confidence:
        chosen = confidence.get("chosen")
        lines += ["### Calibration and abstain (classify adapter)", "",
                  f"Expected calibration error of the category probabilities (10 bins): {_f(confidence['ece'])}. "
                  "A document whose top category scores below the adapter's threshold gets no category and is marked "
                  "\"needs review\"; coverage is the share of test documents that keep a category, accuracy is "
                  "measured on them."
                  + (f" Chosen point: threshold {_f(chosen['threshold'])}, coverage {_f(chosen['coverage'])}, "
                     f"accuracy {_f(chosen['accuracy'])}." if chosen else ""), ""]
        lines += _table(("threshold", "coverage", "accuracy"),
                        [(p["threshold"], p["coverage"], p["accuracy"]) for p in confidence["curve"][::2]])
    return lines


def _search(s: dict) -> list[str]:
    lines = ["## Search", ""]
    if not s.get("queries"):
        return lines + [s.get("note", "No queries."), ""]
    lines.append(
        f"Each of the {s['queries']} test documents' gold summary is a query; its one relevant answer is that "
        f"document, ranked among all {s['documents']} documents (train and test). Baselines: **BM25** over whole "
        "document texts and the **untuned backbone** (dense and hybrid search with the backbone's own embeddings)."
    )
    lines.append("")
    embed = s["embed_adapter"]
    if embed["trained"]:
        state = "promoted (active)" if embed["promoted"] else "**not promoted** by the gate, scored anyway"
        lines += [f"Embed adapter version {embed['version']}: {state}; {embed['reason']}.", ""]
    else:
        lines += [f"No embed adapter: {embed['reason']}.", ""]
    rows = []
    for entry in s["modes"].values():
        if entry is None:
            continue
        rows.append((entry["label"], entry["role"], entry["ndcg@10"], entry["mrr@10"], entry["recall@1"],
                     entry["recall@10"]))
    missing = [key for key, entry in s["modes"].items() if entry is None]
    lines += _table(("mode", "role", "nDCG@10", "MRR@10", "Recall@1", "Recall@10"), rows)
    if missing:
        lines += [f"Not scored (no embed adapter): {', '.join(missing)}.", ""]
    return lines + ["![nDCG@10 by mode](ndcg_by_mode.png)", ""]


def _summaries(r: dict) -> list[str]:
    lines = ["## Summaries", ""]
    if not r.get("n"):
        return lines + [r.get("note", "No summaries."), ""]
    lines += [
        f"{r['n']} test documents with a gold summary; ROUGE F-measures, mean over documents. "
        "Baselines: **lead sentences** (the first sentences within the summariser's budget of 3 sentences / 60 words) "
        "and **lead N words** (the first N words, N the mean gold summary length), both over the same plain "
        "sentences the summariser chooses from (no headings, tables or Markdown).",
        "",
    ]
    if r.get("model_note"):
        lines += [f"**{r['model_note']}**", ""]
    rows = [(entry["label"], entry["rouge1"], entry["rouge2"], entry["rougeL"])
            for entry in [r.get("model")] + list(r["baselines"].values()) if entry]
    lines += _table(("model", "ROUGE-1", "ROUGE-2", "ROUGE-L"), rows)
    for example in r.get("examples", [])[:2]:
        lines += [f"- `{example['path']}`", f"  - gold: {example['gold']}", f"  - predicted: {example['predicted']}"]
    return lines + [""]


def _training(t: dict) -> list[str]:
    lines = ["## Training", ""]
    rows = []
    for task, info in t.items():
        if not info["trained"]:
            rows.append((task, "not trained", None, None, None, None, info["message"]))
            continue
        metric = info["primary_metric"]
        cfg = info.get("train_config") or {}
        rows.append((
            task, f"v{info['version']} {info['status']} ({info['kind']})",
            f"{len(info.get('losses', []))} steps, max {cfg.get('epochs', '?')} epochs, "
            f"best epoch {info.get('best_epoch')}",
            f"{info.get('train_documents')}/{info.get('val_documents')}",
            f"{metric} {info['validation'].get(metric, 0):.3f} "
            f"(baseline {info['validation_baseline'].get(metric, 0):.3f})",
            f"{info['seconds']:.0f} s", info["message"],
        ))
    lines += _table(("task", "version", "schedule", "train/val docs", "validation", "time", "gate"), rows)
    return lines + ["![training loss](training_loss.png)", ""]


def _environment(m: dict) -> list[str]:
    env = m["environment"]
    lines = ["## Versions", ""]
    lines += _table(("package", "version"), [(k, v or "not installed") for k, v in env.items()])
    return lines
