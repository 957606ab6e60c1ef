"""Alembic environment: compares against kb_pipeline's models; batch mode so SQLite can ALTER."""

from alembic import context

from kb_pipeline.config import Settings
from kb_pipeline.store.db import get_engine
from kb_pipeline.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    """The URL kb set programmatically, else the one KB_HOME / KB_DATABASE_URL point to."""
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


# created by hand (0003, 0008), not ORM models: SQLite's FTS5 table, Postgres's GIN index and stored tsvector
KEYWORD_INDEX_OBJECTS = ("chunks_fts", "ix_chunks_fts", "text_tsv")


def include_name(name, type_, parent_names) -> bool:
    """Keep the full-text objects (and SQLite's FTS shadow tables) out of autogenerate's diff."""
    return not (name or "").startswith(KEYWORD_INDEX_OBJECTS)


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, include_name=include_name
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with get_engine(_url()).begin() as conn:
        _run(conn)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
