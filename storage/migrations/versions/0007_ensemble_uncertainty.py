"""ensemble uncertainty: a dataset's queue may be ordered by the disagreement of an ensemble of reward
heads (bootstrap heads on the model's own features) instead of one model's margin

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 19:10:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uncertainty', sa.String(length=12), nullable=False,
                                      server_default=sa.text("'margin'")))
        batch_op.add_column(sa.Column('ensemble_size', sa.Integer(), nullable=False, server_default=sa.text('5')))
        batch_op.create_check_constraint('dataset_uncertainty_known', "uncertainty IN ('margin', 'ensemble')")
        batch_op.create_check_constraint('dataset_ensemble_size_range', 'ensemble_size BETWEEN 2 AND 16')
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.alter_column('uncertainty', existing_type=sa.String(length=12), server_default=None)
        batch_op.alter_column('ensemble_size', existing_type=sa.Integer(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.drop_constraint('dataset_ensemble_size_range', type_='check')
        batch_op.drop_constraint('dataset_uncertainty_known', type_='check')
        batch_op.drop_column('ensemble_size')
        batch_op.drop_column('uncertainty')
