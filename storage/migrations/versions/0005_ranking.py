"""ranking: a dataset asks a pairwise question or a ranking one; ranking items list their completions
in ``rankingslot``; a label may be a ranking (choice ``ranked`` with the order in ``label.ranking``)

Existing datasets ask the pairwise question. SQLite rebuilds ``label`` to change its choice check.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:30:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_CHOICES_BEFORE = "'a', 'b', 'tie', 'both_bad', 'skip'"
_CHOICES_AFTER = "'a', 'b', 'tie', 'both_bad', 'skip', 'ranked'"


def upgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.add_column(sa.Column('question', sa.String(length=10), nullable=False, server_default='pairwise'))
        batch_op.create_check_constraint('dataset_question_known', "question IN ('pairwise', 'ranking')")
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.alter_column('question', existing_type=sa.String(length=10), server_default=None)
    op.create_table('rankingslot',
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('completion_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparison.id'], ),
    sa.ForeignKeyConstraint(['completion_id'], ['completion.id'], ),
    sa.PrimaryKeyConstraint('comparison_id', 'completion_id')
    )
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ranking', sa.JSON(none_as_null=True), nullable=True))
        batch_op.drop_constraint('label_choice_known', type_='check')
        batch_op.create_check_constraint('label_choice_known', f"choice IN ({_CHOICES_AFTER})")
        batch_op.create_check_constraint('label_ranking_iff_ranked', "(choice = 'ranked') = (ranking IS NOT NULL)")


def downgrade() -> None:
    connection = op.get_bind()
    ranked = connection.execute(sa.text("SELECT count(*) FROM label WHERE choice = 'ranked'")).scalar_one()
    if ranked:
        raise RuntimeError(f"{ranked} ranking label(s) exist; the old schema cannot hold them (export them first)")
    items = connection.execute(sa.text("SELECT count(*) FROM rankingslot")).scalar_one()
    if items:
        raise RuntimeError(f"ranking items exist ({items} slots); the old schema cannot hold them")
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.drop_constraint('label_ranking_iff_ranked', type_='check')
        batch_op.drop_constraint('label_choice_known', type_='check')
        batch_op.create_check_constraint('label_choice_known', f"choice IN ({_CHOICES_BEFORE})")
        batch_op.drop_column('ranking')
    op.drop_table('rankingslot')
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.drop_constraint('dataset_question_known', type_='check')
        batch_op.drop_column('question')
