"""Task trainers on tiny random BERT and Llama backbones: they learn, stay in their lane, and say what is missing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from kb_pipeline.backbone.adapter_files import load_adapter, save_adapter
from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.tasks.classify import Classifier, Labels
from kb_pipeline.tasks.embed import embed_texts
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.tasks.summarise import Summariser, Summary, lead_summary, split_sentences, within_budget
from kb_pipeline.training.base import ClassifyExample, InsufficientData, Pair, SummaryExample
from kb_pipeline.training.classify import train as train_classify
from kb_pipeline.training.embed import train as train_embed
from kb_pipeline.training.summarise import oracle_labels
from kb_pipeline.training.summarise import train as train_summarise
from tiny_models import tiny_backbone

# tiny matrices: thread hand-offs cost far more than the maths, badly so on a busy 2-core machine
torch.set_num_threads(1)

FAMILIES = ("bert", "llama")
KINDS = ("lora", "bottleneck")
FILLER = "the team report plan page link week guide notes search policy meeting owner item".split()
TOPICS = {
    "finance": "revenue costs expenses payroll approval euros",
    "it": "password backup storage laptop account incident",
}


def adapter_config(kind: str) -> AdapterConfig:
    return AdapterConfig(kind=kind, rank=4, alpha=8, bottleneck_size=8, dropout=0.0)


def words(rng: random.Random, pool: list[str], n: int) -> str:
    return " ".join(rng.choice(pool) for _ in range(n))


def classify_data(n: int = 24, seed: int = 0) -> list[ClassifyExample]:
    """Category decided by topic keywords; 'urgent' tag whenever the word urgent appears."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        category = "finance" if i % 2 else "it"
        urgent = i % 3 == 0
        text = f"{words(rng, FILLER, 4)} {words(rng, TOPICS[category].split(), 4)} {'urgent' if urgent else ''}"
        out.append(ClassifyExample(text, category, ("urgent",) if urgent else ()))
    return out


