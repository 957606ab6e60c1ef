"""Postgres keyword search reads a stored tsvector instead of re-parsing each matching chunk's text

0003 indexed `to_tsvector('english', text)` as a GIN expression index. The index finds the matching rows, but
ranking them (ts_rank_cd) needs each row's tsvector, which Postgres then computes again from the text for
every matching row: at 100k chunks BBC headlines took 534 ms p50 / 1,039 ms p95. A stored generated column
holds it once, computed at insert (as the expression index was), and the GIN index moves onto the column:
94 ms / 232 ms on the same data (benchmarks/postgres_keyword.py). SQLite's FTS5 table is unchanged.

On an existing KB, adding the column rewrites `chunks` once under an exclusive lock (24 s for 100k chunks on
a 2-core machine, benchmarks/postgres_keyword.py), so anything touching the table waits for the upgrade.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 16:40:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = [
    "ALTER TABLE chunks ADD COLUMN text_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX ix_chunks_fts_tsv ON chunks USING GIN (text_tsv)",
    "DROP INDEX ix_chunks_fts",
]
DOWNGRADE = [
    "CREATE INDEX ix_chunks_fts ON chunks USING GIN (to_tsvector('english', text))",
    "DROP INDEX ix_chunks_fts_tsv",
    "ALTER TABLE chunks DROP COLUMN text_tsv",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in DOWNGRADE:
            op.execute(statement)
