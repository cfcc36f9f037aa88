"""Each steered row carries its own vector, layers and scope (streams.vector_hash, .layers, .scope).

Runs before this revision had one vector (runs.vector_hash) on one set of layers with one scope for
every steered row: those are copied onto each of their steered streams, and runs.vector_hash goes.

Revision ID: 0003
Revises: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.add_column(sa.Column("vector_hash", sa.String(64), sa.ForeignKey("vectors.hash",
                                                                               name="fk_streams_vector_hash")))
        batch.add_column(sa.Column("layers", sa.JSON))
        batch.add_column(sa.Column("scope", sa.String(32)))
    conn = op.get_bind()
    runs = conn.execute(sa.text("SELECT id, vector_hash, layers, settings FROM runs WHERE vector_hash IS NOT NULL"))
    for run_id, vector_hash, layers, settings in runs.fetchall():
        scope = (json.loads(settings) if isinstance(settings, str) else settings or {}).get("scope", "all")
        conn.execute(sa.text("UPDATE streams SET vector_hash = :h, layers = :l, scope = :s "
                             "WHERE run_id = :r AND row > 0"),
                     {"h": vector_hash, "l": layers if isinstance(layers, str) else json.dumps(layers),
                      "s": scope, "r": run_id})
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("vector_hash")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("vector_hash", sa.String(64)))
    op.get_bind().execute(sa.text(
        "UPDATE runs SET vector_hash = (SELECT vector_hash FROM streams WHERE streams.run_id = runs.id "
        "AND streams.row = 1)"))
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("scope")
        batch.drop_column("layers")
        batch.drop_column("vector_hash")
