"""one active document per file; ingest runs record their pid, host and heartbeat

Overlapping ingests run at the same time could leave two active documents for one file (one per
overlapping source). Duplicates are resolved first (the newest row stays active, the others become
tombstones without chunks; the next ingest merges the overlapping sources), then a unique index over the
path of active documents makes the rule a constraint. Runs killed with -9 stayed `running` for ever:
pid + host + heartbeat let a later run tell that their process is gone and mark them `abandoned`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    with op.batch_alter_table('ingest_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('host', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))

    op.execute(
        "UPDATE documents SET status = 'deleted' WHERE status = 'active' AND id NOT IN "
        "(SELECT MAX(id) FROM documents WHERE status = 'active' GROUP BY path)"
    )
    op.execute(
        "DELETE FROM chunks WHERE document_id IN (SELECT id FROM documents WHERE status = 'deleted')"
    )
    op.create_index(
        'ux_documents_active_path', 'documents', ['path'], unique=True,
        sqlite_where=ACTIVE, postgresql_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index('ux_documents_active_path', table_name='documents')
    with op.batch_alter_table('ingest_runs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('host')
        batch_op.drop_column('pid')
