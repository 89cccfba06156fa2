"""the loop judges a new version on at least this many held-out pairs (fewer: the current model is kept)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 20:50:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.add_column(sa.Column('min_heldout_pairs', sa.Integer(), nullable=False, server_default=sa.text('30')))
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.alter_column('min_heldout_pairs', existing_type=sa.Integer(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.drop_column('min_heldout_pairs')
