"""The session log: every run in SQLite (or any SQLAlchemy URL), replayable and exportable.

``Store`` owns every SQL statement of the log: opening and migrating (``database``), sessions,
listing and reading runs, writing a run while it streams (``start_run``, ``save_progress``,
``finish_run``, called by ``recorder``), and a run as a plain JSON record and back (``run_record``,
``import_record``, used by ``archive`` for exports and imports). The tables are in ``schema``.
"""

from __future__ import annotations

import base64
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from sqlalchemy import create_engine, delete, event, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import sessionmaker

from steer_ui.engine.events import ProbeEvent, Timing
from steer_ui.errors import UserError
from steer_ui.log.database import (
    display_url,
    migrate,
    owner_alive,
    owner_tag,
    resolve_db_url,
    sqlite_pragmas,
)
from steer_ui.log.schema import ProbeRow, RunRow, SessionRow, StreamRow, VectorRow
from steer_ui.log.summary import RowSummary, RunSummary
from steer_ui.vectors.vector import SteeringVector

F = TypeVar("F", bound=Callable)
RUN_STATUSES = ("running", "finished", "cancelled", "error", "interrupted")
RECORD_FIELDS = ("id", "session_id", "status", "error", "model_id", "model_source", "dtype", "device", "settings",
                 "prompt_text", "prompt_ids", "layers", "probe_suffix_ids", "probe_choices")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    # Random, not sequential: a ?run=ID link must not let a stranger enumerate other people's runs.
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class NewStream:
    row: int
    label: str
    coef: float
    vector: SteeringVector | None = None  # None for the baseline
    layers: list[int] | None = None
    scope: str | None = None
    budget: str | None = None  # 'budget:min=200' (engine.budget), None without one


# What a stream keeps besides its tokens and text (budget rows, the urge to stop, answer dynamics).
STREAM_EXTRAS = ("forced", "interventions", "stop_logprobs", "think_tokens", "dynamics")


@dataclass(frozen=True)
class NewRun:
    """What a run's row holds when it starts (the recorder builds it from the settings and the start event)."""

    id: str
    session_id: str
    model_id: str
    model_source: str
    dtype: str
    device: str
    settings: dict
    prompt_text: str
    prompt_ids: list[int]
    layers: list[int]
    probe_suffix_ids: list[int]
    probe_choices: list[dict]
    streams: list[NewStream] = field(default_factory=list)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:300]


def _log_errors(doing: str) -> Callable[[F], F]:
    """A database failure in the wrapped ``Store`` method (unwritable file, full disk, lost server, locked
    past the timeout) becomes one UserError, "cannot <doing> the session log: <the driver's first line>",
    never a raw driver error; the URL (which may carry a password) is not in it."""
    def wrap(method: F) -> F:
        @functools.wraps(method)
        def checked(store, *args, **kwargs):
            try:
                result = method(store, *args, **kwargs)
            except DBAPIError as err:
                why = store.hide_secrets(_first_line(err.orig or err))
                failed = UserError(f"cannot {doing} the session log: {why}")
            except PoolTimeout:
                failed = UserError(f"cannot {doing} the session log: no database connection came free in time")
            else:
                if doing == "write":
                    store.write_error = None
                return result
            if doing == "write":  # what a page shows until a write succeeds again
                store.write_error = str(failed)
            raise failed from None
        return checked  # type: ignore[return-value]
    return wrap


_reads, _writes = _log_errors("read"), _log_errors("write")


