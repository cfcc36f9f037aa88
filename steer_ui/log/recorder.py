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
from dataclasses import asdict, dataclass, field

from steer_ui.engine.events import DoneEvent, Event, InterveneEvent, ProbeEvent, StartEvent, TokenEvent
from steer_ui.engine.run_settings import RunSettings
from steer_ui.log.store import NewRun, NewStream, Store, new_id
from steer_ui.model.loading import LoadedModel

_STOP = object()


@dataclass
class _RowBuffer:
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    dirty: bool = False
    forced: list[int] = field(default_factory=list)
    interventions: list[dict] = field(default_factory=list)
    stop_logprobs: list[float | None] = field(default_factory=list)
    think_tokens: int | None = None
    dynamics: dict | None = None

    def extras(self) -> dict:
        return {"forced": self.forced, "interventions": self.interventions, "stop_logprobs": self.stop_logprobs,
                "think_tokens": self.think_tokens, "dynamics": self.dynamics}


@dataclass(frozen=True)
class ModelStamp:
    """What the log records of the model a run ran on, when the model is in another process (a Ray worker):
    the ``LoadedModel`` fields ``RunRecorder`` reads."""

    model_id: str
    source: str
    dtype: str
    device: str


class RunRecorder:
    """Records one run. Call it with every event, then ``close()`` (also after an error: ``fail(text)``)."""

    def __init__(self, store: Store, session_id: str, lm: LoadedModel | ModelStamp, settings: RunSettings,
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
            buf.stop_logprobs.append(item.stop_logprob)
            if item.forced:
                buf.forced.append(item.step)
            buf.dirty = True
            self._pending += 1
        elif isinstance(item, InterveneEvent):
            self._rows[item.row].interventions.append({"step": item.step, "kind": item.kind, "text": item.text})
            self._rows[item.row].dirty = True
        elif isinstance(item, ProbeEvent):
            self._probes.append(item)
            self._pending += 1
        elif isinstance(item, DoneEvent):
            for r in item.rows:  # the done event is authoritative (it includes held-back text)
                buf = self._rows[r.row]
                buf.token_ids, buf.text, buf.dirty = list(r.token_ids), [r.text], True
                buf.think_tokens = r.think_tokens
                buf.dynamics = asdict(r.dynamics) if r.dynamics is not None else None
            status = "cancelled" if any(r.finish_reason == "cancelled" for r in item.rows) else "finished"
            self._finish(status, None, item)
        elif isinstance(item, tuple) and item[0] == "error":
            if self._started and not self._finished:
                self._finish("error", item[1], None)

    def _start(self, ev: StartEvent) -> None:
        lm, by_row = self.lm, {i + 1: r for i, r in enumerate(self.settings.rows)}
        self.store.start_run(NewRun(
            id=self.run_id, session_id=self.session_id, model_id=lm.model_id, model_source=lm.source,
            dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device), settings=self.settings.to_dict(),
            prompt_text=ev.prompt_text, prompt_ids=ev.prompt_ids, layers=ev.layers,
            probe_suffix_ids=ev.probe_suffix_ids,
            probe_choices=[{"label": c.label, "token_ids": c.token_ids, "variants": c.variants}
                           for c in ev.probe_choices],
            streams=[NewStream(r.row, r.label, r.coef, by_row[r.row].vector if r.row in by_row else None,
                               r.layers if r.row else None, r.scope, r.budget) for r in ev.rows]))
        self._rows = {r.row: _RowBuffer() for r in ev.rows}
        self._started = True

    def _changes(self) -> tuple[dict[int, tuple], list[ProbeEvent]]:
        """What to write since the last flush: the rows that changed, and the new probe readings."""
        streams = {row: (list(buf.token_ids), "".join(buf.text), buf.extras())
                   for row, buf in self._rows.items() if buf.dirty}
        for buf in self._rows.values():
            buf.dirty = False
        probes, self._probes = self._probes, []
        self._pending = 0
        return streams, probes

    def _flush(self) -> None:
        self.store.save_progress(self.run_id, *self._changes())

    def _finish(self, status: str, error: str | None, done: DoneEvent | None) -> None:
        streams, probes = self._changes()
        self.store.finish_run(self.run_id, status, error, streams, probes, done.timing if done else None,
                              {r.row: r.finish_reason for r in done.rows} if done else None)
        self._finished = True
