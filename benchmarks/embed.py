"""Which embed loss pays: the same BBC KB, the same screened pairs, one embed adapter per loss, side by side.

    python benchmarks/embed.py --limit 300 --opaque-titles            # titles are file ids (doc-000123)
    python benchmarks/embed.py --limit 300 --losses gist,mnrl,cached-mnrl,gist+hn,mnrl+hn --epochs 3

Writes BBC articles as Markdown (benchmarks/bbc.py's corpus), ingests them into a scratch KB, mines and
screens the embed pairs once (prints how many of each source were kept and why the rest were dropped),
then trains a fresh embed adapter for each loss (`+hn`: one FAISS-mined hard negative per pair) on the
same training pairs and prints the validation ranking of each (held-out documents' queries ranked among
validation and training passages, per source) beside the untuned backbone's. Validation documents are
never trained on, so this compares losses fairly; `benchmarks/bbc.py` gives the end-to-end search numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=300, help="BBC articles, stratified by topic (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opaque-titles", action="store_true", help="titles become file ids; headlines stay summaries")
    parser.add_argument("--losses", default="gist,mnrl,cached-mnrl,gist+hn", help="comma-separated, `+hn` = hard negatives")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the embed task's)")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    from benchmarks.bbc import write_corpus
    from kb_pipeline.backbone.adapters import AdapterSet
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.config import Settings
    from kb_pipeline.ingest.pipeline import ingest
    from kb_pipeline.store.db import session_factory, upgrade
    from kb_pipeline.tasks.embed import SPEC
    from kb_pipeline.training import embed
    from kb_pipeline.training.embed_pairs import accounting, describe
    from kb_pipeline.training.service import adapter_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="kb-embed-bench-") as tmp:
        os.environ["KB_HOME"] = str(Path(tmp) / "kb")
        settings = Settings.from_env()
        upgrade(settings.database_url)
        corpus = Path(tmp) / "bbc"
        info = write_corpus(corpus, args.limit, args.seed, args.opaque_titles)
        ingest(settings, [corpus])
        with session_factory(settings)() as session:
            split = embed.data(session)
        backbone = load_backbone(settings.backbone, settings.models_dir)
        cfg = SPEC.default_train
        cfg = replace(cfg, **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v})
        print(f"BBC{' (opaque titles)' if args.opaque_titles else ''}: {info['articles']} articles, "
              f"{split.train_docs} training / {split.val_docs} validation documents; backbone {backbone.name}; "
              f"epochs {cfg.epochs}, batch {cfg.batch_size}, max_length {cfg.max_length}, lr {cfg.lr}", flush=True)
        print(f"pairs before the similarity screen: {describe(accounting(split.train, split.val))}", flush=True)
        rows = []
        for name in args.losses.split(","):
            loss, hard = name.removesuffix("+hn"), name.endswith("+hn")
            adapters = AdapterSet(backbone)
            started = time.perf_counter()
            try:
                result = embed.train(adapters, split.train, split.val, adapter_config(SPEC, None, settings, backbone.num_layers),
                                     cfg, loss=loss, hard_negatives=hard)
            finally:
                adapters.close()
            rows.append((name, result, time.perf_counter() - started))
            print(f"{name}: nDCG@10 {result.metrics['ndcg@10']:.4f} vs untuned {result.baseline['ndcg@10']:.4f} "
                  f"({time.perf_counter() - started:.0f} s, best epoch {result.history.best_epoch})", flush=True)
        print(f"\npairs after the screen: {describe(rows[0][1].metrics['pairs'])}\n")
        print("| loss | source | queries | passages | nDCG@10 tuned | untuned | MRR@10 tuned | untuned | "
              "Recall@10 tuned | untuned | seconds |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, result, seconds in rows:
            sources = {"all": None, **result.metrics["by_source"]}
            for source, row in sources.items():
                tuned = result.metrics if row is None else row
                base = result.baseline if row is None else result.baseline["by_source"][source]
                count = sum(r["queries"] for r in result.metrics["by_source"].values()) if row is None else row["queries"]
                passages = "" if row is None else row["passages"]
                print(f"| {name} | {source} | {count} | {passages} | {tuned['ndcg@10']:.4f} | {base['ndcg@10']:.4f} | "
                      f"{tuned['mrr@10']:.4f} | {base['mrr@10']:.4f} | {tuned['recall@10']:.4f} | {base['recall@10']:.4f} | "
                      f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
