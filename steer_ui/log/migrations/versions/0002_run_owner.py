"""Record which process writes a run, so a killed run is told apart from one still going.

Runs written before this revision have no owner: any of them still 'running' is marked
'interrupted' when the store opens.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(128)))
        batch.create_index("ix_runs_status", ["status"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_status")
        batch.drop_column("owner")
