"""kill -9 at seeded points during ingest, enrich, index save and promotion; the re-run must leave a
consistent KB equal to a clean build of the same files (SQLite and Postgres)."""

from __future__ import annotations

import pytest

from faults import harness
from faults.conftest import trials_per_phase


def pytest_generate_tests(metafunc):
    if "trial_case" in metafunc.fixturenames:
        cases = []
        for backend in ("sqlite", "postgres"):
            marks = [pytest.mark.postgres] if backend == "postgres" else []
            for phase, n in trials_per_phase(metafunc.config).items():
                cases += [pytest.param((backend, phase, seed), id=f"{backend}-{phase}-{seed}", marks=marks)
                          for seed in range(n)]
        metafunc.parametrize("trial_case", cases)


def test_kill9_then_rerun_leaves_a_consistent_kb(trial_case, bench_for, tiny_backbone):
    backend, phase, seed = trial_case
    trial = harness.run_trial(bench_for(backend), phase, seed, backbone=tiny_backbone)
    print(f"{backend} {phase} seed {seed}: killed={trial.killed} at {trial.where}; "
          f"recovered in {trial.recover_seconds:.1f}s; leftovers {trial.leftovers}")
    assert trial.violations == [], f"after a kill at {trial.where}: {trial.violations}"
