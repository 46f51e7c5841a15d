"""associations (completeness by sender), superseded synthetic series, rejection-note exports

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 00:45:35.662994
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('associations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('receiver', sa.String(length=128), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=True),
    sa.Column('called_ae_title', sa.String(length=16), nullable=True),
    sa.Column('peer_address', sa.String(length=64), nullable=True),
    sa.Column('peer_port', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_reason', sa.String(length=32), nullable=True),
    sa.Column('instances', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_associations_ended_at'), ['ended_at'], unique=False)

    # rows made before this revision are all series deliveries
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.Enum('series', 'rejection_note', name='exportkind', native_enum=False, length=24), nullable=False, server_default='series'))
        batch_op.add_column(sa.Column('path', sa.String(length=1024), nullable=True))
        batch_op.drop_constraint('uq_exports_series_destination', type_='unique')
        batch_op.create_unique_constraint('uq_exports_series_destination_kind', ['series_id', 'destination', 'kind'])

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('association_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_instances_association_id'), ['association_id'], unique=False)
        batch_op.create_foreign_key('fk_instances_association_id', 'associations', ['association_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('superseded_by_series_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('superseded_reason', sa.String(length=256), nullable=True))
        batch_op.create_foreign_key('fk_series_superseded_by_series_id', 'series', ['superseded_by_series_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_constraint('fk_series_superseded_by_series_id', type_='foreignkey')
        batch_op.drop_column('superseded_reason')
        batch_op.drop_column('superseded_by_series_id')
        batch_op.drop_column('superseded_at')

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_constraint('fk_instances_association_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_instances_association_id'))
        batch_op.drop_column('association_id')

    # a rejection note has no place in the older schema (one row per series and destination)
    op.execute("DELETE FROM exports WHERE kind = 'rejection_note'")
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.drop_constraint('uq_exports_series_destination_kind', type_='unique')
        batch_op.create_unique_constraint('uq_exports_series_destination', ['series_id', 'destination'])
        batch_op.drop_column('path')
        batch_op.drop_column('kind')

    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_associations_ended_at'))

    op.drop_table('associations')
