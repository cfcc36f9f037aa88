"""The session log: every run in SQLite (or any SQLAlchemy URL), replayable and exportable.

Tables: sessions (a browser session or a CLI invocation), runs (everything needed to replay), vectors
(a stored copy of each vector, by content hash), streams (one per row) and probe_points. The schema is
managed by Alembic (``steer_ui/log/migrations``) and upgraded automatically when a store is opened.
Writing during a run goes through ``steer_ui.log.recorder``, which batches on its own thread.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, create_engine,
                        event, select, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from steer_ui.errors import UserError

RUN_STATUSES = ("running", "finished", "cancelled", "error", "interrupted")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    # Random, not sequential: a ?run=ID link must not let a stranger enumerate other people's runs.
    return uuid.uuid4().hex[:12]


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # cli | browser | import
    label: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)


class VectorRow(Base):
    __tablename__ = "vectors"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    model_hint: Mapped[str] = mapped_column(String(64), default="")
    data: Mapped[bytes] = mapped_column(LargeBinary)  # safetensors bytes, metadata included


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
    settings: Mapped[dict] = mapped_column(JSON)  # RunSettings.to_dict(), without the vector itself
    prompt_text: Mapped[str] = mapped_column(Text)
    prompt_ids: Mapped[list] = mapped_column(JSON)
    vector_hash: Mapped[str | None] = mapped_column(ForeignKey("vectors.hash"), nullable=True)
    layers: Mapped[list] = mapped_column(JSON)
    probe_suffix_ids: Mapped[list] = mapped_column(JSON)
    probe_choices: Mapped[list] = mapped_column(JSON)  # [{"label", "token_ids"}]
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
    token_ids: Mapped[list] = mapped_column(JSON, default=list)
    text: Mapped[str] = mapped_column(Text, default="")
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)


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


def default_db_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "steer-ui" / "runs.sqlite"


def resolve_db_url(db: str | None = None) -> str:
    """``--db`` (a path or SQLAlchemy URL), else ``$STEER_UI_DB``, else the user data dir."""
    db = db or os.environ.get("STEER_UI_DB") or str(default_db_path())
    if "://" in db:
        return db
    path = Path(db).expanduser()
    if path.is_dir():
        raise UserError(f"--db {db} is a folder; give a file path such as {path / 'runs.sqlite'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder for the database {path}: {err.strerror}") from None
    return f"sqlite:///{path}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; a crash leaves a consistent database. busy_timeout: two
    # processes logging at once wait for each other instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def owner_tag() -> str:
    import psutil

    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{int(me.create_time())}"


def _owner_alive(tag: str | None) -> bool:
    import psutil

    if not tag:
        return False
    try:
        host, pid, started = tag.rsplit(":", 2)
        if host != socket.gethostname():
            return True  # another machine's run: not ours to judge
        return int(psutil.Process(int(pid)).create_time()) == int(started)
    except (ValueError, psutil.Error):
        return False


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (creates it on an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@dataclass(frozen=True)
class RunSummary:
    id: str
    session_id: str
    created: datetime
    status: str
    model_id: str
    prompt: str
    coefs: list[float]
    tokens: int


class Store:
    """Open (and migrate) a database; query and write runs. Thread-safe: one SQLAlchemy session per call."""

    def __init__(self, db: str | None = None):
        self.url = resolve_db_url(db)
        try:
            url = make_url(self.url)
            self.engine = create_engine(self.url)
        except (ArgumentError, ImportError, ValueError) as err:
            raise UserError(f"cannot use database {db!r}: {err}") from None
        if url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            migrate(self.engine)
        except DBAPIError as err:  # not a database, locked, read-only, unreachable server, ...
            raise UserError(f"cannot open database {self.url}: {err.orig}") from None
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.mark_interrupted()

    def close(self) -> None:
        self.engine.dispose()

    def mark_interrupted(self) -> int:
        """Runs left 'running' by a process that no longer exists (killed, crashed) become 'interrupted'."""
        with self.Session.begin() as s:
            stale = [r.id for r in s.scalars(select(RunRow).where(RunRow.status == "running"))
                     if not _owner_alive(r.owner)]
            if stale:
                s.execute(update(RunRow).where(RunRow.id.in_(stale))
                          .values(status="interrupted", error="the process writing this run ended before it did"))
        return len(stale)

    def new_session(self, kind: str, label: str = "", session_id: str | None = None) -> str:
        now = utcnow()
        sid = session_id or new_id()
        with self.Session.begin() as s:
            if s.get(SessionRow, sid) is None:
                s.add(SessionRow(id=sid, kind=kind, label=label, created=now, last_seen=now))
        return sid

    def touch_session(self, session_id: str) -> None:
        with self.Session.begin() as s:
            s.execute(update(SessionRow).where(SessionRow.id == session_id).values(last_seen=utcnow()))

    def list_runs(self, session_id: str | None = None, limit: int = 100) -> list[RunSummary]:
        """Newest first; with ``session_id`` only that session's runs (what a browser user may see)."""
        with self.Session() as s:
            q = select(RunRow).order_by(RunRow.created.desc()).limit(limit)
            if session_id is not None:
                q = q.where(RunRow.session_id == session_id)
            out = []
            for r in s.scalars(q):
                tokens = sum(len(st.token_ids) for st in r.streams)
                out.append(RunSummary(r.id, r.session_id, r.created, r.status, r.model_id, r.settings.get("prompt", ""),
                                      list(r.settings.get("coefs", [])), tokens))
            return out

    def get_run(self, run_id: str, session_id: str | None = None) -> RunRow:
        """The run with its streams loaded; a UserError if absent (or, with ``session_id``, not that session's)."""
        with self.Session() as s:
            run = s.get(RunRow, run_id)
            if run is None or (session_id is not None and run.session_id != session_id):
                raise UserError(f"no run {run_id!r} in {self.url}" if session_id is None
                                else f"no run {run_id!r} in this session")
            run.streams  # noqa: B018 - load before the session closes
            return run

    def probe_points(self, run_id: str) -> list[ProbeRow]:
        with self.Session() as s:
            return list(s.scalars(select(ProbeRow).where(ProbeRow.run_id == run_id)
                                  .order_by(ProbeRow.row, ProbeRow.step)))

    def vector_bytes(self, vector_hash: str) -> bytes:
        with self.Session() as s:
            row = s.get(VectorRow, vector_hash)
            if row is None:
                raise UserError(f"the stored copy of vector {vector_hash[:12]} is missing")
            return row.data
