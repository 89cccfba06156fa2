"""datasets: every comparison belongs to a named dataset with its own overlap, lease, guidelines and
annotators; comparisons can be archived; users can be disabled

Existing comparisons move into one dataset per prompt kind: the kind with more comparisons (chat on
a tie) becomes ``default``, the other is named after its kind (``text`` or ``chat``). Each takes the
store-wide overlap, lease length and guidelines, which then leave the settings table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:10:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The settings that become per-dataset fields, with the defaults RewardLab used when unset.
_MOVED_SETTINGS = {"labels_per_comparison": "1", "lease_seconds": "900", "guidelines": ""}
_DEFAULT_GUIDELINES = (
    "Pick the response that better answers the prompt: correct first, then helpful, then clear.\n\n"
    "* **Tie**: both are equally good.\n* **Both bad**: neither is acceptable.\n"
    "* **Skip**: you cannot judge this one.\n\nJudge the *answer*; the thinking is shown for context."
)


def upgrade() -> None:
    op.create_table('dataset',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('prompt_kind', sa.String(length=10), nullable=True),
    sa.Column('guidelines', sa.Text(), nullable=False),
    sa.Column('overlap', sa.Integer(), nullable=False),
    sa.Column('lease_seconds', sa.Integer(), nullable=False),
    sa.Column('default_priority', sa.Integer(), nullable=False),
    sa.Column('open_to_all', sa.Boolean(), nullable=False),
    sa.Column('archived', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("prompt_kind IS NULL OR prompt_kind IN ('text', 'chat')", name='dataset_prompt_kind_known'),
    sa.CheckConstraint('overlap BETWEEN 1 AND 10', name='dataset_overlap_range'),
    sa.CheckConstraint('lease_seconds BETWEEN 10 AND 86400', name='dataset_lease_range'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('datasetmember',
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], ),
    sa.PrimaryKeyConstraint('dataset_id', 'user_id')
    )
    with op.batch_alter_table('datasetmember', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_datasetmember_user_id'), ['user_id'], unique=False)
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True))

    connection = op.get_bind()
    settings = dict(connection.execute(sa.text("SELECT key, value FROM setting")).all())
    overlap = int(settings.get("labels_per_comparison", _MOVED_SETTINGS["labels_per_comparison"]))
    lease = int(settings.get("lease_seconds", _MOVED_SETTINGS["lease_seconds"]))
    guidelines = settings.get("guidelines", _DEFAULT_GUIDELINES)
    kind_of_prompt = "CASE WHEN prompt.text IS NOT NULL THEN 'text' ELSE 'chat' END"
    counts = dict(connection.execute(sa.text(
        f"SELECT {kind_of_prompt} AS kind, count(*) FROM comparison JOIN prompt ON prompt.id = comparison.prompt_id "
        "GROUP BY kind"
    )).all())
    kinds = sorted(counts, key=lambda kind: (-counts[kind], kind))  # most comparisons first; chat before text on a tie
    dataset_ids = {}
    for position, kind in enumerate(kinds):
        name = "default" if position == 0 else kind
        connection.execute(sa.text(
            "INSERT INTO dataset (name, prompt_kind, guidelines, overlap, lease_seconds, default_priority, open_to_all, "
            "archived, created_at) VALUES (:name, :kind, :guidelines, :overlap, :lease, 0, :yes, :no, CURRENT_TIMESTAMP)"
        ), {"name": name, "kind": kind, "guidelines": guidelines, "overlap": overlap, "lease": lease, "yes": True,
            "no": False})
        dataset_ids[kind] = connection.execute(sa.text("SELECT id FROM dataset WHERE name = :name"), {"name": name}).scalar_one()

    # The queue index and the pair constraint both change; SQLite rebuilds the table for the constraint,
    # and an index on an expression does not survive that rebuild, so it is dropped and made again.
    op.drop_index('comparison_queue_order', table_name='comparison')
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dataset_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('archived', sa.Boolean(), nullable=False, server_default=sa.false()))
    for kind, dataset_id in dataset_ids.items():
        connection.execute(sa.text(
            f"UPDATE comparison SET dataset_id = :dataset_id WHERE prompt_id IN "
            f"(SELECT id FROM prompt WHERE {kind_of_prompt} = :kind)"
        ), {"dataset_id": dataset_id, "kind": kind})
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.alter_column('dataset_id', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_constraint('comparison_once_per_pair', type_='unique')
        batch_op.create_unique_constraint('comparison_once_per_pair', ['dataset_id', 'completion_a_id', 'completion_b_id'])
        batch_op.create_foreign_key('fk_comparison_dataset_id_dataset', 'dataset', ['dataset_id'], ['id'])
        batch_op.create_index(batch_op.f('ix_comparison_dataset_id'), ['dataset_id'], unique=False)
        batch_op.alter_column('archived', existing_type=sa.Boolean(), server_default=None)
    op.create_index('comparison_queue_order', 'comparison', ['done', sa.text('priority DESC'), 'id'], unique=False)
    connection.execute(sa.text("DELETE FROM setting WHERE key IN ('labels_per_comparison', 'lease_seconds', 'guidelines')"))


def downgrade() -> None:
    connection = op.get_bind()
    first = connection.execute(sa.text(
        "SELECT overlap, lease_seconds, guidelines FROM dataset ORDER BY (name = 'default') DESC, id LIMIT 1"
    )).first()
    if first is not None:
        for key, value in zip(("labels_per_comparison", "lease_seconds", "guidelines"), first):
            connection.execute(sa.text("DELETE FROM setting WHERE key = :key"), {"key": key})
            connection.execute(sa.text("INSERT INTO setting (key, value) VALUES (:key, :value)"),
                               {"key": key, "value": str(value)})
    duplicates = connection.execute(sa.text(
        "SELECT count(*) FROM (SELECT completion_a_id, completion_b_id FROM comparison "
        "GROUP BY completion_a_id, completion_b_id HAVING count(*) > 1) AS twins"
    )).scalar_one()
    if duplicates:
        raise RuntimeError(f"{duplicates} pair(s) are in more than one dataset; the old schema holds each pair once")
    op.drop_index('comparison_queue_order', table_name='comparison')
    with op.batch_alter_table('comparison', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_comparison_dataset_id'))
        batch_op.drop_constraint('fk_comparison_dataset_id_dataset', type_='foreignkey')
        batch_op.drop_constraint('comparison_once_per_pair', type_='unique')
        batch_op.create_unique_constraint('comparison_once_per_pair', ['completion_a_id', 'completion_b_id'])
        batch_op.drop_column('dataset_id')
        batch_op.drop_column('archived')
    op.create_index('comparison_queue_order', 'comparison', ['done', sa.text('priority DESC'), 'id'], unique=False)
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('disabled_at')
    with op.batch_alter_table('datasetmember', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_datasetmember_user_id'))
    op.drop_table('datasetmember')
    op.drop_table('dataset')
