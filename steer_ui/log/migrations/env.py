"""Alembic environment: steer-ui passes its own connection (see steer_ui.store.migrate)."""

from alembic import context
from sqlalchemy import create_engine

from steer_ui.log.schema import Base

config = context.config


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the alembic command line, with sqlalchemy.url set in its config
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
        _run(conn)
