"""search generation: one counter row that triggers change on every write a search's allowed set depends on

Searches cache, per (groups, tag/category filters), the chunk ids the caller may see, instead of listing them
with SQL on every query (linear in the KB). The cache is valid while `search_generation.value` is unchanged.
Triggers, not application code, change it, so no write path (ingest, deletion, ACL edits, labels, reviews,
predictions, raw SQL) can forget to.

SQLite: a row trigger per table and event sets the value to random(): writers are serialised, and a value is
never reused, so a set computed inside a transaction that rolls back is never mistaken for a committed one.
Postgres: a deferred constraint trigger sets it to nextval() at COMMIT, once per transaction (a transaction-local
setting remembers it did), so concurrent writers hold the row lock only while committing, not for their
whole transaction; readers inside a transaction that has written skip the cache (hybrid.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 09:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('documents', 'chunks', 'document_acl', 'gold_labels', 'gold_tags', 'predicted_labels', 'review_labels')
EVENTS = ('INSERT', 'UPDATE', 'DELETE')

PG_FUNCTION = """
CREATE FUNCTION kb_bump_search_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('kb.search_generation_bumped', true), '') = 'y' THEN
        RETURN NULL;
    END IF;
    UPDATE search_generation SET value = nextval('search_generation_seq') WHERE id = 1;
    PERFORM set_config('kb.search_generation_bumped', 'y', true);
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table('search_generation',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_search_generation'))
    )
    op.execute("INSERT INTO search_generation (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("CREATE SEQUENCE search_generation_seq")
        op.execute(PG_FUNCTION)
        for table in TABLES:
            op.execute(
                f"CREATE CONSTRAINT TRIGGER kb_search_generation AFTER INSERT OR UPDATE OR DELETE ON {table} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION kb_bump_search_generation()"
            )
    else:
        for table in TABLES:
            for event in EVENTS:
                op.execute(
                    f"CREATE TRIGGER kb_search_generation_{table}_{event.lower()} AFTER {event} ON {table} "
                    "BEGIN UPDATE search_generation SET value = random() WHERE id = 1; END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS kb_search_generation ON {table}")
        op.execute("DROP FUNCTION IF EXISTS kb_bump_search_generation()")
        op.execute("DROP SEQUENCE IF EXISTS search_generation_seq")
    else:
        for table in TABLES:
            for event in EVENTS:
                op.execute(f"DROP TRIGGER IF EXISTS kb_search_generation_{table}_{event.lower()}")
    op.drop_table('search_generation')