class Store:
    """Open (and migrate) a database; query and write runs. Thread-safe: one SQLAlchemy session per call.

    ``url`` is the database's URL as messages show it (a password hidden); a database error in any method
    is a ``UserError`` naming what failed and the driver's first line."""

    def __init__(self, db: str | None = None):
        self.write_error: str | None = None  # the last write's failure, until a write succeeds
        self._url = resolve_db_url(db)
        self.url = display_url(self._url)
        try:
            url = make_url(self._url)
            self.engine = create_engine(self._url)
        except (ArgumentError, ImportError, ValueError) as err:
            raise UserError(f"cannot use database {self.url!r}: {self.hide_secrets(_first_line(err))}") from None
        if url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", sqlite_pragmas)
        try:
            migrate(self.engine)
        except DBAPIError as err:  # not a database, locked, read-only, unreachable server, ...
            raise UserError(f"cannot open database {self.url}: {self.hide_secrets(_first_line(err.orig or err))}"
                            ) from None
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.mark_interrupted()
        self.drop_empty_sessions()

    def hide_secrets(self, text: str) -> str:
        """``text`` without the database URL as given or its password (a driver's message may quote them)."""
        text = text.replace(self._url, self.url)
        try:
            password = make_url(self._url).password
        except Exception:  # noqa: BLE001 - an unparseable URL: display_url already hid what it could
            password = None
        return text.replace(str(password), "***") if password else text

    def close(self) -> None:
        self.engine.dispose()

    # --- sessions -----------------------------------------------------------------------------
    @_writes
    def new_session(self, kind: str, label: str = "", session_id: str | None = None) -> str:
        now = utcnow()
        sid = session_id or new_id()
        with self.Session.begin() as s:
            if s.get(SessionRow, sid) is None:
                s.add(SessionRow(id=sid, kind=kind, label=label, created=now, last_seen=now))
        return sid

    @_writes
    def touch_session(self, session_id: str) -> None:
        with self.Session.begin() as s:
            s.execute(update(SessionRow).where(SessionRow.id == session_id).values(last_seen=utcnow()))

    @_writes
    def drop_empty_sessions(self, older_than: timedelta = timedelta(days=1)) -> int:
        """Sessions with no run, last seen before ``older_than`` ago (versions before 0.1 wrote one for every
        tokenless call; now a session's row comes with its first run)."""
        cutoff = utcnow() - older_than
        with self.Session.begin() as s:
            stale = (~select(RunRow.id).where(RunRow.session_id == SessionRow.id).exists(),
                     SessionRow.last_seen < cutoff)
            if s.scalar(select(SessionRow.id).where(*stale).limit(1)) is None:
                return 0  # nothing to drop: a read-only log is left alone
            return s.execute(delete(SessionRow).where(*stale)).rowcount

    # --- reading ------------------------------------------------------------------------------
    @_writes
    def mark_interrupted(self) -> int:
        """Runs left 'running' by a process that no longer exists (killed, crashed) become 'interrupted'."""
        with self.Session.begin() as s:
            stale = [r.id for r in s.scalars(select(RunRow).where(RunRow.status == "running"))
                     if not owner_alive(r.owner)]
            if stale:
                s.execute(update(RunRow).where(RunRow.id.in_(stale))
                          .values(status="interrupted", error="the process writing this run ended before it did"))
        return len(stale)

    @_reads
    def list_runs(self, session_id: str | None = None, limit: int = 100) -> list[RunSummary]:
        """Newest first; with ``session_id`` only that session's runs (what a browser user may see)."""
        with self.Session() as s:
            q = select(RunRow).order_by(RunRow.created.desc()).limit(limit)
            if session_id is not None:
                q = q.where(RunRow.session_id == session_id)
            runs = list(s.scalars(q))
            hashes = {st.vector_hash for r in runs for st in r.streams if st.vector_hash}
            # The names only: a vector's bytes stay in the database.
            names = dict(s.execute(select(VectorRow.hash, VectorRow.name).where(VectorRow.hash.in_(hashes))).all())

            def name(h: str | None) -> str | None:
                return None if h is None else names.get(h) or "unnamed"
            return [RunSummary(r.id, r.session_id, r.created, r.status, r.model_id, r.settings.get("prompt", ""),
                               [RowSummary(st.row, st.coef, name(st.vector_hash), st.layers, len(st.token_ids),
                                           st.budget) for st in r.streams])
                    for r in runs]

    @_reads
    def run_ids(self, session_id: str | None = None) -> list[str]:
        """Every run id, oldest first (only ``session_id``'s with one)."""
        with self.Session() as s:
            q = select(RunRow.id).order_by(RunRow.created)
            if session_id is not None:
                q = q.where(RunRow.session_id == session_id)
            return list(s.scalars(q))

    @_reads
    def get_run(self, run_id: str, session_id: str | None = None) -> RunRow:
        """The run with its streams loaded; a UserError if absent (or, with ``session_id``, not that session's)."""
        with self.Session() as s:
            run = s.get(RunRow, run_id)
            if run is None or (session_id is not None and run.session_id != session_id):
                raise UserError(f"no run {run_id!r} in {self.url}" if session_id is None
                                else f"no run {run_id!r} in this session")
            run.streams  # noqa: B018 - load before the session closes
            return run

    @_reads
    def probe_points(self, run_id: str) -> list[ProbeRow]:
        with self.Session() as s:
            return list(s.scalars(select(ProbeRow).where(ProbeRow.run_id == run_id)
                                  .order_by(ProbeRow.row, ProbeRow.step, ProbeRow.id)))

    @_reads
    def vector(self, vector_hash: str) -> SteeringVector:
        """The stored copy of a vector, exactly as the run used it."""
        with self.Session() as s:
            row = s.get(VectorRow, vector_hash)
            if row is None:
                raise UserError(f"the stored copy of vector {vector_hash[:12]} is missing")
            return SteeringVector.from_bytes(row.data, f"stored vector {vector_hash[:12]}")

    def run_vectors(self, run: RunRow) -> dict[str, SteeringVector]:
        """The stored copies of the vectors ``run``'s rows used, by content hash."""
        return {h: self.vector(h) for h in dict.fromkeys(st.vector_hash for st in run.streams if st.vector_hash)}

    # --- writing a run as it streams ----------------------------------------------------------------
    @_writes
    def start_run(self, new: NewRun) -> None:
        with self.Session.begin() as db:
            hashes = {}
            for st in new.streams:
                if st.vector is not None:
                    hashes[st.row] = self._put_vector(db, st.vector)
            db.flush()  # no ORM relationship orders these inserts: the vectors must exist first
            db.add(RunRow(id=new.id, session_id=new.session_id, created=utcnow(), status="running", owner=owner_tag(),
                          model_id=new.model_id, model_source=new.model_source, dtype=new.dtype, device=new.device,
                          settings=new.settings, prompt_text=new.prompt_text, prompt_ids=new.prompt_ids,
                          layers=new.layers, probe_suffix_ids=new.probe_suffix_ids, probe_choices=new.probe_choices))
            db.flush()  # the run row must exist before its streams reference it
            db.add_all(StreamRow(run_id=new.id, row=st.row, label=st.label, coef=st.coef,
                                 vector_hash=hashes.get(st.row), layers=st.layers, scope=st.scope, token_ids=[],
                                 text="", budget=st.budget) for st in new.streams)

    @staticmethod
    def _put_vector(db, vector: SteeringVector) -> str:
        vector_hash = vector.content_hash()
        if db.get(VectorRow, vector_hash) is None:
            db.add(VectorRow(hash=vector_hash, name=vector.name, model_hint=vector.model_hint, data=vector.to_bytes()))
        return vector_hash

    @_writes
    def save_progress(self, run_id: str, streams: dict[int, tuple],
                      probes: Sequence[ProbeEvent], db=None) -> None:
        """Each changed row's tokens and text so far (and, as a third item, its ``STREAM_EXTRAS`` by name),
        and new probe readings."""
        if db is None:
            with self.Session.begin() as session:
                return self.save_progress(run_id, streams, probes, session)
        for row, (token_ids, text, *extras) in streams.items():
            more = {k: v for k, v in (extras[0] if extras else {}).items() if k in STREAM_EXTRAS}
            db.execute(update(StreamRow).where(StreamRow.run_id == run_id, StreamRow.row == row)
                       .values(token_ids=list(token_ids), text=text, **more))
        db.add_all(ProbeRow(run_id=run_id, row=p.row, step=p.step, logodds=p.logodds, mass=p.mass,
                            logprobs=p.logprobs, reliable=p.reliable, think_closed=p.think_closed, final=p.final)
                   for p in probes)

    @_writes
    def finish_run(self, run_id: str, status: str, error: str | None, streams: dict[int, tuple],
                   probes: Sequence[ProbeEvent], timing: Timing | None = None,
                   finish_reasons: dict[int, str] | None = None) -> None:
        """The last progress and the outcome, in one transaction. Rows without a finish reason are
        'cancelled' when the run was."""
        with self.Session.begin() as db:
            self.save_progress(run_id, streams, probes, db)
            values: dict = {"status": status, "error": error, "finished": utcnow()}
            if timing is not None:
                values.update(load_s=timing.load_s, prefill_s=timing.prefill_s, decode_s=timing.decode_s,
                              steps=timing.steps)
            for row, reason in (finish_reasons or {}).items():
                db.execute(update(StreamRow).where(StreamRow.run_id == run_id, StreamRow.row == row)
                           .values(finish_reason=reason))
            if status == "cancelled":
                db.execute(update(StreamRow).where(StreamRow.run_id == run_id, StreamRow.finish_reason.is_(None))
                           .values(finish_reason="cancelled"))
            db.execute(update(RunRow).where(RunRow.id == run_id).values(**values))

    # --- a run as a plain JSON record (exports) and back (imports) ---------------------------------
    @_reads
    def run_record(self, run: RunRow) -> dict:
        """One run as plain JSON: settings, the stored vectors, streams and the probe series."""
        with self.Session() as s:
            hashes = list(dict.fromkeys(st.vector_hash for st in run.streams if st.vector_hash))
            vectors = [s.get(VectorRow, h) for h in hashes]
        return {
            **{k: getattr(run, k) for k in RECORD_FIELDS}, "created": _iso(run.created), "finished": _iso(run.finished),
            "timing": {"load_s": run.load_s, "prefill_s": run.prefill_s, "decode_s": run.decode_s, "steps": run.steps},
            "vectors": [{"hash": v.hash, "name": v.name, "model_hint": v.model_hint,
                         "safetensors_b64": base64.b64encode(v.data).decode()} for v in vectors],
            "streams": [{"row": st.row, "label": st.label, "coef": st.coef, "vector_hash": st.vector_hash,
                         "layers": st.layers, "scope": st.scope, "token_ids": st.token_ids, "text": st.text,
                         "finish_reason": st.finish_reason, "budget": st.budget,
                         **{k: getattr(st, k) for k in STREAM_EXTRAS}} for st in run.streams],
            "probes": [{"row": p.row, "step": p.step, "logodds": p.logodds, "mass": p.mass, "logprobs": p.logprobs,
                        "reliable": p.reliable, "think_closed": p.think_closed, "final": p.final}
                       for p in self.probe_points(run.id)],
        }

    @_writes
    def import_record(self, r: dict) -> bool:
        """Add a run from its record (``run_record``'s shape); False when a run with its id exists."""
        r = _record_with_row_vectors(r)
        with self.Session.begin() as s:
            if s.get(RunRow, r["id"]) is not None:
                return False
            if s.get(SessionRow, r["session_id"]) is None:
                now = utcnow()
                s.add(SessionRow(id=r["session_id"], kind="import", label="imported", created=now, last_seen=now))
            for v in r.get("vectors", []):
                if s.get(VectorRow, v["hash"]) is None:
                    s.add(VectorRow(hash=v["hash"], name=v["name"], model_hint=v["model_hint"],
                                    data=base64.b64decode(v["safetensors_b64"])))
            s.flush()  # session and vector rows before the run that references them
            t = r.get("timing") or {}
            s.add(RunRow(**{k: r[k] for k in RECORD_FIELDS if k in r}, owner=None,
                         created=datetime.fromisoformat(r["created"]),
                         finished=datetime.fromisoformat(r["finished"]) if r.get("finished") else None,
                         load_s=t.get("load_s"), prefill_s=t.get("prefill_s"), decode_s=t.get("decode_s"),
                         steps=t.get("steps")))
            s.flush()
            s.add_all(StreamRow(run_id=r["id"], **st) for st in r["streams"])
            s.add_all(ProbeRow(run_id=r["id"], **pr) for pr in r["probes"])
        return True


def _record_with_row_vectors(r: dict) -> dict:
    """Records exported before rows carried their own vectors: one "vector" for every steered row."""
    if "vector" not in r:
        return r
    v = r["vector"]
    streams = [{**st, "vector_hash": v["hash"] if v and st["row"] > 0 else None,
                "layers": r["layers"] if v and st["row"] > 0 else None,
                "scope": r["settings"].get("scope", "all") if v and st["row"] > 0 else None} for st in r["streams"]]
    rest = {k: val for k, val in r.items() if k not in ("vector", "streams")}
    return {**rest, "vectors": [v] if v else [], "streams": streams}


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None
