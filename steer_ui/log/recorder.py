"""Writing a run to the session log while it streams, without ever slowing the stream.

The recorder is an event consumer like the printers: ``recorder(event)`` only puts the event on a
queue. A writer thread batches token and probe events and flushes them every ``flush_tokens`` tokens
or ``flush_s`` seconds, and at the end; so a killed process loses at most one batch, and the database
(WAL) stays consistent.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from safetensors.torch import save as safetensors_bytes
from sqlalchemy import update

from steer_ui.engine.events import DoneEvent, Event, ProbeEvent, StartEvent, TokenEvent
from steer_ui.model.loading import LoadedModel
from steer_ui.engine.run_settings import RunSettings
from steer_ui.log.store import ProbeRow, RunRow, Store, StreamRow, VectorRow, new_id, owner_tag, utcnow

_STOP = object()


@dataclass
class _RowBuffer:
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    dirty: bool = False


class RunRecorder:
    """Records one run. Call it with every event, then ``close()`` (also after an error: ``fail(text)``)."""

    def __init__(self, store: Store, session_id: str, lm: LoadedModel, settings: RunSettings,
                 flush_tokens: int = 64, flush_s: float = 1.0):
        self.store, self.session_id, self.lm, self.settings = store, session_id, lm, settings
        self.run_id = new_id()
        self.flush_tokens, self.flush_s = flush_tokens, flush_s
        self._queue: queue.Queue = queue.Queue()
        self._rows: dict[int, _RowBuffer] = {}
        self._probes: list[ProbeEvent] = []
        self._pending = 0
        self._started = False
        self._finished = False
        self.error: BaseException | None = None  # a database failure, reported by close()
        self._thread = threading.Thread(target=self._work, name=f"recorder-{self.run_id}", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        self._queue.put(event)

    def fail(self, message: str) -> None:
        self._queue.put(("error", message))

    def close(self, timeout: float = 30.0) -> None:
        """Finish writing; a run that never got its done event is saved as cancelled."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # --- writer thread -------------------------------------------------------------------------
    def _work(self) -> None:
        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=self.flush_s)
            except queue.Empty:
                item = None
            try:
                if item is _STOP:
                    if self._started and not self._finished:
                        self._finish("cancelled", None, None)
                    return
                if item is not None:
                    self._handle(item)
                if self._pending and (self._pending >= self.flush_tokens
                                      or time.monotonic() - last_flush >= self.flush_s):
                    self._flush()
                    last_flush = time.monotonic()
            except Exception as err:  # keep draining so the producer never blocks; report at close()
                self.error = self.error or err

    def _handle(self, item: object) -> None:
        if isinstance(item, StartEvent):
            self._start(item)
        elif isinstance(item, TokenEvent):
            buf = self._rows[item.row]
            buf.token_ids.append(item.token_id)
            buf.text.append(item.text)
            buf.dirty = True
            self._pending += 1
        elif isinstance(item, ProbeEvent):
            self._probes.append(item)
            self._pending += 1
        elif isinstance(item, DoneEvent):
            for r in item.rows:  # the done event is authoritative (it includes held-back text)
                self._rows[r.row] = _RowBuffer(list(r.token_ids), [r.text], True)
            status = "cancelled" if any(r.finish_reason == "cancelled" for r in item.rows) else "finished"
            self._finish(status, None, item)
        elif isinstance(item, tuple) and item[0] == "error":
            if self._started and not self._finished:
                self._finish("error", item[1], None)

    def _start(self, ev: StartEvent) -> None:
        lm, s = self.lm, self.settings
        vector_hash = None
        with self.store.Session.begin() as db:
            if s.vector is not None and s.coefs:
                vector_hash = s.vector.content_hash()
                if db.get(VectorRow, vector_hash) is None:
                    tensors = {f"direction.{k}": v.contiguous() for k, v in s.vector.directions.items()}
                    meta = {**s.vector.metadata, "model_hint": s.vector.model_hint, "name": s.vector.name}
                    db.add(VectorRow(hash=vector_hash, name=s.vector.name, model_hint=s.vector.model_hint,
                                     data=safetensors_bytes(tensors, metadata=meta)))
                    db.flush()  # no ORM relationship orders these inserts: the vector must exist first
            db.add(RunRow(
                id=self.run_id, session_id=self.session_id, created=utcnow(), status="running",
                owner=owner_tag(), model_id=lm.model_id, model_source=lm.source,
                dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device), settings=s.to_dict(),
                prompt_text=ev.prompt_text, prompt_ids=ev.prompt_ids, vector_hash=vector_hash, layers=ev.layers,
                probe_suffix_ids=ev.probe_suffix_ids,
                probe_choices=[{"label": c.label, "token_ids": c.token_ids} for c in ev.probe_choices],
            ))
            db.flush()  # the run row must exist before its streams reference it
            for r in ev.rows:
                db.add(StreamRow(run_id=self.run_id, row=r.row, label=r.label, coef=r.coef, token_ids=[], text=""))
        self._rows = {r.row: _RowBuffer() for r in ev.rows}
        self._started = True

    def _flush(self, db=None) -> None:
        def write(session) -> None:
            for row, buf in self._rows.items():
                if buf.dirty:
                    session.execute(update(StreamRow).where(StreamRow.run_id == self.run_id, StreamRow.row == row)
                                    .values(token_ids=list(buf.token_ids), text="".join(buf.text)))
                    buf.dirty = False
            session.add_all([ProbeRow(run_id=self.run_id, row=p.row, step=p.step, logodds=p.logodds, mass=p.mass,
                                      logprobs=p.logprobs, reliable=p.reliable, think_closed=p.think_closed)
                             for p in self._probes])
            self._probes.clear()
            self._pending = 0

        if db is not None:
            write(db)
        else:
            with self.store.Session.begin() as session:
                write(session)

    def _finish(self, status: str, error: str | None, done: DoneEvent | None) -> None:
        with self.store.Session.begin() as db:
            self._flush(db)
            values: dict = {"status": status, "error": error, "finished": utcnow()}
            if done is not None:
                t = done.timing
                values.update(load_s=t.load_s, prefill_s=t.prefill_s, decode_s=t.decode_s, steps=t.steps)
                for r in done.rows:
                    db.execute(update(StreamRow).where(StreamRow.run_id == self.run_id, StreamRow.row == r.row)
                               .values(finish_reason=r.finish_reason))
            else:
                db.execute(update(StreamRow).where(StreamRow.run_id == self.run_id, StreamRow.finish_reason.is_(None))
                           .values(finish_reason="cancelled" if status == "cancelled" else None))
            db.execute(update(RunRow).where(RunRow.id == self.run_id).values(**values))
        self._finished = True
