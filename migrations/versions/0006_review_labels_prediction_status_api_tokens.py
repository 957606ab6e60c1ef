"""reviewed labels with provenance, prediction status (abstained / near-threshold), API tokens

A person's verdicts on labels (`review_labels`) are gold kept apart from front matter and from predictions.
Predicted labels gain a status (`applied`, `abstained` category, `near`-threshold tag) and a margin, so a
document whose category is uncertain shows none and the review queue can order by uncertainty. API tokens
store only the token's hash.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 09:10:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

IdType = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('predicted_labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=16), server_default='applied', nullable=False))
        batch_op.add_column(sa.Column('margin', sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f('ix_predicted_labels_status'), ['status'], unique=False)

    op.create_table('review_labels',
    sa.Column('document_id', IdType, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('reviewer', sa.String(length=128), nullable=False),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('predicted_label', sa.String(length=128), nullable=True),
    sa.Column('predicted_score', sa.Float(), nullable=True),
    sa.Column('adapter_version', sa.Integer(), nullable=True),
    sa.Column('document_version', sa.Integer(), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.CheckConstraint("kind IN ('category', 'tag')", name=op.f('ck_review_labels_kind')),
    sa.CheckConstraint("verdict IN ('accept', 'reject')", name=op.f('ck_review_labels_verdict')),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_review_labels_document_id_documents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('document_id', 'kind', 'label', name=op.f('pk_review_labels'))
    )
    with op.batch_alter_table('review_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_labels_label'), ['label'], unique=False)

    op.create_table('api_tokens',
    sa.Column('id', IdType, nullable=False),
    sa.Column('user_name', sa.String(length=128), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_name'], ['users.name'], name=op.f('fk_api_tokens_user_name_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user_name'), ['user_name'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user_name'))
    op.drop_table('api_tokens')
    with op.batch_alter_table('review_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_labels_label'))
    op.drop_table('review_labels')
    with op.batch_alter_table('predicted_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_predicted_labels_status'))
        batch_op.drop_column('margin')
        batch_op.drop_column('status')
