"""ids are never reused on SQLite: documents, chunks and index_builds get AUTOINCREMENT

Without AUTOINCREMENT SQLite hands out max(rowid) + 1, so deleting the newest chunks and inserting
new ones reuses their ids, and the FAISS index (keyed by chunk id) kept the deleted chunk's vector
under the new chunk's id. SQLite cannot add AUTOINCREMENT in place, so each table is rebuilt with
its rows and ids. Postgres sequences never reuse ids: nothing to do there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 05:40:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

IdType = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

# The keyword-search triggers 0003 put on chunks (re-created unchanged after the rebuild).
FTS_TRIGGERS = {
    "chunks_fts_insert": "CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN "
    "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END",
    "chunks_fts_delete": "CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "chunks_fts_update": "CREATE TRIGGER chunks_fts_update AFTER UPDATE OF text ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END",
}


def _documents() -> tuple[list, list]:
    columns = [
        sa.Column('id', IdType, nullable=False),
        sa.Column('source_id', IdType, nullable=False),
        sa.Column('uri', sa.String(length=1024), nullable=False),
        sa.Column('path', sa.String(length=2048), nullable=False),
        sa.Column('title', sa.String(length=512), nullable=False),
        sa.Column('mime', sa.String(length=128), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('mtime', sa.Float(), nullable=False),
        sa.Column('content_sha256', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('metadata', sa.JSON(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('active', 'deleted')", name=op.f('ck_documents_status')),
        sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_documents_source_id_sources'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_documents')),
        sa.UniqueConstraint('source_id', 'uri', name=op.f('uq_documents_source_id')),
    ]
    indexes = [('ix_documents_sha', ['content_sha256']), ('ix_documents_source_id', ['source_id']),
               ('ix_documents_status', ['status'])]
    return columns, indexes


def _chunks() -> tuple[list, list]:
    columns = [
        sa.Column('id', IdType, nullable=False),
        sa.Column('document_id', IdType, nullable=False),
        sa.Column('ordinal', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('char_start', sa.Integer(), nullable=False),
        sa.Column('char_end', sa.Integer(), nullable=False),
        sa.Column('token_count', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_chunks_document_id_documents'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_chunks')),
        sa.UniqueConstraint('document_id', 'ordinal', name=op.f('uq_chunks_document_id')),
    ]
    return columns, [('ix_chunks_document_id', ['document_id'])]


def _index_builds() -> tuple[list, list]:
    columns = [
        sa.Column('id', IdType, nullable=False),
        sa.Column('embed_key', sa.String(length=96), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('path', sa.String(length=2048), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('checksum', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('building', 'ready', 'replaced', 'failed')",
                           name=op.f('ck_index_builds_status')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_index_builds')),
    ]
    return columns, [('ix_index_builds_embed_key', ['embed_key']), ('ix_index_builds_status', ['status'])]


REBUILT = {"documents": _documents, "chunks": _chunks, "index_builds": _index_builds}  # parents first


def _referencing_tables(bind, parents: set[str]) -> list[str]:
    """Tables whose foreign keys lead (directly or through each other) to `parents`, parents first."""
    tables = [r[0] for r in bind.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    refs = {t: {r[2] for r in bind.exec_driver_sql(f'PRAGMA foreign_key_list("{t}")')} for t in tables}
    found: list[str] = []
    reached = set(parents)
    while True:
        more = [t for t in tables if t not in reached and refs[t] & reached]
        if not more:
            return found
        found += more
        reached.update(more)


def upgrade() -> None:
    """Rebuild documents, chunks and index_builds with AUTOINCREMENT, keeping every row and id.

    Migrations run inside a transaction with foreign keys on, where `PRAGMA foreign_keys=OFF` is
    ignored, so dropping a parent table cascades its implicit DELETE into every child table (and
    a rename rewrites the children's REFERENCES). So the rows of the rebuilt tables and of every
    table referencing them are first copied to temporary tables, the tables are dropped and
    re-created, and the rows go back parents first.
    """
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    children = _referencing_tables(bind, set(REBUILT))
    kept = list(REBUILT) + [t for t in children if t not in REBUILT]
    for table in kept:
        op.execute(f'CREATE TEMP TABLE "_keep_{table}" AS SELECT * FROM "{table}"')
    for trigger in FTS_TRIGGERS:  # chunk rows go and come back with the same ids and text: chunks_fts stays valid
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for table in REBUILT:  # children are emptied by the cascade here and refilled below
        op.execute(f'DROP TABLE "{table}"')
    for table, definition in REBUILT.items():
        columns, indexes = definition()
        op.create_table(table, *columns, sqlite_autoincrement=True)
        for index_name, index_columns in indexes:
            op.create_index(index_name, table, index_columns, unique=False)
    for table in kept:  # explicit ids also set sqlite_sequence to each table's max id
        names = ", ".join(f'"{r[1]}"' for r in bind.exec_driver_sql(f'PRAGMA table_info("_keep_{table}")'))
        op.execute(f'INSERT INTO "{table}" ({names}) SELECT {names} FROM "_keep_{table}"')
        op.execute(f'DROP TABLE temp."_keep_{table}"')
    for statement in FTS_TRIGGERS.values():
        op.execute(statement)
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"migration 0004 left rows whose foreign keys point nowhere: {broken[:5]}")


def downgrade() -> None:
    # AUTOINCREMENT only changes how new ids are picked; the 0003 schema works with it unchanged.
    pass
