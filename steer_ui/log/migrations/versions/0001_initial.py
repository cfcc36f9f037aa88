"""Initial schema: sessions, vectors, runs, streams, probe points.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("last_seen", sa.DateTime, nullable=False),
    )
    op.create_table(
        "vectors",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("model_hint", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("session_id", sa.String(32), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("finished", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("model_id", sa.String(300), nullable=False),
        sa.Column("model_source", sa.Text, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("prompt_text", sa.Text, nullable=False),
        sa.Column("prompt_ids", sa.JSON, nullable=False),
        sa.Column("vector_hash", sa.String(64), sa.ForeignKey("vectors.hash")),
        sa.Column("layers", sa.JSON, nullable=False),
        sa.Column("probe_suffix_ids", sa.JSON, nullable=False),
        sa.Column("probe_choices", sa.JSON, nullable=False),
        sa.Column("load_s", sa.Float),
        sa.Column("prefill_s", sa.Float),
        sa.Column("decode_s", sa.Float),
        sa.Column("steps", sa.Integer),
    )
    op.create_index("ix_runs_session_id", "runs", ["session_id"])
    op.create_table(
        "streams",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("coef", sa.Float, nullable=False),
        sa.Column("token_ids", sa.JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("finish_reason", sa.String(16)),
    )
    op.create_index("ix_streams_run_id", "streams", ["run_id"])
    op.create_table(
        "probe_points",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("logodds", sa.Float, nullable=False),
        sa.Column("mass", sa.Float, nullable=False),
        sa.Column("logprobs", sa.JSON, nullable=False),
        sa.Column("reliable", sa.Boolean, nullable=False),
        sa.Column("think_closed", sa.Boolean, nullable=False),
    )
    op.create_index("ix_probe_points_run_id", "probe_points", ["run_id"])


def downgrade() -> None:
    for table in ("probe_points", "streams", "runs", "vectors", "sessions"):
        op.drop_table(table)
