"""Query encoding: torch (the live AdapterSet) vs the ONNX fast path, float32 and int8, on real MiniLM.

    python benchmarks/query_encoder.py                 # 300 BBC headlines, one query per call, one thread
    python benchmarks/query_encoder.py --queries 100 --threads 2

Per variant: p50/p95 of one `embed([headline])` call, and the cosine of each vector to torch's (min, mean): the
fast path must keep every query's cosine >= 0.999 (tests/test_query_path_encoder.py checks the same on a tiny
BERT). The variants take turns query by query, so machine load falls on all of them alike. The untuned backbone
is what is encoded (no adapter is trained here); an adapter's LoRA is merged exactly, so it changes nothing below.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402

import benchmarks  # noqa: E402,F401  (offline: sets HF_HUB_OFFLINE and friends before HF imports)
from benchmarks.bbc_data import load_bbc, stratified_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from kb_pipeline.backbone.adapters import AdapterSet
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.search.query_encoder import QueryEncoder
    from kb_pipeline.tasks.embed import EMBED_MAX_LENGTH, embed_texts

    torch.set_num_threads(args.threads)
    adapters = AdapterSet(load_backbone("minilm"))
    torch_embed = lambda texts: embed_texts(adapters, texts, None, max_length=EMBED_MAX_LENGTH)  # noqa: E731
    queries = [d.headline for d in stratified_sample(load_bbc(), args.queries, 1)]
    cache = Path(tempfile.mkdtemp(prefix="kb-qe-bench-"))
    variants = {"torch": torch_embed}
    for quantize in (False, True):
        start = time.perf_counter()
        encoder = QueryEncoder(adapters, None, cache, torch_embed, max_length=EMBED_MAX_LENGTH, quantize=quantize,
                               background=False)
        name = "onnx int8" if quantize else "onnx fp32"
        print(f"{name}: export {time.perf_counter() - start:.1f}s, {encoder.status}", file=sys.stderr)
        if encoder.fast:
            variants[name] = encoder.embed
    reference = torch_embed(queries)
    names = list(variants)
    for q in queries[:10]:
        for n in names:
            variants[n]([q])
    ms = {n: [] for n in names}
    vecs = {n: [] for n in names}
    for i, q in enumerate(queries):
        for n in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter()
            v = variants[n]([q])
            ms[n].append((time.perf_counter() - start) * 1000)
            vecs[n].append(v[0])
    print(f"{len(queries)} BBC headlines, one per call, {args.threads} thread(s); load avg {os.getloadavg()[:2]}")
    print(f"{'':10} {'p50 ms':>8} {'p95 ms':>8} {'vs torch p50':>12} {'min cos':>9} {'mean cos':>9}")
    base = np.percentile(ms["torch"], 50)
    for n in names:
        cos = np.einsum("ij,ij->i", np.array(vecs[n]), reference)
        print(f"{n:10} {np.percentile(ms[n], 50):8.2f} {np.percentile(ms[n], 95):8.2f} "
              f"{np.percentile(ms[n], 50) / base:12.3f} {cos.min():9.5f} {cos.mean():9.5f}")


if __name__ == "__main__":
    main()
