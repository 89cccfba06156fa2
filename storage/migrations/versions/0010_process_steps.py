"""process supervision: a dataset may ask about the steps of reasoning traces (question 'steps', with its
split rule in ``dataset.step_separator``); a steps item is a comparison naming its one completion on both
sides, its steps are spans in ``trace_step``; a label may be step marks (choice 'steps', marks in ``label.steps``)

SQLite rebuilds ``comparison`` and ``label`` to change their checks.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 23:50:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_CHOICES_BEFORE = "'a', 'b', 'tie', 'both_bad', 'skip', 'ranked'"
_CHOICES_AFTER = "'a', 'b', 'tie', 'both_bad', 'skip', 'ranked', 'steps'"


def _change_pair_order(check: str) -> None:
    # SQLite rebuilds the table for the check, and an index on an expression does not survive that
    # rebuild (batch mode cannot reflect it), so the queue index is dropped and made again (as in 0006).
    op.drop_index('comparison_queue_order', table_name='comparison')
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.drop_constraint('comparison_pair_ordered', type_='check')
        batch_op.create_check_constraint('comparison_pair_ordered', check)
    op.create_index('comparison_queue_order', 'comparison',
                    ['done', sa.text('priority DESC'), sa.text('coalesce(queue_key, 0)'), 'id'], unique=False)


def upgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.add_column(sa.Column('step_separator', sa.String(length=200), nullable=True))
        batch_op.drop_constraint('dataset_question_known', type_='check')
        batch_op.create_check_constraint('dataset_question_known', "question IN ('pairwise', 'ranking', 'steps')")
    _change_pair_order('completion_a_id <= completion_b_id')
    op.create_table('trace_step',
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('char_start', sa.Integer(), nullable=False),
    sa.Column('char_end', sa.Integer(), nullable=False),
    sa.Column('in_answer', sa.Boolean(), nullable=False),
    sa.CheckConstraint('0 <= char_start AND char_start < char_end', name='trace_step_span'),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparison.id'], ),
    sa.PrimaryKeyConstraint('comparison_id', 'position')
    )
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.add_column(sa.Column('steps', sa.JSON(none_as_null=True), nullable=True))
        batch_op.drop_constraint('label_choice_known', type_='check')
        batch_op.create_check_constraint('label_choice_known', f"choice IN ({_CHOICES_AFTER})")
        batch_op.create_check_constraint('label_steps_iff_steps', "(choice = 'steps') = (steps IS NOT NULL)")


def downgrade() -> None:
    connection = op.get_bind()
    marked = connection.execute(sa.text("SELECT count(*) FROM label WHERE choice = 'steps'")).scalar_one()
    if marked:
        raise RuntimeError(f"{marked} step label(s) exist; the old schema cannot hold them (export them first)")
    items = connection.execute(sa.text("SELECT count(*) FROM trace_step")).scalar_one()
    if items:
        raise RuntimeError(f"steps items exist ({items} steps); the old schema cannot hold them")
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.drop_constraint('label_steps_iff_steps', type_='check')
        batch_op.drop_constraint('label_choice_known', type_='check')
        batch_op.create_check_constraint('label_choice_known', f"choice IN ({_CHOICES_BEFORE})")
        batch_op.drop_column('steps')
    op.drop_table('trace_step')
    _change_pair_order('completion_a_id < completion_b_id')
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.drop_constraint('dataset_question_known', type_='check')
        batch_op.create_check_constraint('dataset_question_known', "question IN ('pairwise', 'ranking')")
        batch_op.drop_column('step_separator')
