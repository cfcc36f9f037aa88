"""Budget rows: each stream keeps its budget, which of its tokens were forced, its interventions, the
urge to stop at each token, its thinking tokens and its answer dynamics.

Runs logged before this revision have none of these: their columns stay empty (no budget, nothing forced).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = [("budget", sa.String(200)), ("forced", sa.JSON), ("interventions", sa.JSON),
           ("stop_logprobs", sa.JSON), ("think_tokens", sa.Integer), ("dynamics", sa.JSON)]


def upgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
