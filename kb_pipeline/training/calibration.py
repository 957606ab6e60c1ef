"""Decision rules of a trained classifier, set on documents its heads did not learn from.

- tuning rows: every training document scored out-of-fold (head_folds.py, and the lexical model k-fold)
  plus the validation documents scored by the trained heads;
- the category temperature (MIN_VAL documents), the abstain threshold and the lexical fusion weights
  (MIN_VAL_FUSION) come from the validation documents alone: out-of-fold heads on vectors of an adapter
  trained on the same documents are over-confident, and would make the classifier look better calibrated
  (and the abstain cut-off higher) than it is;
- per-tag thresholds come from all tuning rows, with the floors of thresholds.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from kb_pipeline.training import head_folds, lexical, thresholds
from kb_pipeline.training.base import ClassifyExample
from kb_pipeline.training.metrics import (
    expected_calibration_error,
    macro_f1_multilabel,
    micro_f1_multilabel,
    per_label_scores,
)

MIN_VAL = 30  # labelled validation documents needed to fit a temperature or an abstain point on them alone
MIN_VAL_FUSION = 10  # ... to choose the lexical fusion weights (else the lexical model is not used)
MIN_LEXICAL = 10  # labelled training documents needed to fit the lexical model
WEIGHTS = np.round(np.arange(0.0, 1.01, 0.1), 2)


def _nll(p: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if p.size else 0.0


def _best_weight(loss, neural, lexical_p, truth) -> float:
    """The fusion weight with the lowest loss (ties to the smaller weight: the neural heads alone)."""
    return float(min(WEIGHTS, key=lambda w: (round(loss((1 - w) * neural + w * lexical_p, truth), 6), w)))


def calibrate(classifier, state: dict[str, Tensor], train: Sequence[ClassifyExample], val: Sequence[ClassifyExample],
              x_train: Tensor, x_val: Tensor, seed: int = 0) -> dict:
    """Fill classifier.config's thresholds, temperature, abstain point and lexical model (tensors into `state`).

    Returns validation metrics of the calibrated classifier (tags F1, ECE, coverage/accuracy, tag shares).
    """
    config = classifier.config
    cat_index = {c: i for i, c in enumerate(config.categories)}
    rows = [i for i, e in enumerate(train) if e.category in cat_index]  # tuning rows: labelled training docs
    train = [train[i] for i in rows]
    x_train = x_train[rows]
    y_train = np.array([cat_index[e.category] for e in train])
    t_train = np.array([[t in e.tags for t in config.tags] for e in train], dtype=np.float64).reshape(len(train), -1)
    val_rows = [i for i, e in enumerate(val) if e.category in cat_index]
    y_val = np.array([cat_index[val[i].category] for i in val_rows], dtype=np.int64)
    t_val = np.array([[t in e.tags for t in config.tags] for e in val], dtype=np.float64).reshape(len(val), -1)

    # neural scores: out-of-fold on training documents, the trained heads on validation documents
    oof_logits, oof_tags = head_folds.out_of_fold(
        x_train, torch.tensor(y_train), torch.tensor(t_train, dtype=torch.float32), len(config.categories), seed=seed
    )
    with torch.no_grad():
        val_logits, val_tag_logits = classifier.heads(x_val.float())
    val_logits = val_logits.double().numpy()
    val_tags = torch.sigmoid(val_tag_logits).double().numpy() if val_tag_logits is not None else t_val * 0
    enough_val = len(val_rows) >= MIN_VAL
    if enough_val and (val_logits[val_rows].argmax(1) != y_val).any():  # all right: NLL falls as T -> 0, no evidence
        config.temperature = float(np.clip(thresholds.fit_temperature(val_logits[val_rows], y_val), 0.25, 10.0))
    oof_p, val_p = thresholds.softmax(oof_logits, config.temperature), thresholds.softmax(val_logits, config.temperature)
    metrics = {"ece_uncalibrated": _ece(thresholds.softmax(val_logits[val_rows]), y_val), "temperature": config.temperature}

    # lexical evidence, fused where it lowers the validation loss
    if len(train) >= MIN_LEXICAL and len(val_rows) >= MIN_VAL_FUSION:
        texts = [e.text for e in train]
        lex_oof, lex_oof_tags = lexical.out_of_fold(texts, y_train, len(config.categories), t_train, seed=seed)
        lex_config, lex_state = lexical.fit(texts, y_train, len(config.categories), t_train)
        classifier.config.lexical = lex_config
        from kb_pipeline.tasks.lexical import LexicalModel

        lex_val, lex_val_tags = LexicalModel(lex_config, lex_state).probabilities([e.text for e in val])
        config.lexical_weight = _best_weight(_nll, val_p[val_rows], lex_val[val_rows], y_val)
        if config.tags:
            config.lexical_tag_weight = _best_weight(_bce, val_tags, lex_val_tags, t_val)
        if config.lexical_weight or config.lexical_tag_weight:
            state.update(lex_state)
            classifier.lexical = LexicalModel(lex_config, lex_state)
            w, wt = config.lexical_weight, config.lexical_tag_weight
            oof_p, val_p = (1 - w) * oof_p + w * lex_oof, (1 - w) * val_p + w * lex_val
            if config.tags:
                oof_tags, val_tags = (1 - wt) * oof_tags + wt * lex_oof_tags, (1 - wt) * val_tags + wt * lex_val_tags
        else:
            config.lexical = None
        metrics |= {"lexical_weight": config.lexical_weight, "lexical_tag_weight": config.lexical_tag_weight}

    # abstain: the confidence under which covered accuracy would fall below the target
    # (validation documents only: out-of-fold rows are confident and right, and would put the cut-off above
    # most new documents' confidence)
    conf_val, hit_val = val_p[val_rows].max(1), val_p[val_rows].argmax(1) == y_val
    config.abstain_below = thresholds.abstain_threshold(conf_val, hit_val) if len(val_rows) >= MIN_VAL_FUSION else 0.0
    covered = conf_val >= config.abstain_below
    metrics |= {
        "ece": _ece(val_p[val_rows], y_val),
        "abstain_below": config.abstain_below,
        "coverage": float(covered.mean()) if len(covered) else 0.0,
        "covered_accuracy": float(hit_val[covered].mean()) if covered.any() else 0.0,
    }

    # tags: thresholds on every tuning row
    if config.tags:
        scores, targets = np.concatenate([oof_tags, val_tags]), np.concatenate([t_train, t_val])
        config.thresholds = [float(t) for t in thresholds.tag_thresholds(scores, targets)]
        cut = np.asarray(config.thresholds)
        truth = [{t for j, t in enumerate(config.tags) if row[j]} for row in t_val]
        predicted = [{t for j, t in enumerate(config.tags) if row[j] >= cut[j]} for row in val_tags]
        tuned = [{t for j, t in enumerate(config.tags) if row[j] >= cut[j]} for row in scores]
        shares = per_label_scores([{t for j, t in enumerate(config.tags) if r[j]} for r in targets], tuned, config.tags)
        metrics |= {
            "tags_micro_f1": micro_f1_multilabel(truth, predicted),
            "tags_macro_f1": macro_f1_multilabel(truth, predicted, config.tags),
            "tags_never_predicted": int((cut > 1.0).sum()),
            # gold vs predicted share on all tuning documents (out-of-fold training + validation)
            "tag_shares": {t: {"gold": s["gold_share"], "predicted": s["predicted_share"], "precision": s["precision"],
                               "recall": s["recall"]} for t, s in shares.items()},
        }
    return metrics


def _ece(p: np.ndarray, labels: np.ndarray) -> float:
    return expected_calibration_error(p.max(1), p.argmax(1) == labels) if len(labels) else 0.0
