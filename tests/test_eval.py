"""`kb eval`: the split, the scores and baselines against hand-computed values, and a whole eval on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb_pipeline.cli import app
from kb_pipeline.config import Settings
from kb_pipeline.evaluation import baselines
from kb_pipeline.evaluation.errors import EvalError
from kb_pipeline.evaluation.scoring import category_scores, retrieval_scores, tag_scores
from kb_pipeline.evaluation.split import GoldDoc, check_corpus, choose_test, split_fraction
from kb_pipeline.training.baselines import most_frequent_category, most_frequent_tagset
from kb_pipeline.training.metrics import wilson_interval

approx = pytest.approx


# ----------------------------------------------------------------------------- metrics by hand


def test_wilson_interval_hand_computed():
    # 8 of 10: p = 0.8, z = 1.96; centre = (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half = 1.96 * sqrt(0.016 + 0.0096037) / 1.38415 = 0.22658  ->  [0.4902, 0.9433]
    lo, hi = wilson_interval(8, 10)
    assert lo == approx(0.4902, abs=1e-4) and hi == approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 5)  # all correct: the upper end is 1, the lower end well below it
    assert hi == approx(1.0) and lo == approx(5 / (5 + 1.959963984540054**2))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_category_scores_hand_computed():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    s = category_scores(truth, pred, ["a", "b", "c"])
    assert s["n"] == 6 and s["accuracy"] == approx(4 / 6)
    # a: tp 2 fp 0 fn 1 -> 4/5; b: tp 1 fp 1 fn 1 -> 2/4; c: tp 1 fp 1 fn 0 -> 2/3
    assert s["per_class_f1"] == {"a": approx(0.8), "b": approx(0.5), "c": approx(2 / 3)}
    assert s["macro_f1"] == approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s["confusion_labels"] == ["a", "b", "c"]
    assert s["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert s["accuracy_ci95"] == approx(list(wilson_interval(4, 6)))


def test_category_scores_count_a_predicted_class_absent_from_gold():
    s = category_scores(["a", "a"], ["a", "z"], ["a"])
    assert s["confusion_labels"] == ["a", "z"] and s["confusion_matrix"] == [[1, 1], [0, 0]]
    assert s["per_class_f1"] == {"a": approx(2 / 3)}  # per class: the gold classes
    assert s["macro_f1"] == approx((2 / 3 + 0.0) / 2)  # macro: gold or predicted, as sklearn


def test_tag_scores_hand_computed():
    truth = [{"x", "y"}, {"y"}]
    pred = [{"x"}, {"y", "z"}]
    s = tag_scores(truth, pred)
    # pooled: tp 2 (x, y), fp 1 (z), fn 1 (y of doc 0) -> 4/6
    assert s["micro_f1"] == approx(2 / 3)
    # x: 1,0,0 -> 1; y: tp 1 fn 1 -> 2/3; z: fp 1 -> 0
    assert s["macro_f1"] == approx((1 + 2 / 3 + 0) / 3)


def test_retrieval_scores_hand_computed():
    rankings = [[7, 1, 2], [3, 9], [4, 5, 6]]
    relevant = [7, 9, 8]  # rank 1, rank 2, missing
    s = retrieval_scores(rankings, relevant, k=10)
    assert s["n"] == 3
    assert s["ndcg@10"] == approx((1 + 1 / math.log2(3) + 0) / 3)
    assert s["mrr@10"] == approx((1 + 0.5 + 0) / 3)
    assert s["recall@1"] == approx(1 / 3) and s["recall@10"] == approx(2 / 3)
    assert retrieval_scores([], [])["ndcg@10"] == 0.0


# ----------------------------------------------------------------------------- baselines


def test_majority_baselines_are_reproducible():
    assert most_frequent_category(["b", "a", "b", "a", "c"]) == "a"  # tie -> alphabetical
    assert most_frequent_category(["b", "b", "a"]) == "b"
    sets = [("x",), ("x", "y"), ("y", "x"), ("z",)]
    assert most_frequent_tagset(sets) == frozenset({"x", "y"})
    assert most_frequent_tagset([]) == frozenset()


def test_tfidf_logreg_learns_separable_words():
    train = ["apple banana fruit"] * 3 + ["engine wheel car"] * 3
    labels = ["food"] * 3 + ["auto"] * 3
    assert baselines.tfidf_logreg_categories(train, labels, ["banana split", "car wheel"]) == ["food", "auto"]
    tags = [("fruit",)] * 3 + [("vehicle", "metal")] * 3
    assert baselines.tfidf_logreg_tags(train, tags, ["apple", "engine"]) == [
        frozenset({"fruit"}), frozenset({"vehicle", "metal"})]
    assert baselines.tfidf_logreg_tags(train, [("once",)] + [()] * 5, ["apple"]) == [frozenset()]  # too rare


def test_bm25_ranks_the_document_with_the_query_terms_first():
    ranked = baselines.bm25_rankings([10, 11, 12], ["cats purr softly", "dogs bark loudly", "birds sing"],
                                     ["bark dogs", "purring cats"], k=2)
    assert ranked[0][0] == 11 and ranked[1][0] == 10 and all(len(r) == 2 for r in ranked)


def test_lead_summaries_take_the_first_sentences():
    text = "First point. Second point. Third point. Fourth point."
    assert baselines.lead_summaries([text]) == ["First point. Second point. Third point."]


# ----------------------------------------------------------------------------- split


def gold(i: int, category: str | None, uri: str | None = None) -> GoldDoc:
    return GoldDoc(i, uri or f"doc-{i}.md", f"t{i}", "text", category, (), None)


def test_split_is_stratified_deterministic_and_keeps_each_category_in_training():
    docs = [gold(i, "a" if i < 10 else "b") for i in range(15)] + [gold(99, "c"), gold(100, None)]
    test = choose_test(docs, 0.2)
    assert choose_test(list(reversed(docs)), 0.2) == test  # order does not matter
    assert len([d for d in docs if d.doc_id in test and d.category == "a"]) == 2
    assert len([d for d in docs if d.doc_id in test and d.category == "b"]) == 1
    assert 99 not in test and 100 not in test  # a lone category stays in training; unlabelled never held out
    a_docs = sorted((d for d in docs if d.category == "a"), key=lambda d: split_fraction(d.uri))
    assert {d.doc_id for d in a_docs[:2]} <= test


def test_test_glob_and_its_errors():
    docs = [gold(i, "a" if i % 2 else "b", f"{'held' if i < 2 else 'train'}/d{i}.md") for i in range(10)]
    assert choose_test(docs, test_glob="held/*") == {0, 1}
    with pytest.raises(EvalError, match="matches no labelled document"):
        choose_test(docs, test_glob="nowhere/*")
    with pytest.raises(EvalError, match="leaves 0 categories"):
        choose_test(docs, test_glob="*")


def test_too_few_labelled_documents_is_a_clear_error(tmp_path):
    with pytest.raises(EvalError, match=r"at least 8 documents with a `category`.*found 3 documents, 2 with"):
        check_corpus([gold(1, "a"), gold(2, "b"), gold(3, None)], tmp_path)
    check_corpus([gold(i, "a" if i % 2 else "b") for i in range(8)], tmp_path)


# ----------------------------------------------------------------------------- end to end on a tiny model

TOPICS = {
    "hr": ("leave", ["policy", "people"], "Staff request annual leave and holidays through the people portal."),
    "engineering": ("deploy", ["runbook", "release"], "Engineers deploy services and roll back failed releases."),
    "finance": ("invoice", ["policy", "money"], "Invoices are approved by budget owners and paid monthly."),
}


def labelled_corpus(root: Path, per_category: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for category, (word, tags, summary) in TOPICS.items():
        for i in range(per_category):
            body = " ".join(f"{summary} Step {j} of the {word} process for team {i}." for j in range(4))
            front = (f"---\ntitle: {word.title()} guide {i}\ncategory: {category}\ntags: [{', '.join(tags)}]\n"
                     f"summary: {summary} Version {i}.\n---\n")
            text = f"{front}# {word.title()} guide {i}\n\n{body}\n\n## Details\n\n{body}\n"
            (root / f"{category}-{i}.md").write_text(text)
    (root / "unlabelled.md").write_text("# Notes\n\nA page without any labels about the office coffee machine.\n")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny():
    from tiny_models import tiny_bert_backbone

    return tiny_bert_backbone()


def test_eval_writes_every_file_and_leaves_the_users_kb_alone(kb_home, tmp_path, tiny):
    from kb_pipeline.evaluation.plots import PLOTS
    from kb_pipeline.evaluation.run import run_eval
    from kb_pipeline.store.db import dispose_engines, upgrade
    from kb_pipeline.training.loop import TrainConfig
    from tiny_models import single_threaded

    settings = Settings.from_env()
    upgrade(settings.database_url)  # the user's own, initialised KB
    dispose_engines()
    before = snapshot(kb_home)
    corpus = labelled_corpus(tmp_path / "corpus")
    out = tmp_path / "report"
    stages = []
    quick = TrainConfig(epochs=1, batch_size=4, max_length=32, max_steps=4, lr=5e-3)
    with single_threaded():
        metrics = run_eval(corpus, out, settings=settings, backbone=tiny, train_config=quick,
                           on_stage=lambda name, i, n: stages.append(name))
    dispose_engines()

    assert snapshot(kb_home) == before  # no file added, removed or changed under KB_HOME
    assert stages[:3] == ["ingest", "train", "enrich"] and stages[-1] == "done"
    for name in ["report.md", "metrics.json", *PLOTS.values()]:
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics, default=str))

    split = metrics["split"]
    assert split["documents"] == 19 and split["test"] == 3 and split["train"] == 16  # 1 of 6 per category
    assert split["test_with_summary"] == 3
    for task in ("classify", "embed", "summarise"):
        assert task in metrics["training"]
    c = metrics["classification"]
    assert c["n"] == 3 and c["classes"] == sorted(c["support"])
    model = c["model"]["category"]
    assert 0.0 <= model["accuracy"] <= 1.0 and 0.0 <= model["macro_f1"] <= 1.0
    assert sum(map(sum, model["confusion_matrix"])) == 3
    assert 0.0 <= c["model"]["tags"]["micro_f1"] <= 1.0
    assert c["baselines"]["majority"]["category"]["accuracy"] == approx(1 / 3)
    assert set(c["baselines"]) == {"majority", "tfidf_logreg"}
    s = metrics["search"]
    assert s["queries"] == 3 and s["documents"] == 19
    assert {"keyword", "bm25", "dense_untuned", "hybrid_untuned"} <= {k for k, v in s["modes"].items() if v}
    for entry in filter(None, s["modes"].values()):
        for key in ("ndcg@10", "mrr@10", "recall@1", "recall@10"):
            assert 0.0 <= entry[key] <= 1.0
        assert entry["recall@1"] <= entry["recall@10"]
    assert s["modes"]["bm25"]["recall@10"] == 1.0  # 19 documents: the right one is always in a top 10 of BM25
    r = metrics["summaries"]
    assert r["n"] == 3 and 0.0 < r["baselines"]["lead"]["rouge1"] <= 1.0
    assert r["model"] is not None, r.get("model_note")  # the summarise adapter was trained and scored
    assert 0.0 <= r["model"]["rougeL"] <= 1.0
    assert len(r["examples"]) == 3 and all(e["predicted"] for e in r["examples"])  # each test document summarised
    report = (out / "report.md").read_text()
    for heading in ("## Classification", "## Search", "## Summaries", "## Training", "## Versions"):
        assert heading in report
    assert tiny.weights_hash in report and "majority class" in report and "BM25" in report


def test_cli_eval_of_a_folder_without_labels_fails_clearly(kb_home, tmp_path):
    corpus = tmp_path / "plain"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"note-{i}.md").write_text(f"# Note {i}\n\nNothing labelled here.\n")
    result = CliRunner().invoke(app, ["eval", str(corpus), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 1
    assert str(corpus) in result.output and "category" in result.output
    assert result.stdout.strip() == ""  # nothing half-printed on stdout
    assert not (tmp_path / "out").exists() and not kb_home.exists()


def test_cli_eval_refuses_a_missing_folder_and_an_out_dir_inside_the_corpus(kb_home, tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nope"), "--json"])
    assert result.exit_code == 1 and "no such folder" in result.output
    corpus = tmp_path / "c"
    corpus.mkdir()
    result = CliRunner().invoke(app, ["eval", str(corpus), "--out", str(corpus / "report")])
    assert result.exit_code == 1 and "inside the corpus folder" in result.output


def test_cli_eval_json_prints_metrics_json(kb_home, tmp_path, tiny, monkeypatch):
    from kb_pipeline.evaluation import run
    from tiny_models import single_threaded

    monkeypatch.setattr(run, "_load_backbone", lambda settings, scratch: tiny)
    corpus = labelled_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    with single_threaded():
        result = CliRunner().invoke(app, ["eval", str(corpus), "--out", str(out), "--epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "metrics.json").read_text())
    assert printed["command"] == f"kb eval {corpus} --out {out} --epochs 1"
    assert all(info["train_config"]["epochs"] == 1 for info in printed["training"].values() if info["trained"])
    assert not kb_home.exists()

