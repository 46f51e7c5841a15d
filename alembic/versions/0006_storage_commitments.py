"""storage_commitments: Storage Commitment Push Model transactions (PS3.4 Annex J), as SCU and as SCP

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 14:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('storage_commitments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('transaction_uid', sa.String(length=64), nullable=False),
    sa.Column('role', sa.Enum('scu', 'scp', name='commitmentrole', native_enum=False, length=24), nullable=False),
    sa.Column('peer_ae_title', sa.String(length=16), nullable=True),
    sa.Column('export_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.Enum('pending', 'committed', 'failed', 'timed_out', name='commitmentstatus', native_enum=False, length=24), nullable=False),
    sa.Column('instances', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('failures', sa.JSON(), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('detail', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['export_id'], ['exports.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('transaction_uid')
    )
    with op.batch_alter_table('storage_commitments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_storage_commitments_export_id'), ['export_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_storage_commitments_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('storage_commitments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_storage_commitments_status'))
        batch_op.drop_index(batch_op.f('ix_storage_commitments_export_id'))
    op.drop_table('storage_commitments')
