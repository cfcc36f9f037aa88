"""Probe readings taken where a row ended are marked (probe_points.final).

Runs logged before this revision have no such readings: theirs stay unmarked.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("probe_points") as batch:
        batch.add_column(sa.Column("final", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("probe_points") as batch:
        batch.drop_column("final")
