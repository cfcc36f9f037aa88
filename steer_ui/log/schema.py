"""The session log's tables (SQLAlchemy ORM). Only ``steer_ui.log.store`` queries them.

sessions (a browser session or a CLI invocation), runs (everything needed to replay), vectors (a stored
copy of each vector, by content hash, as ``SteeringVector.to_bytes()``), streams (one per row, with the
row's own vector, layers and scope) and probe_points. Alembic (``migrations/``) keeps databases
written by older versions in step.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # cli | browser | api | sweep | import
    label: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)


class VectorRow(Base):
    __tablename__ = "vectors"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    model_hint: Mapped[str] = mapped_column(String(64), default="")
    data: Mapped[bytes] = mapped_column(LargeBinary)  # SteeringVector.to_bytes()


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    created: Mapped[datetime] = mapped_column(DateTime)
    finished: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)  # host:pid:start of the writer
    model_id: Mapped[str] = mapped_column(String(300))
    model_source: Mapped[str] = mapped_column(Text, default="")  # path, hub id + revision, or GGUF cache key
    dtype: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict] = mapped_column(JSON)  # RunSettings.to_dict()
    prompt_text: Mapped[str] = mapped_column(Text)
    prompt_ids: Mapped[list] = mapped_column(JSON)
    layers: Mapped[list] = mapped_column(JSON)  # every layer some row steers
    probe_suffix_ids: Mapped[list] = mapped_column(JSON)
    probe_choices: Mapped[list] = mapped_column(JSON)  # [{"label", "token_ids", "variants"}]
    load_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    prefill_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    decode_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    streams: Mapped[list[StreamRow]] = relationship(order_by="StreamRow.row", cascade="all, delete-orphan")


class StreamRow(Base):
    __tablename__ = "streams"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    row: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(64))
    coef: Mapped[float] = mapped_column(Float)
    vector_hash: Mapped[str | None] = mapped_column(ForeignKey("vectors.hash"), nullable=True)  # None: baseline
    layers: Mapped[list | None] = mapped_column(JSON, nullable=True)
    scope: Mapped[str | None] = mapped_column(String(32), nullable=True)
    token_ids: Mapped[list] = mapped_column(JSON, default=list)
    text: Mapped[str] = mapped_column(Text, default="")
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    budget: Mapped[str | None] = mapped_column(String(200), nullable=True)  # 'budget:min=200'
    forced: Mapped[list | None] = mapped_column(JSON, nullable=True)  # indices of tokens a budget fed
    interventions: Mapped[list | None] = mapped_column(JSON, nullable=True)  # [{"step", "kind", "text"}]
    stop_logprobs: Mapped[list | None] = mapped_column(JSON, nullable=True)  # per token; None after thinking
    think_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dynamics: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # engine.events.Dynamics as a dict


class ProbeRow(Base):
    __tablename__ = "probe_points"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    row: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    logodds: Mapped[float] = mapped_column(Float)
    mass: Mapped[float] = mapped_column(Float)
    logprobs: Mapped[dict] = mapped_column(JSON)
    reliable: Mapped[bool] = mapped_column(Boolean)
    think_closed: Mapped[bool] = mapped_column(Boolean, default=False)
    final: Mapped[bool] = mapped_column(Boolean, default=False)  # read at the row's last token (it ended)
