"""Shared fixtures: an isolated KB home per test and the storage backends (SQLite and Postgres)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

POSTGRES_ADMIN_URL = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("KB_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    """The tiny random BERT saved once per session as a model folder (tests point KB_BACKBONE at it)."""
    from tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture
def kb_home(tmp_path, monkeypatch) -> Path:
    """A fresh KB_HOME (SQLite) for one test; nothing leaks between tests."""
    home = tmp_path / "kbhome"
    monkeypatch.setenv("KB_HOME", str(home))
    monkeypatch.delenv("KB_DATABASE_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    return home


def _postgres_database() -> str:
    """Create an empty database on the test server and return its URL (skip or fail if unreachable)."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"kb_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        message = f"Postgres not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}"
        if REQUIRE_POSTGRES:
            pytest.fail(message)
        pytest.skip(message)
    finally:
        admin.dispose()
    return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(url: str) -> None:
    import sqlalchemy as sa

    from kb_pipeline.store.db import dispose_engines

    dispose_engines()
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, kb_home, monkeypatch) -> str:
    """Run a storage test on both backends; yields the database URL in use."""
    if request.param == "sqlite":
        yield f"sqlite:///{kb_home / 'kb.sqlite3'}"
        from kb_pipeline.store.db import dispose_engines

        dispose_engines()
        return
    url = _postgres_database()
    monkeypatch.setenv("KB_DATABASE_URL", url)
    try:
        yield url
    finally:
        _drop_postgres_database(url)


@pytest.fixture
def settings(backend):
    """Settings for an initialised, empty knowledge base on the current backend."""
    from kb_pipeline.config import Settings
    from kb_pipeline.store.db import upgrade

    s = Settings.from_env()
    assert s.database_url == backend
    upgrade(s.database_url)
    return s
