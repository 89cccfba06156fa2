"""login sessions in the store (a restart logs nobody out; a password reset ends a user's sessions), and
login names unique whatever their case

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 20:30:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOGIN_WHERE = sa.text("password_hash IS NOT NULL AND disabled_at IS NULL")


def upgrade() -> None:
    op.create_table(
        'login_session',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['user.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_index(op.f('ix_login_session_user_id'), 'login_session', ['user_id'], unique=False)
    twins = op.get_bind().execute(sa.text(
        'SELECT lower(name), count(*) FROM "user" WHERE password_hash IS NOT NULL AND disabled_at IS NULL '
        'GROUP BY lower(name) HAVING count(*) > 1'
    )).all()
    if twins:
        listed = ", ".join(name for name, _ in twins)
        raise RuntimeError(f"login names that differ only by case exist ({listed}); RewardLab now treats them as one "
                           "name. Disable all but one of each with `python app.py deluser NAME` on the previous version, "
                           "then upgrade again (nothing was changed)")
    op.create_index('uq_login_name_lower', 'user', [sa.text('lower(name)')], unique=True,
                    sqlite_where=LOGIN_WHERE, postgresql_where=LOGIN_WHERE)


def downgrade() -> None:
    op.drop_index('uq_login_name_lower', table_name='user')
    op.drop_index(op.f('ix_login_session_user_id'), table_name='login_session')
    op.drop_table('login_session')
