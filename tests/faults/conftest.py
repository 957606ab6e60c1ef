"""Fault-injection fixtures: one prepared KB per backend (session-scoped), the trial count option."""

from __future__ import annotations

import os

import pytest

from faults import harness

# CI default: kill trials per phase and backend (4 phases x 2 backends -> 22 trials in all)
DEFAULT_TRIALS = {"ingest": 3, "enrich": 3, "index": 3, "train": 2}


def pytest_addoption(parser):
    parser.addoption("--fault-trials", type=int, default=int(os.environ.get("KB_FAULT_TRIALS", 0)) or None,
                     help="kill -9 trials per phase and backend in tests/faults (default: 3/3/3/2)")


def trials_per_phase(config) -> dict[str, int]:
    n = config.getoption("--fault-trials")
    return {phase: n for phase in DEFAULT_TRIALS} if n else dict(DEFAULT_TRIALS)


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory):
    return harness.save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_backbone(backbone_dir):
    from kb_pipeline.backbone.loading import load_backbone

    return load_backbone(str(backbone_dir), backbone_dir.parent / "models")


def postgres_or_skip() -> None:
    """Skip (or fail under KB_REQUIRE_POSTGRES=1) when the test Postgres server is not there."""
    import sqlalchemy as sa

    try:
        harness.PostgresAdmin().execute("SELECT 1")
    except sa.exc.OperationalError as exc:
        message = f"Postgres not reachable at {harness.POSTGRES_ADMIN_URL}: {exc.orig}"
        if os.environ.get("KB_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)


_benches: dict[str, harness.Bench] = {}


@pytest.fixture(scope="session")
def benches(tmp_path_factory):
    """Prepared KBs by backend, built on first use and dropped at the end of the session."""
    yield _benches
    for bench in _benches.values():
        bench.kb.drop()
    if harness.ForkServer._shared is not None:
        harness.ForkServer._shared.close()


@pytest.fixture
def bench_for(benches, backbone_dir, tmp_path_factory):
    def get(backend: str) -> harness.Bench:
        if backend == "postgres":
            postgres_or_skip()
        if backend not in benches:
            benches[backend] = harness.prepare(tmp_path_factory.mktemp(f"faults-{backend}"), backbone_dir, backend)
        return benches[backend]

    return get
