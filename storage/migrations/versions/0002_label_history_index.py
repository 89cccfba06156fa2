"""label history index: an annotator's labels newest first (history, undo, progress)

The single-column index on label.annotator_id is dropped: the new one starts with that column.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 08:30:32.939006

"""
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.create_index('label_history_order', ['annotator_id', 'updated_at', 'id'], unique=False)
        batch_op.drop_index('ix_label_annotator_id')


def downgrade() -> None:
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.create_index('ix_label_annotator_id', ['annotator_id'], unique=False)
        batch_op.drop_index('label_history_order')
