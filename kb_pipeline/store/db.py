"""The only place engines and sessionmakers are made, and where the schema version is enforced."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kb_pipeline.config import Settings
from kb_pipeline.errors import NotInitialised as SchemaError  # noqa: E402,F401  (the one error type)


def migrations_dir() -> Path:
    """Top-level migrations/ in a checkout; the same folder installed as kb_pipeline.migrations."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").exists():
        return checkout
    import kb_pipeline.migrations as installed

    return Path(installed.__file__).parent


_ENGINES: list[Engine] = []  # what get_engine's cache holds, so dispose_engines can close them


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@functools.lru_cache(maxsize=8)
def get_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _ENGINES.append(engine)
    return engine


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings.database_url), expire_on_commit=False)


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def current_revision(database_url: str) -> str | None:
    with get_engine(database_url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade head` on the configured database (what `kb init` runs)."""
    cfg = alembic_config(database_url)
    with get_engine(database_url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_schema(settings: Settings, *, auto_upgrade: bool = True) -> None:
    """Refuse to run against an uninitialised or newer database; bring an older one up to date."""
    current = current_revision(settings.database_url)
    head = head_revision(settings.database_url)
    if current == head:
        return
    where = _describe(settings.database_url)
    if current is None:
        raise SchemaError(f"the knowledge base at {where} is not initialised: run `kb init` first")
    if not _known_revision(settings.database_url, current):
        raise SchemaError(
            f"the database at {where} is at revision {current}, which this version of kb-pipeline "
            "does not know (it was upgraded by a newer version); upgrade kb-pipeline"
        )
    if not auto_upgrade:
        raise SchemaError(f"the database at {where} is at {current}, behind {head}: run `kb init`")
    upgrade(settings.database_url)


def _known_revision(database_url: str, revision: str) -> bool:
    script = ScriptDirectory.from_config(alembic_config(database_url))
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _describe(database_url: str) -> str:
    return make_url(database_url).render_as_string(hide_password=True)


def dispose_engines() -> None:
    """Close every pooled connection (tests dropping databases, forked workers)."""
    while _ENGINES:
        _ENGINES.pop().dispose()
    get_engine.cache_clear()


T = TypeVar("T")
TRANSACTION_ATTEMPTS = 6


def run_transaction(Session: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    """Run `work` in a transaction; one that another run or a lost connection spoiled is run again.

    `work` must be idempotent against the database (it re-reads what it needs), which is how every
    writer of this package is written; a bug or bad data still raises at once.
    """
    for attempt in range(TRANSACTION_ATTEMPTS):
        try:
            with Session.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if attempt == TRANSACTION_ATTEMPTS - 1 or not is_transient(exc):
                raise
            time.sleep(0.05 * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def is_transient(exc: DBAPIError) -> bool:
    """Errors another transaction or the network caused, which the same work run again can succeed past.

    An IntegrityError is a lost race a retry resolves: the retry sees the row the other run committed.
    """
    if exc.connection_invalidated or isinstance(exc, IntegrityError):
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code in ("40001", "40P01", "55P03", "57P01", "08006", "08003"):
        return True  # serialization failure, deadlock, lock not available, admin shutdown, connection lost
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message
