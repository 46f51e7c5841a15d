"""export_deliveries: the instances of a series export its destination acknowledged (resume per instance)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 05:35:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('export_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('export_id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['export_id'], ['exports.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('export_id', 'instance_id', name='uq_export_deliveries_export_instance')
    )
    with op.batch_alter_table('export_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_deliveries_export_id'), ['export_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_export_deliveries_instance_id'), ['instance_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('export_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_deliveries_instance_id'))
        batch_op.drop_index(batch_op.f('ix_export_deliveries_export_id'))
    op.drop_table('export_deliveries')
