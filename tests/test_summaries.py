"""Summaries are plain sentences from the body, optionally compressed, and decoders generate them in batches."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.tasks.compression import compress, lcs_keep
from kb_pipeline.tasks.plain_text import candidate_sentences, plain_text, plain_word
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.tasks.summarise import SummariseConfig, Summariser, lead_summary, lead_words, split_sentences
from kb_pipeline.training.base import SummaryExample
from kb_pipeline.training.metrics import mean_rouge
from kb_pipeline.training.summarise import train as train_summarise
from tiny_models import tiny_backbone

MARKDOWN = """# Code Review Guidelines

**Owner:** Platform team
**Status:** Accepted
owner: platform

## Required approvals

Every change needs **two approvals** from the [owning team](https://example.com/teams). Use `git push` only after CI passes.

| Role | Approvals |
|------|-----------|
| Reviewer | 2 |

```python
print("This is code. It is never a summary.")
```

- Keep changes *small* and focused.
1. Link the ticket in the description.
> Reviews are about the code, not the person.

Release notes
=============

Contact the platform team for exceptions.
"""

MARKUP = re.compile(r"^#|\*\*|`|\]\(|^[-*>] |^\d+\. |\|")


def test_markdown_structure_never_becomes_a_summary_sentence():
    spans = candidate_sentences(MARKDOWN)
    assert [s.text for s in spans] == [
        "Every change needs two approvals from the owning team.",
        "Use git push only after CI passes.",
        "Keep changes small and focused.",
        "Link the ticket in the description.",
        "Reviews are about the code, not the person.",
        "Contact the platform team for exceptions.",
    ]
    for span in spans:  # offsets point at the raw sentence (callers highlight it), and at each word
        assert plain_text(MARKDOWN[span.start : span.end]) == span.text
        assert [plain_word(MARKDOWN[w.start : w.end]) for w in span.words] == span.text.split()
    # the lead baselines read the same candidates
    assert lead_summary(MARKDOWN, max_sentences=1) == "Every change needs two approvals from the owning team."
    assert lead_words(MARKDOWN, 4) == "Every change needs two"
    assert split_sentences(MARKDOWN) == spans


def test_a_document_of_headings_only_still_gets_plain_candidates():
    text = "# Quarterly figures\n\nRevenue by region\n\n| a | b |\n"
    assert [s.text for s in candidate_sentences(text)] == ["Revenue by region"]


def test_lcs_labels_and_compression_fallback():
    words = "Yesterday the nightly backup of volume 3 failed again".split()
    assert lcs_keep(words, "Backup of volume 3 failed.") == [0, 0, 0, 1, 1, 1, 1, 1, 0]
    span = candidate_sentences("Yesterday the nightly backup of volume 3 failed again.")[0]
    high = [0.9 if k else 0.1 for k in lcs_keep([w.text for w in span.words], "backup of volume 3 failed")]
    # a phrase reads as one: capitalised, and marked as cut short when the sentence goes on
    assert compress(span, high, 0.5) == "Backup of volume 3 failed…"
    # a bracket is never left open ("(often a deploy"): the phrase stops before it
    bracketed = candidate_sentences("Name the first trigger (often a deploy or a config change) in the summary.")[0]
    keep = [0.9] * 7 + [0.1] * (len(bracketed.words) - 7)  # "Name the first trigger (often a deploy"
    assert compress(bracketed, keep, 0.5, min_words=3) == "Name the first trigger…"
    # nor does it end on a dangling "and" or "the" ("SEV1 and SEV2 incident, and…")
    dangling = candidate_sentences("Any SEV1 and SEV2 incident, and the first trigger, is named first.")[0]
    keep = [0.9] * 7 + [0.1] * (len(dangling.words) - 7)  # "Any SEV1 and SEV2 incident, and the"
    assert compress(dangling, keep, 0.5, min_words=3) == "Any SEV1 and SEV2 incident…"
    assert compress(span, high, 0.5, min_words=6) == span.text  # too short to read: the whole sentence
    assert compress(span, [0.1] * len(span.words), 0.5) == span.text
    # one contiguous phrase, never scattered words: a lone dropped word inside a strong run stays
    scattered = [0.9, 0.1, 0.1, 0.9, 0.9, 0.4, 0.9, 0.9, 0.1]  # Yesterday | backup of [volume] 3 failed
    assert compress(span, scattered, 0.5, min_words=4) == "Backup of volume 3 failed…"
    # the best 2-word run, "backup of", ends on a dangling "of": too short once trimmed, so the sentence stays whole
    assert compress(span, scattered, 0.5, min_words=2, max_words=2) == span.text


FILLER = ["yesterday", "again", "at", "night", "as", "usual", "sadly", "once", "more", "today"]
THINGS = ["backup", "deploy", "upgrade", "migration", "import", "export"]


def markdown_docs(n: int, seed: int = 0) -> list[SummaryExample]:
    """Markdown documents whose gold summary keeps some words of one body sentence (what compression learns)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        thing = rng.choice(THINGS)
        point = f"{thing} of volume {i} failed"
        noisy = f"{rng.choice(FILLER).capitalize()} the **{thing}** of volume {i} {rng.choice(FILLER)} failed {rng.choice(FILLER)}."
        text = (
            f"# Incident {i}\n\n**Status:** Closed\n\n## Summary\n\n{noisy} "
            f"{' '.join(rng.choice(FILLER) for _ in range(5)).capitalize()} happened.\n\n- see the `runbook` now"
        )
        out.append(SummaryExample(text, point))
    return out


def test_extractive_summaries_are_plain_and_compression_is_chosen_on_validation():
    adapters = AdapterSet(tiny_backbone("bert"))
    data = markdown_docs(24)
    cfg = TrainConfig(epochs=12, batch_size=8, lr=2e-2, patience=20, seed=0, max_length=64)
    result = train_summarise(adapters, data[:16], data[16:], AdapterConfig(kind="lora", rank=4, alpha=8, dropout=0.0), cfg)
    config = SummariseConfig.from_dict(json.loads(json.dumps(result.head_config)))
    summariser = Summariser.from_tensors(result.head_state, config)
    assert summariser.tagger is not None
    val = data[16:]
    texts, refs = [e.text for e in val], [e.summary for e in val]
    summaries = [s.text for s in summariser.predict(adapters, texts)]
    assert all(s and not MARKUP.search(s) for s in summaries), summaries
    whole = Summariser(summariser.scorer, SummariseConfig.from_dict(config.to_dict() | {"compress": False}))
    sentences = [s.text for s in whole.predict(adapters, texts)]
    # compression is on only where it beats whole sentences on validation; here the gold drops filler words
    assert config.compress
    assert mean_rouge(summaries, refs)["rougeL"] > mean_rouge(sentences, refs)["rougeL"]
    assert sum(len(s.split()) for s in summaries) < sum(len(s.split()) for s in sentences)
    # chunks batched with other documents' chunks (as in the shared enrichment pass) give the same summaries
    assert [s.text for s in summariser.predict(adapters, texts, batch_size=1)] == summaries


def test_batched_generation_equals_one_at_a_time_greedy():
    backbone = tiny_backbone("llama")
    adapters = AdapterSet(backbone)
    adapters.add("summarise", AdapterConfig(kind="lora", rank=4, alpha=8, dropout=0.0), seed=0)
    summariser = Summariser(None, SummariseConfig("abstractive", max_length=96, max_new_tokens=6, max_words=60))
    texts = ["the backup failed", "a much longer document about the storage upgrade that ran all night long", "ok"]
    with adapters.using("summarise"), torch.no_grad():
        batched = summariser.generate(adapters, texts, batch_size=3)
        alone = [summariser.generate(adapters, [t], batch_size=1)[0] for t in texts]
    assert batched == alone
    assert any(batched)


@pytest.mark.parametrize("words, expected", [(3, "one two three"), (60, "one two three four")])
def test_generated_text_is_cut_to_its_first_line_and_word_budget(words, expected):
    from kb_pipeline.tasks.summarise import clip_words

    assert clip_words("\n one two three four\nsecond line", words) == expected
