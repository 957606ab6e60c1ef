"""kill -9 trials per phase: the share of trials after which the KB was consistent, and the time to recover.

    python benchmarks/faults.py                          # 100 trials per phase and backend
    python benchmarks/faults.py --trials 10 --backends sqlite --json

Each trial (tests/faults/harness.py) restores the phase's starting state, kills the phase's `kb`
command with SIGKILL (after a seeded delay within its calibrated run time, or at a named point inside
an index save / adapter promotion), re-runs it to completion and checks tests/faults/invariants.py:
integrity, no duplicates, vectors == stored embeddings == FAISS, `kb index check`, and documents,
vectors and search equal to a clean build of the same files. Recovery time is the re-run's wall time
in a warm process (a cold `kb` adds the torch/transformers import, 3-10 s on a busy 2-core box).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from faults import harness  # noqa: E402


def summarise(trials: list) -> dict:
    recover = sorted(t.recover_seconds for t in trials)
    return {
        "trials": len(trials),
        "killed": sum(t.killed for t in trials),
        "consistent": sum(t.consistent for t in trials),
        "consistent_share": round(sum(t.consistent for t in trials) / max(len(trials), 1), 4),
        "recover_median_s": round(statistics.median(recover), 3) if recover else None,
        "recover_max_s": round(recover[-1], 3) if recover else None,
        "leftovers": {k: sum(t.leftovers.get(k, 0) for t in trials) for k in (trials[0].leftovers if trials else {})},
        "violations": [f"seed {t.seed} ({t.where}): {t.violations}" for t in trials if not t.consistent][:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials per phase and backend")
    parser.add_argument("--phases", nargs="+", default=list(harness.PHASES), choices=harness.PHASES)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--docs", type=int, default=40, help="files in the test corpus")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="kb-faults-bench-") as tmp:
        root = Path(tmp)
        backbone_dir = harness.save_tiny_backbone(root / "tiny-bert")
        from kb_pipeline.backbone.loading import load_backbone

        backbone = load_backbone(str(backbone_dir), root / "models")
        for backend in args.backends:
            started = time.perf_counter()
            bench = harness.prepare(root / backend, backbone_dir, backend, n_docs=args.docs)
            try:
                for phase in args.phases:
                    trials = []
                    for seed in range(args.trials):
                        trials.append(harness.run_trial(bench, phase, seed, backbone=backbone))
                        if not args.json:
                            t = trials[-1]
                            print(f"  {backend} {phase} {seed}: {'ok ' if t.consistent else 'BAD'} killed={t.killed} "
                                  f"{t.where}; recover {t.recover_seconds:.2f}s", file=sys.stderr)
                    results[f"{backend}/{phase}"] = summarise(trials)
            finally:
                bench.kb.drop()
            results[f"{backend}/seconds"] = round(time.perf_counter() - started, 1)
        harness.ForkServer.shared(backbone_dir).close()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'backend/phase':<18} {'trials':>6} {'killed':>6} {'consistent':>10} {'recover median':>15} {'max':>7}  leftovers")
    for key, r in results.items():
        if key.endswith("/seconds"):
            continue
        print(f"{key:<18} {r['trials']:>6} {r['killed']:>6} {r['consistent_share']:>10.1%} "
              f"{r['recover_median_s']:>14.2f}s {r['recover_max_s']:>6.2f}s  {r['leftovers']}")
        for v in r["violations"]:
            print(f"    {v}")


if __name__ == "__main__":
    main()
