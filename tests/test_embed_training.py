"""The embed trainer on a tiny random BERT: sentence-transformers losses learn, validation is per source, noise stays out."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
from kb_pipeline.tasks.spec import TrainConfig
from kb_pipeline.training import embed
from kb_pipeline.training.base import InsufficientData
from kb_pipeline.training.embed_pairs import MinedPair, distractors, flag_static
from tiny_models import single_threaded, tiny_bert_backbone

TOPICS = "password backup revenue payroll laptop expenses badge travel".split()
FILLER = "the team report plan page link week guide notes search policy meeting owner item".split()


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


def toy_pairs(seed: int = 0) -> tuple[list[MinedPair], list[MinedPair]]:
    """Per topic document: a summary naming the topic, a heading naming it, and an id-like title (noise)."""
    rng = random.Random(seed)
    train, val = [], []
    for i, topic in enumerate(TOPICS):
        doc = f"doc-{topic}"
        passage = f"The {topic} guide: {' '.join(rng.choice(FILLER) for _ in range(5))} {topic}."
        pairs = [
            MinedPair(f"how do I handle {topic} {rng.choice(FILLER)}", passage, doc, source="summary"),
            MinedPair(f"{topic} steps", f"Steps for {topic}: {' '.join(rng.choice(FILLER) for _ in range(4))}.", doc,
                      source="heading"),
            MinedPair(f"IMG_{2040 + i}", passage, doc, source="title"),
        ]
        (val if i % 4 == 0 else train).extend(pairs)
    flag_static([*train, *val])
    return train, val + distractors(train)


def cfg(**changes) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=6, batch_size=8, lr=3e-2, patience=10, seed=0, max_length=48), **changes})


def config() -> AdapterConfig:
    return AdapterConfig(kind="lora", rank=4, alpha=8, dropout=0.0)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def summary_pairs(seed: int = 0) -> list[MinedPair]:
    """Two written queries per topic document: separable by the topic word they share with their passage."""
    rng = random.Random(seed)
    return [MinedPair(f"how do I handle {t} {rng.choice(FILLER)}", f"The {t} guide: {words(rng, 5)} {t}.", f"doc-{t}",
                      source="summary") for t in TOPICS for _ in range(2)]


@pytest.mark.parametrize("loss,hard", [("gist", False), ("mnrl", True), ("cached-mnrl", False)])
def test_sentence_transformers_losses_train_the_adapter(loss, hard):
    data = summary_pairs()
    # validated on some of its own training pairs: unseen topics of a random tiny model are no test of generalisation
    result = embed.train(AdapterSet(tiny_bert_backbone()), data, data[::2], config(), cfg(), loss=loss, hard_negatives=hard)
    losses = result.history.losses
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert result.metrics["objective"] == loss and result.metrics["hard_negatives"] is hard
    assert result.metrics["ndcg@10"] > result.baseline["ndcg@10"], (result.metrics, result.baseline)


def test_validation_is_reported_per_source_and_noise_never_reaches_it():
    train, val = toy_pairs()
    result = embed.train(AdapterSet(tiny_bert_backbone()), train, val, config(), cfg(epochs=1))
    tuned, untuned = result.metrics["by_source"], result.baseline["by_source"]
    assert set(tuned) == set(untuned) == {"summary", "heading"}  # the IMG_ titles were dropped: no title ranking
    assert tuned["summary"]["queries"] == 2 and tuned["summary"]["passages"] == 8  # 2 validation + 6 training passages
    for metric in embed.METRICS:
        weighted = sum(row[metric] * row["queries"] for row in tuned.values()) / 4
        assert result.metrics[metric] == pytest.approx(weighted)
    pairs = result.metrics["pairs"]
    assert pairs["title"] == {"mined": 8, "kept": 0, "kept_train": 0, "kept_val": 0, "dropped": {"id-like": 8}}
    assert pairs["summary"]["kept"] == 8 and pairs["summary"]["kept_val"] == 2


def test_evaluate_pairs_matches_hand_ranking_with_the_untuned_model():
    """One query whose passage the untuned model ranks first scores 1.0; a query ranked below another passage less."""
    adapters = AdapterSet(tiny_bert_backbone())
    val = [MinedPair("password reset", "password reset page", "a", source="summary"),
           MinedPair("payroll", "payroll dates", "b", source="summary")]
    scores = embed.evaluate_pairs(adapters, val, None, 32)
    vectors = embed.AdapterEncoder(adapters, None, 32).encode(["password reset", "payroll", "password reset page",
                                                               "payroll dates"])
    sims = vectors[:2] @ vectors[2:].T
    expected = np.mean([1.0 if sims[i, i] >= sims[i, 1 - i] else 1 / np.log2(3) for i in range(2)])
    assert scores["by_source"]["summary"]["ndcg@10"] == pytest.approx(expected)


def test_batches_hold_one_pair_per_document_and_every_pair_once():
    items = [(doc, i) for doc in "abcde" for i in range(3)]
    batches = embed.no_duplicate_batches(items, [d for d, _ in items], 4, epoch=1, seed=0)
    assert sorted(x for b in batches for x in b) == sorted(items)
    assert all(len({d for d, _ in b}) == len(b) for b in batches)


def test_hard_negatives_come_from_other_documents_and_skip_near_positives():
    pairs = [MinedPair(f"q{i}", f"p{i}", doc, source="summary") for i, doc in enumerate("aabc")]
    q = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0]], dtype=np.float32)
    p = np.array([[0.9, 0.1, 0], [0.1, 0.9, 0], [0.99, 0, 0.1], [0.5, 0.5, 0.7]], dtype=np.float32)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    negatives = embed.mine_hard_negatives(pairs, q, p)
    # q0's own doc holds p1; p2 is closer to q0 than its positive (a likely unlabelled positive), so p3 is chosen
    assert negatives[0] == "p3"
    assert all(neg not in {x.passage for x in pairs if x.doc_key == pair.doc_key} for pair, neg in zip(pairs, negatives))


def test_all_pairs_dropped_is_insufficient_data_naming_the_reasons():
    pairs = [MinedPair(f"IMG_{i}", f"passage {i}", str(i), source="title") for i in range(4)]
    flag_static(pairs)
    with pytest.raises(InsufficientData, match=r"found 0 pairs.*title 0/4 kept \(id-like 4\)"):
        embed.check_data(pairs[:3], pairs[3:])


def test_encoder_gives_sentence_transformers_what_it_calls():
    adapters = AdapterSet(tiny_bert_backbone())
    encoder = embed.AdapterEncoder(adapters, None, 32)
    features = encoder.preprocess(["a short text", "another somewhat longer text"])
    out = encoder(features)["sentence_embedding"]
    assert out.shape == (2, adapters.backbone.hidden_size) and encoder[0] is encoder
    np.testing.assert_allclose(torch.nn.functional.normalize(out, dim=-1).detach().numpy(),
                               encoder.encode(["a short text", "another somewhat longer text"]), atol=1e-5)
