"""Alembic's entry point for RewardLab's schema migrations.

``storage.schema.upgrade`` runs it with an open connection (``config.attributes["connection"]``),
inside the transaction that serializes concurrent upgrades. Run from the command line
(``alembic -c storage/alembic.ini revision --autogenerate -m "..."``) it connects to
``$REWARDLAB_DB`` (default: the SQLite file in ./data).
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel, create_engine

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.engine import default_db_url
from storage.schema import include_in_autogenerate


def render_item(type_: str, obj, autogen_context):  # noqa: ANN001, ANN201
    # Migrations are frozen history: render the project's column types as the plain SQLAlchemy
    # types they store, so that a later change to storage.models cannot rewrite an old migration.
    if type_ == "type" and isinstance(obj, models.UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and obj.__class__.__module__.startswith("sqlmodel"):
        return f"sa.String(length={obj.length})" if getattr(obj, "length", None) else "sa.String()"
    return False


def run_migrations(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite cannot ALTER most things in place: batch mode copies the table instead.
        render_as_batch=True,
        render_item=render_item,
        include_object=include_in_autogenerate,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or default_db_url())
    with engine.begin() as opened:
        run_migrations(opened)
