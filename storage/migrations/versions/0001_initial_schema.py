"""initial schema: the tables as RewardLab created them before migrations existed

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 08:30:28.482308

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('prompt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('messages', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(text IS NULL) <> (messages IS NULL)', name='prompt_text_xor_messages'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('content_hash')
    )
    op.create_table('setting',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('trainingjob',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('log_path', sa.String(), nullable=True),
    sa.Column('output_dir', sa.String(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('current_step', sa.Integer(), nullable=False),
    sa.Column('total_steps', sa.Integer(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('resume', sa.Boolean(), nullable=False),
    sa.Column('reward_model_name', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')", name='job_status_known'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('trainingjob', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trainingjob_status'), ['status'], unique=False)

    op.create_table('user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('password_hash', sa.String(length=300), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("role IN ('annotator', 'engineer', 'admin', 'source')", name='user_role_known'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('completion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompt.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('prompt_id', 'content_hash', name='completion_once_per_prompt')
    )
    with op.batch_alter_table('completion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_completion_prompt_id'), ['prompt_id'], unique=False)

    op.create_table('rewardmodel',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('path', sa.String(), nullable=False),
    sa.Column('base_model', sa.String(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('data_hash', sa.String(length=64), nullable=True),
    sa.Column('n_pairs', sa.Integer(), nullable=True),
    sa.Column('eval_accuracy', sa.Float(), nullable=True),
    sa.Column('eval_margin', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['trainingjob.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('trainingmetric',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['trainingjob.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'step', 'name', name='metric_once_per_step')
    )
    with op.batch_alter_table('trainingmetric', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trainingmetric_job_id'), ['job_id'], unique=False)

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

    op.create_table('comparison',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('completion_a_id', sa.Integer(), nullable=False),
    sa.Column('completion_b_id', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=300), nullable=False),
    sa.Column('label_count', sa.Integer(), nullable=False),
    sa.Column('extra_labels', sa.Integer(), nullable=False),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('completion_a_id < completion_b_id', name='comparison_pair_ordered'),
    sa.ForeignKeyConstraint(['completion_a_id'], ['completion.id'], ),
    sa.ForeignKeyConstraint(['completion_b_id'], ['completion.id'], ),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompt.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('completion_a_id', 'completion_b_id', name='comparison_once_per_pair')
    )
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_comparison_prompt_id'), ['prompt_id'], unique=False)
    # Written by hand: autogenerate skips expression indexes (it cannot reflect them on SQLite).
    op.create_index('comparison_queue_order', 'comparison', ['done', sa.text('priority DESC'), 'id'], unique=False)

    op.create_table('label',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('choice', sa.String(length=10), nullable=False),
    sa.Column('strength', sa.Integer(), nullable=True),
    sa.Column('margin', sa.Float(), nullable=True),
    sa.Column('shown_left', sa.String(length=1), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('seconds_spent', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("choice IN ('a', 'b', 'tie', 'both_bad', 'skip')", name='label_choice_known'),
    sa.CheckConstraint("shown_left IS NULL OR shown_left IN ('a', 'b')", name='label_shown_left_known'),
    sa.CheckConstraint('strength IS NULL OR strength IN (1, 2)', name='label_strength_known'),
    sa.ForeignKeyConstraint(['annotator_id'], ['user.id'], ),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparison.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('comparison_id', 'annotator_id', name='label_once_per_annotator')
    )
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_label_annotator_id'), ['annotator_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_label_comparison_id'), ['comparison_id'], unique=False)

    op.create_table('lease',
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotator_id'], ['user.id'], ),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparison.id'], ),
    sa.PrimaryKeyConstraint('comparison_id', 'annotator_id')
    )
    with op.batch_alter_table('lease', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lease_annotator_id'), ['annotator_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('lease', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lease_annotator_id'))

    op.drop_table('lease')
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_label_comparison_id'))
        batch_op.drop_index(batch_op.f('ix_label_annotator_id'))

    op.drop_table('label')
    op.drop_index('comparison_queue_order', table_name='comparison')
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_comparison_prompt_id'))

    op.drop_table('comparison')
    with op.batch_alter_table('cachedscore', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cachedscore_reward_model_id'))
        batch_op.drop_index(batch_op.f('ix_cachedscore_completion_id'))

    op.drop_table('cachedscore')
    with op.batch_alter_table('trainingmetric', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trainingmetric_job_id'))

    op.drop_table('trainingmetric')
    op.drop_table('rewardmodel')
    with op.batch_alter_table('completion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_completion_prompt_id'))

    op.drop_table('completion')
    op.drop_table('user')
    with op.batch_alter_table('trainingjob', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trainingjob_status'))

    op.drop_table('trainingjob')
    op.drop_table('setting')
    op.drop_table('prompt')
