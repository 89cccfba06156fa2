"""drop the cached score table: nothing ever wrote or read it

Scores are computed when asked for (Inspect, ``score``, diagnostics); a cache comes back, with the
columns it really needs, when a feature reads one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:30:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('cachedscore', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cachedscore_reward_model_id'))
        batch_op.drop_index(batch_op.f('ix_cachedscore_completion_id'))
    op.drop_table('cachedscore')


def downgrade() -> None:
    op.create_table('cachedscore',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reward_model_id', sa.Integer(), nullable=False),
    sa.Column('completion_id', sa.Integer(), nullable=False),
    sa.Column('reward', sa.Float(), nullable=False),
    sa.Column('thinking_reward', sa.Float(), nullable=True),
    sa.Column('answer_reward', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['completion_id'], ['completion.id'], ),
    sa.ForeignKeyConstraint(['reward_model_id'], ['rewardmodel.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('reward_model_id', 'completion_id', name='score_once_per_model')
    )
    with op.batch_alter_table('cachedscore', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cachedscore_completion_id'), ['completion_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cachedscore_reward_model_id'), ['reward_model_id'], unique=False)
