"""active learning: a dataset's queue may be ordered by its reward model's uncertainty (with a
random control arm), retrained every N labels with promotion; jobs have a kind and a note; model
versions of a loop are evaluated by arm

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 16:00:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_DATASET_COLUMNS = (
    ('queue_order', sa.String(length=12), "'priority'"),
    ('random_fraction', sa.Float(), '0.1'),
    ('labels_at_retrain', sa.Integer(), '0'),
    ('promotion_tolerance', sa.Float(), '0.02'),
)


def upgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        for name, type_, default in _DATASET_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=False, server_default=sa.text(default)))
        batch_op.add_column(sa.Column('queue_model', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('retrain_every', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('retrain_config', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('promoted_model', sa.String(length=200), nullable=True))
        batch_op.create_check_constraint('dataset_queue_order_known', "queue_order IN ('priority', 'uncertainty')")
        batch_op.create_check_constraint('dataset_random_fraction_range', 'random_fraction BETWEEN 0 AND 1')
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        for name, type_, _ in _DATASET_COLUMNS:
            batch_op.alter_column(name, existing_type=type_, server_default=None)

    op.drop_index('comparison_queue_order', table_name='comparison')
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_margin', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('queue_key', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('arm', sa.String(length=12), nullable=True))
        batch_op.create_check_constraint('comparison_arm_known', "arm IS NULL OR arm IN ('uncertainty', 'random')")
    op.create_index('comparison_queue_order', 'comparison',
                    ['done', sa.text('priority DESC'), sa.text('coalesce(queue_key, 0)'), 'id'], unique=False)

    with op.batch_alter_table('trainingjob', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=12), nullable=False, server_default=sa.text("'train'")))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
    with op.batch_alter_table('trainingjob', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=sa.String(length=12), server_default=None)

    op.create_table('loopevaluation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=200), nullable=False),
    sa.Column('labels', sa.Integer(), nullable=False),
    sa.Column('heldout_accuracy', sa.Float(), nullable=True),
    sa.Column('arms', sa.JSON(), nullable=False),
    sa.Column('calibration', sa.JSON(), nullable=False),
    sa.Column('human_ceiling', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('loopevaluation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_loopevaluation_dataset_id'), ['dataset_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('loopevaluation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loopevaluation_dataset_id'))
    op.drop_table('loopevaluation')
    with op.batch_alter_table('trainingjob', schema=None) as batch_op:
        batch_op.drop_column('note')
        batch_op.drop_column('kind')
    op.drop_index('comparison_queue_order', table_name='comparison')
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.drop_constraint('comparison_arm_known', type_='check')
        batch_op.drop_column('arm')
        batch_op.drop_column('queue_key')
        batch_op.drop_column('model_margin')
    op.create_index('comparison_queue_order', 'comparison', ['done', sa.text('priority DESC'), 'id'], unique=False)
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.drop_constraint('dataset_random_fraction_range', type_='check')
        batch_op.drop_constraint('dataset_queue_order_known', type_='check')
        for name in ('promoted_model', 'retrain_config', 'retrain_every', 'queue_model',
                     *(name for name, _, _ in _DATASET_COLUMNS)):
            batch_op.drop_column(name)