def pairs_data(seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    topics = "password backup revenue payroll laptop expenses badge travel".split()
    return [
        Pair(f"how do I handle {t} {rng.choice(FILLER)}", f"The {t} guide: {words(rng, FILLER, 5)} {t}.", f"doc-{t}")
        for t in topics
        for _ in range(2)
    ]


def summary_data(n: int = 6, seed: int = 0) -> list[SummaryExample]:
    """Documents whose middle sentence carries the point; the gold summary repeats it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        point = f"The backup of volume {i} failed because storage was full."
        text = f"{words(rng, FILLER, 6).capitalize()}. {point} {words(rng, FILLER, 7).capitalize()}."
        out.append(SummaryExample(text, point))
    return out


def tiny_cfg(**changes) -> TrainConfig:
    base = dict(epochs=4, batch_size=8, lr=2e-2, patience=10, seed=0, max_length=64)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def adapters(family) -> AdapterSet:
    return AdapterSet(tiny_backbone(family))


def snapshot(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.state_dict().items()}


def assert_backbone_untouched(backbone, before: dict[str, torch.Tensor]) -> None:
    after = backbone.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert backbone.current_hash() == backbone.weights_hash


def assert_learned(losses: list[float], k: int = 3) -> None:
    first, last = np.mean(losses[:k]), np.mean(losses[-k:])
    assert last < first, f"training loss did not go down: first {losses[:k]} last {losses[-k:]}"


# ----------------------------------------------------------------------------- classify


@pytest.mark.parametrize("kind", KINDS)
def test_classify_learns_and_predicts(adapters, kind):
    data = classify_data()
    before = snapshot(adapters.backbone)
    result = train_classify(adapters, data[:16], data[16:], adapter_config(kind), tiny_cfg(epochs=6, lr=3e-3))

    assert_learned(result.history.losses)
    assert_backbone_untouched(adapters.backbone, before)
    assert adapters.active is None  # the previously active task (none) is back
    assert result.primary_metric == "macro_f1"
    assert {"accuracy", "macro_f1", "tags_micro_f1"} <= set(result.metrics)
    assert result.baseline["accuracy"] == 0.5  # majority class on a balanced validation set
    assert result.head_config["categories"] == ["finance", "it"] and result.head_config["tags"] == ["urgent"]
    assert result.adapter_params == adapters.num_parameters("classify") > 0
    assert result.head_params > 0 and result.backbone_params == adapters.backbone.num_parameters

    # the head rebuilds from JSON-able config + tensors and predicts the documented shape
    config = json.loads(json.dumps(result.head_config))
    predictions = Classifier.from_tensors(result.head_state, config).predict(adapters, [d.text for d in data[:5]])
    assert len(predictions) == 5
    for p in predictions:
        assert isinstance(p, Labels)
        assert p.category in ("finance", "it") and 0.0 <= p.category_score <= 1.0
        assert all(tag == "urgent" and 0.0 <= score <= 1.0 for tag, score in p.tags)
    assert Classifier.from_result(result).predict(adapters, []) == []


def test_classify_leaves_embed_untouched(adapters):
    adapters.add("embed", adapter_config("lora"), seed=1)
    with torch.no_grad():  # make the embed adapter non-trivial (fresh LoRA is the identity)
        for p in adapters.parameters("embed"):
            p.add_(torch.randn_like(p) * 0.1)
    texts = ["reset the password", "payroll expenses report"]
    embed_state = adapters.state_dict("embed")
    vectors = embed_texts(adapters, texts)
    adapters.activate("embed")

    data = classify_data(12)
    train_classify(adapters, data[:8], data[8:], adapter_config("bottleneck"), tiny_cfg(epochs=1))

    assert adapters.active == "embed"
    assert all(torch.equal(embed_state[k], v) for k, v in adapters.state_dict("embed").items())
    np.testing.assert_array_equal(embed_texts(adapters, texts), vectors)


def test_classify_insufficient_data_messages():
    adapters = AdapterSet(tiny_backbone("bert"))
    one_category = [ClassifyExample(f"doc {i}", "hr", ()) for i in range(5)]
    with pytest.raises(InsufficientData, match=r"at least 2 categories .*; found 1 \('hr'\)"):
        train_classify(adapters, one_category, one_category, adapter_config("lora"), tiny_cfg())
    three_docs = [ClassifyExample("a", "hr", ()), ClassifyExample("b", "it", ()), ClassifyExample("c", None, ())]
    three_docs.append(ClassifyExample("d", "it", ()))
    with pytest.raises(InsufficientData, match="at least 4 labelled documents; found 3"):
        train_classify(adapters, three_docs, three_docs, adapter_config("lora"), tiny_cfg())
    assert issubclass(InsufficientData, ValueError)
    assert adapters.tasks() == []  # refused before touching the adapter set


# ----------------------------------------------------------------------------- embed


@pytest.mark.parametrize("kind", KINDS)
def test_embed_learns_and_reports_baseline(adapters, kind):
    data = pairs_data()
    before = snapshot(adapters.backbone)
    # plain in-batch negatives: GIST's guide (the untuned backbone) is random here, so its false-negative mask is noise
    result = train_embed(adapters, data, data[::2], adapter_config(kind), tiny_cfg(epochs=6, lr=1e-2), loss="mnrl")

    assert_learned(result.history.losses, k=2)
    assert_backbone_untouched(adapters.backbone, before)
    assert result.primary_metric == "ndcg@10"
    for name in ("ndcg@10", "recall@10", "mrr@10"):
        assert 0.0 <= result.metrics[name] <= 1.0 and 0.0 <= result.baseline[name] <= 1.0
    # tuning on these pairs ranks their passages better than the untuned backbone does
    assert result.metrics["ndcg@10"] > result.baseline["ndcg@10"], (result.metrics, result.baseline)
    assert result.metrics["beats_baseline"] is True

    tuned = embed_texts(adapters, ["alpha", "password backup", "x y z"])
    plain = embed_texts(adapters, ["alpha", "password backup", "x y z"], task=None)
    assert tuned.shape == (3, adapters.backbone.hidden_size) and tuned.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(tuned, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(tuned, plain)  # the tuned adapter changed the embeddings
    assert embed_texts(adapters, []).shape == (0, adapters.backbone.hidden_size)


def test_embed_insufficient_data():
    adapters = AdapterSet(tiny_backbone("bert"))
    same_doc = [Pair("q1", "p1", "d"), Pair("q2", "p2", "d")]
    with pytest.raises(InsufficientData, match="2 different documents.*found 2 pairs from 1 documents"):
        train_embed(adapters, same_doc, same_doc, adapter_config("lora"), tiny_cfg())


# ----------------------------------------------------------------------------- summarise


def test_sentence_splitter_keeps_offsets():
    text = 'Intro line. Costs were 3.5 euros! Is it "ok"? Yes\n\nNew para\nwrapped line.\n- bullet one\n- bullet two'
    spans = split_sentences(text)
    assert [s.text for s in spans] == [
        "Intro line.", "Costs were 3.5 euros!", 'Is it "ok"?', "Yes", "New para wrapped line.",
        "bullet one", "bullet two",  # list items are sentences without their markers
    ]
    assert all(" ".join(text[s.start : s.end].split()) == s.text for s in spans)


def test_oracle_budget_and_lead():
    spans = split_sentences("Cats sleep a lot. Dogs bark at night. The sky is blue.")
    # the summary is about dogs: the oracle picks sentence 1 only (adding others lowers ROUGE F)
    assert oracle_labels(spans, "dogs bark at night", 3, 60) == [0, 1, 0]
    # budget: 4 + 4 words fit in 8, the third sentence does not; returned in document order
    assert within_budget([2, 1, 0], spans, max_sentences=3, max_words=8) == [1, 2]
    assert lead_summary("One two. Three four. Five six. Seven.", max_sentences=3) == "One two. Three four. Five six."


@pytest.mark.parametrize("kind", KINDS)
def test_summarise_learns_and_summarises(adapters, kind):
    data = summary_data(8)
    before = snapshot(adapters.backbone)
    result = train_summarise(
        adapters, data[:6], data[6:], adapter_config(kind), tiny_cfg(epochs=6, batch_size=4, lr=3e-2), max_new_tokens=6
    )

    assert_learned(result.history.losses, k=2)
    assert_backbone_untouched(adapters.backbone, before)
    assert result.primary_metric == "rougeL"
    for scores in (result.metrics, result.baseline):
        assert set(scores) == {"rouge1", "rouge2", "rougeL"} and all(0.0 <= v <= 1.0 for v in scores.values())
    mode = "abstractive" if adapters.backbone.family == "decoder" else "extractive"
    assert result.head_config["mode"] == mode

    summariser = Summariser.from_tensors(result.head_state, json.loads(json.dumps(result.head_config)))
    texts = [d.text for d in data[:2]]
    summaries = summariser.predict(adapters, texts)
    assert len(summaries) == 2 and all(isinstance(s, Summary) for s in summaries)
    if mode == "extractive":  # extractive summaries are whole sentences of their document
        for text, summary in zip(texts, summaries):
            assert summary.text and all(s.text in text for s in split_sentences(summary.text))


def test_summarise_insufficient_data():
    adapters = AdapterSet(tiny_backbone("llama"))
    with pytest.raises(InsufficientData, match="at least 2 training documents with a summary; found 1"):
        train_summarise(adapters, summary_data(1), summary_data(1), adapter_config("lora"), tiny_cfg())


# ----------------------------------------------------------------------------- persistence


def test_result_saves_and_reloads_with_adapter(tmp_path):
    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    data = classify_data(12)
    result = train_classify(adapters, data[:8], data[8:], adapter_config("lora"), tiny_cfg(epochs=1))
    texts = [d.text for d in data[:3]]
    expected = Classifier.from_result(result).predict(adapters, texts)

    save_adapter(adapters, "classify", tmp_path / "classify", extra_tensors=result.head_state, meta=result.head_config)
    fresh = AdapterSet(backbone)  # replaces the old set: adapters are gone until loaded
    _, heads, meta = load_adapter(fresh, tmp_path / "classify")
    assert Classifier.from_tensors(heads, meta).predict(fresh, texts) == expected


def test_an_adapter_saved_in_an_older_head_format_asks_to_be_retrained(tmp_path):
    from kb_pipeline.tasks.registry import TASKS, load_task
    from kb_pipeline.tasks.spec import HEAD_FORMAT, StaleAdapter

    backbone = tiny_backbone("bert")
    adapters = AdapterSet(backbone)
    data = classify_data(12)
    result = train_classify(adapters, data[:8], data[8:], adapter_config("lora"), tiny_cfg(epochs=1))
    texts = [d.text for d in data[:3]]
    expected = Classifier.from_result(result).predict(adapters, texts)
    old = {"head": result.head_config, "task": "classify"}  # what versions before HEAD_FORMAT 2 saved
    save_adapter(adapters, "classify", tmp_path / "old", extra_tensors=result.head_state, meta=old)
    save_adapter(adapters, "classify", tmp_path / "new", extra_tensors=result.head_state,
                 meta=old | {"head_format": HEAD_FORMAT})
    fresh = AdapterSet(backbone)
    with pytest.raises(StaleAdapter, match=r"classify version 7 was saved in an older format.*`kb train classify`"):
        load_task(fresh, TASKS["classify"], tmp_path / "old", version_id=7)
    loaded = load_task(fresh, TASKS["classify"], tmp_path / "new", version_id=8)
    assert loaded.predict(fresh, texts) == expected


# ----------------------------------------------------------------------------- chunk inputs (shared trunk)


def test_sentences_are_read_in_the_first_chunk_that_holds_them_whole():
    from kb_pipeline.tasks.chunks import encode_chunks, sentence_slots

    tokenizer = tiny_backbone("bert").tokenizer
    text = "Reset your password now. The backup failed. Travel needs approval."
    s1, s2, s3 = split_sentences(text)
    chunks = [(0, s2.end), (s2.start, len(text))]  # s2 sits in both chunks (the overlap)
    encoded = encode_chunks(tokenizer, [text[a:b] for a, b in chunks], 64)
    slots = sentence_slots([s1, s2, s3], chunks, encoded)
    assert [(s.sentence, s.chunk) for s in slots] == [(0, 0), (1, 0), (2, 1)]
    for slot, sentence in zip(slots, (s1, s2, s3)):  # the slot's tokens are exactly the sentence's
        alone = tokenizer(sentence.text, add_special_tokens=False)["input_ids"]
        assert encoded[slot.chunk].ids[slot.start : slot.end] == alone
    truncated = encode_chunks(tokenizer, [text], 6)  # [CLS] + 4 tokens + [SEP]: the later sentences are cut off
    assert [s.sentence for s in sentence_slots([s1, s2, s3], [(0, len(text))], truncated)] == [0]


def test_span_mean_pools_each_span_of_its_row():
    from kb_pipeline.backbone.heads import span_mean

    hidden = torch.randn(2, 5, 3, requires_grad=True)
    out = span_mean(hidden, torch.tensor([1, 0, 1]), torch.tensor([0, 2, 4]), torch.tensor([2, 5, 5]))
    expected = torch.stack([hidden[1, 0:2].mean(0), hidden[0, 2:5].mean(0), hidden[1, 4:5].mean(0)])
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert hidden.grad is not None and hidden.grad[0, :2].abs().sum() == 0  # untouched tokens get no gradient


def test_extractive_summariser_scores_sentences_from_their_chunk_context():
    """A sentence's probability comes from its tokens' states in the chunk, not from the sentence alone."""
    from kb_pipeline.backbone.heads import position_features
    from kb_pipeline.tasks.chunks import encode_chunks
    from kb_pipeline.tasks.encoding import pad_batch, pooled_in_batches
    from kb_pipeline.tasks.summarise import plan_document, slot_vectors

    adapters = AdapterSet(tiny_backbone("bert"))
    data = summary_data(6)
    result = train_summarise(adapters, data[:4], data[4:], adapter_config("lora"), tiny_cfg(epochs=1, batch_size=2))
    summariser = Summariser.from_result(result)
    assert summariser.shares_trunk() and result.head_config["input"] == "chunks"
    text = data[0].text
    chunks = [(0, len(text))]
    with adapters.using("summarise"):
        [(spans, probs)] = summariser.chunk_probs(adapters, [text], [chunks])
    encoded = encode_chunks(adapters.backbone.tokenizer, [text], 64)
    plan = plan_document(text, chunks, encoded)
    ids, mask = pad_batch([encoded[0].ids], 0)
    with adapters.using("summarise"), torch.no_grad():
        hidden = adapters.hidden_states(ids, mask)
        vectors = slot_vectors(hidden, [0] * len(plan.slots), plan.slots)
        n = len(plan.spans)
        expected = torch.sigmoid(summariser.scorer(vectors, position_features(torch.arange(n), torch.full((n,), n))))
    assert probs == pytest.approx(expected.tolist(), abs=1e-6)
    with adapters.using("summarise"), torch.no_grad():  # each sentence encoded on its own scores differently
        alone_vectors = pooled_in_batches(adapters, [s.text for s in plan.spans], 64, "mean")
        alone = torch.sigmoid(summariser.scorer(alone_vectors, position_features(torch.arange(n), torch.full((n,), n))))
    assert alone.tolist() != pytest.approx(probs, abs=1e-4)


def test_classifier_pools_every_chunk_of_a_document():
    adapters = AdapterSet(tiny_backbone("bert"))
    data = classify_data(12)
    chunked = [ClassifyExample(e.text, e.category, e.tags, (e.text, "the team report plan")) for e in data]
    result = train_classify(adapters, chunked[:8], chunked[8:], adapter_config("lora"), tiny_cfg(epochs=1))
    classifier = Classifier.from_result(result)
    assert classifier.shares_trunk() and classifier.first_chunks == result.head_config["first_chunks"] >= 16
    texts = [e.text for e in data[:4]]
    chunks = [[t, "the team report plan", "x y"] for t in texts]
    by_chunks = classifier.predict(adapters, ["ignored"] * 4, chunks=chunks)
    from kb_pipeline.tasks.classify import pooled_groups_in_batches

    with adapters.using("classify"):
        x = pooled_groups_in_batches(adapters, chunks, 64, "mean")
    lexical = classifier.lexical.probabilities(["ignored"] * 4) if classifier.lexical else None
    assert by_chunks == classifier.predict_vectors(x, lexical)  # every chunk is read, the last one too
    assert classifier.predict(adapters, texts) == classifier.predict(adapters, texts, chunks=[[t] for t in texts])
