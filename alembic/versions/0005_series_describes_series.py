"""series.describes_series_id: a series that describes a synthetic series (its confidence as a Parametric Map)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('describes_series_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_series_describes_series_id'), ['describes_series_id'], unique=False)
        batch_op.create_foreign_key('fk_series_describes_series_id', 'series', ['describes_series_id'], ['id'], ondelete='CASCADE')


def downgrade() -> None:
    # the maps' rows stay, as synthetic series of their own: the older schema cannot say what they describe
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_constraint('fk_series_describes_series_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_series_describes_series_id'))
        batch_op.drop_column('describes_series_id')
