"""Metrics, losses, heads and the training loop against values computed by hand (no models needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kb_pipeline.backbone.heads import (
    ClassifierHead,
    SentenceScorer,
    build_head,
    head_state,
    l2_normalize,
    last_token_pool,
    load_head,
    mean_pool,
    position_features,
)
from kb_pipeline.training import losses
from kb_pipeline.training.loop import TrainConfig, shuffled_batches, train_loop, warmup_linear
from kb_pipeline.training.metrics import (
    accuracy,
    confusion_matrix,
    lcs_length,
    macro_f1,
    macro_f1_multilabel,
    mean_rouge,
    micro_f1_multilabel,
    mrr_at_k,
    ndcg_at_k,
    per_class_f1,
    recall_at_k,
    rouge_l,
    rouge_n,
    rouge_scores,
    tokenize,
    tune_thresholds,
)

approx = pytest.approx

# ----------------------------------------------------------------------------- classification


def test_accuracy():
    assert accuracy(["a", "b", "a", "c"], ["a", "b", "b", "c"]) == 0.75
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy(["a"], [])


def test_per_class_and_macro_f1():
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "b", "b", "a"]
    # a: tp=1 fp=1 (the c) fn=1 -> 2/(2+1+1) = 0.5
    # b: tp=2 fp=1 fn=0        -> 4/(4+1)   = 0.8
    # c: tp=0 fp=0 fn=1        -> 0
    assert per_class_f1(y_true, y_pred) == approx({"a": 0.5, "b": 0.8, "c": 0.0})
    assert macro_f1(y_true, y_pred) == approx(1.3 / 3)


def test_macro_f1_with_a_missing_class():
    # "d" is a known label that neither occurs nor is predicted: it scores 0 and still counts.
    y_true, y_pred = ["a", "b"], ["a", "b"]
    assert macro_f1(y_true, y_pred) == 1.0
    assert macro_f1(y_true, y_pred, labels=["a", "b", "d"]) == approx(2 / 3)


def test_confusion_matrix_rows_are_truth():
    matrix = confusion_matrix(["a", "a", "b", "c"], ["a", "b", "b", "a"], labels=["a", "b", "c"])
    assert matrix == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_multilabel_f1():
    truth = [{"x", "y"}, {"y"}, set()]
    pred = [{"x"}, {"y", "z"}, {"z"}]
    # pooled: tp = x,y = 2 ; fp = z,z = 2 ; fn = y = 1 -> 4/(4+2+1) = 4/7
    assert micro_f1_multilabel(truth, pred) == approx(4 / 7)
    # x: tp1 -> 1.0 ; y: tp1 fn1 -> 2/3 ; z: fp2 -> 0 ; mean = (1 + 2/3 + 0)/3 = 5/9
    assert macro_f1_multilabel(truth, pred) == approx(5 / 9)
    assert micro_f1_multilabel([set()], [set()]) == 0.0


def test_tune_thresholds_per_label():
    scores = np.array([[0.9, 0.2, 0.3], [0.7, 0.4, 0.1], [0.3, 0.6, 0.2], [0.1, 0.8, 0.4]])
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    grid = [0.2, 0.5, 0.65, 0.8]
    t = tune_thresholds(scores, targets, grid)
    # label 0: positives at 0.9, 0.7, negatives 0.3, 0.1: 0.5 and 0.65 both give F1 1; the tie goes to 0.5.
    # label 1: positive 0.6, negatives 0.2, 0.4, 0.8: t=0.5 -> tp1 fp1 = 2/3 ; t=0.2 -> tp1 fp2 = 0.5 ;
    #          t=0.65 -> 0 ; t=0.8 -> fp1 -> 0. Best 0.5.
    # label 2: no positives -> fallback 0.5.
    assert t.tolist() == [0.5, 0.5, 0.5]
    t2 = tune_thresholds(np.array([[0.3], [0.25], [0.1]]), np.array([[1], [1], [0]]), grid)
    # only t=0.2 catches both positives (F1 1); 0.5 catches none.
    assert t2.tolist() == [0.2]
    with pytest.raises(ValueError):
        tune_thresholds(np.zeros((2, 2)), np.zeros((2, 3)))


# ----------------------------------------------------------------------------- retrieval


def test_ndcg_recall_mrr():
    # one relevant item at rank 3: DCG = 1/log2(4) = 0.5, IDCG = 1/log2(2) = 1
    assert ndcg_at_k(["x", "y", "r", "z"], {"r"}) == approx(0.5)
    assert mrr_at_k(["x", "y", "r", "z"], {"r"}) == approx(1 / 3)
    assert recall_at_k(["x", "y", "r", "z"], {"r"}, k=2) == 0.0
    # two relevant at ranks 1 and 3: DCG = 1 + 0.5 ; IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}) == approx(1.5 / (1 + 1 / math.log2(3)))
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c"}, k=3) == approx(2 / 3)
    # relevant beyond k does not count
    assert ndcg_at_k(["x", "y", "r"], {"r"}, k=2) == 0.0
    assert mrr_at_k(["x", "y", "r"], {"r"}, k=2) == 0.0
    assert ndcg_at_k(["x"], set()) == 0.0


# ----------------------------------------------------------------------------- ROUGE


def test_tokenize_lowercases_words():
    assert tokenize("The Cat, the-cat!") == ["the", "cat", "the", "cat"]


def test_rouge_n_hand_computed():
    cand, ref = "the cat sat on the mat", "the cat was on the mat"
    # unigrams: cand {the:2 cat sat on mat}, ref {the:2 cat was on mat}: overlap 5 of 6 each
    assert rouge_n(cand, ref, 1) == approx({"p": 5 / 6, "r": 5 / 6, "f": 5 / 6})
    # bigrams: cand {the cat, cat sat, sat on, on the, the mat}; ref {the cat, cat was, was on, on the, the mat}
    # overlap = the cat, on the, the mat = 3 of 5
    assert rouge_n(cand, ref, 2) == approx({"p": 0.6, "r": 0.6, "f": 0.6})
    # clipped counts: "the the the" vs "the": overlap 1, p = 1/3, r = 1, f = 0.5
    assert rouge_n("the the the", "the", 1) == approx({"p": 1 / 3, "r": 1.0, "f": 0.5})
    assert rouge_n("", "the", 1)["f"] == 0.0


def test_rouge_l_hand_computed():
    # LCS("a b c d", "a c b d") = 3 (a b d or a c d): p = r = f = 3/4
    assert lcs_length("a b c d".split(), "a c b d".split()) == 3
    assert rouge_l("a b c d", "a c b d") == approx({"p": 0.75, "r": 0.75, "f": 0.75})
    # cand "a b" vs ref "a x b y": LCS 2, p = 1, r = 0.5, f = 2/3
    assert rouge_l("a b", "a x b y") == approx({"p": 1.0, "r": 0.5, "f": 2 / 3})


def test_rouge_scores_and_mean():
    s = rouge_scores("the cat sat on the mat", "the cat was on the mat")
    # LCS = the cat on the mat = 5 -> 5/6
    assert s == approx({"rouge1": 5 / 6, "rouge2": 0.6, "rougeL": 5 / 6})
    m = mean_rouge(["a b", "x"], ["a b", "y"])
    assert m == approx({"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5})


# ----------------------------------------------------------------------------- losses


def test_in_batch_contrastive_loss_matches_hand_softmax():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # sims: row0 = [1, 1], row1 = [0, 0] -> both rows are uniform over 2 -> CE = log 2 each
    assert losses.in_batch_contrastive_loss(q, p, scale=20.0).item() == approx(math.log(2))
    # perfect alignment with scale 20: row i = [20, 0] at the target -> CE = log(1 + e^-20)
    eye = torch.eye(2)
    assert losses.in_batch_contrastive_loss(eye, eye).item() == approx(math.log1p(math.exp(-20)), abs=1e-7)
    # same-document passages are not negatives: with groups masking, row0 sees only its target -> 0
    masked = losses.in_batch_contrastive_loss(q, p, groups=torch.tensor([7, 7]))
    assert masked.item() == approx(0.0, abs=1e-7)


def test_classification_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, -100])
    # only row 0 counts: -log(e^2 / (e^2 + 1))
    assert losses.cross_entropy(logits, labels).item() == approx(math.log1p(math.exp(-2)))
    # sigmoid(0) = 0.5 -> BCE = log 2 regardless of target
    assert losses.multilabel_bce(torch.zeros(2, 3), torch.tensor([[1, 0, 1], [0, 0, 1]])).item() == approx(math.log(2))


def test_lm_loss_shifts_and_ignores():
    vocab = 4
    logits = torch.zeros(1, 3, vocab)
    logits[0, 0, 2] = 10.0  # position 0 predicts token at position 1 = 2 (confident, right)
    labels = torch.tensor([[1, 2, -100]])  # position 0's own label and the last position are never targets
    expected = -torch.log_softmax(logits[0, 0], -1)[2]  # only one supervised token; position 1 -> -100
    assert losses.lm_loss(logits, labels).item() == approx(expected.item())


# ----------------------------------------------------------------------------- heads


def test_pooling_respects_mask():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]
    assert last_token_pool(hidden, mask).tolist() == [[3.0, 5.0]]
    left_padded = torch.tensor([[0, 1, 1]])
    assert last_token_pool(hidden, left_padded).tolist() == [[100.0, 100.0]]
    assert l2_normalize(torch.tensor([[3.0, 4.0]]))[0].tolist() == approx([0.6, 0.8])


def test_heads_round_trip_through_config_and_tensors():
    torch.manual_seed(0)
    head = ClassifierHead(8, 3, inner=16).eval()
    x = torch.randn(5, 8)
    rebuilt = load_head(head.config(), head_state(head, "category."), "category.")
    assert torch.equal(rebuilt(x), head(x))
    scorer = SentenceScorer(8, inner=4).eval()
    pos = position_features(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3]))
    assert pos.flatten().tolist() == approx([0.0, 1.0, 0.5, 0.5, 1.0, 1 / 3])
    assert scorer(torch.randn(3, 8), pos).shape == (3,)
    assert isinstance(build_head(scorer.config()), SentenceScorer)
    with pytest.raises(ValueError):
        build_head({"type": "nope"})


# ----------------------------------------------------------------------------- loop


def test_shuffled_batches_reproducible_and_complete():
    a = shuffled_batches(list(range(10)), 4, epoch=1, seed=3)
    assert a == shuffled_batches(list(range(10)), 4, epoch=1, seed=3)
    assert [len(b) for b in a] == [4, 4, 2]
    assert sorted(x for b in a for x in b) == list(range(10))
    assert a != shuffled_batches(list(range(10)), 4, epoch=2, seed=3)


def test_warmup_then_linear_decay():
    f = warmup_linear(10, 0.2)  # 2 warm-up steps, then 8 decaying ones
    assert [f(s) for s in (0, 1, 2, 6, 9)] == approx([0.5, 1.0, 1.0, 0.5, 1 / 8])
    assert warmup_linear(10, 0.0)(0) == 1.0


def test_train_loop_keeps_best_and_stops_early():
    w = torch.nn.Parameter(torch.tensor([0.0]))
    # a scripted validation curve: best at epoch 1, then no improvement for 2 epochs -> stop
    curve = iter([0.1, 0.9, 0.5, 0.4, 0.95])
    snapshots = []

    def validate():
        snapshots.append(w.item())
        return {"score": next(curve)}

    steps = []
    cfg = TrainConfig(epochs=5, lr=0.1, patience=2, grad_clip=None, warmup_ratio=0.0)
    history = train_loop(
        [w], lambda batch: ((w - 5.0) ** 2).sum(), lambda epoch: [0, 1], validate, "score", cfg,
        on_step=lambda s, total, loss: steps.append((s, total)),
    )
    assert history.best_epoch == 1 and history.stopped_early
    assert len(history.val) == 4 and len(history.losses) == 8
    assert w.item() == approx(snapshots[1])  # restored to the best epoch's weights
    assert steps[0] == (1, 10) and steps[-1] == (8, 10)
    assert history.losses[-1] < history.losses[0]


def test_train_loop_max_steps_and_missing_metric():
    w = torch.nn.Parameter(torch.tensor([0.0]))
    cfg = TrainConfig(epochs=3, max_steps=3)
    history = train_loop([w], lambda b: (w**2 + w).sum(), lambda e: [0, 1], lambda: {"m": 0.0}, "m", cfg)
    assert len(history.losses) == 3 and len(history.val) == 2
    with pytest.raises(KeyError, match="selection metric"):
        train_loop([w], lambda b: (w**2).sum(), lambda e: [0], lambda: {"other": 1.0}, "m", cfg)
    with pytest.raises(ValueError, match="no trainable"):
        train_loop([], lambda b: w.sum(), lambda e: [0], lambda: {"m": 0.0}, "m", cfg)
