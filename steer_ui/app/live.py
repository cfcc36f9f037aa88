"""One run in the background for an interactive front end: engine thread -> session log + throttled views.

The engine runs in its own thread so the front end can poll at its own pace (a browser wants 10-20
updates a second, whatever the model's speed) and stop it at any time. The session log is fed from
the engine thread, so a run is saved the same whether the browser stays, stops it or goes away.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch

from steer_ui.app.request_thread import start_in_request_context
from steer_ui.engine import worker
from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError
from steer_ui.log.recorder import RunRecorder
from steer_ui.model.loading import LoadedModel
from steer_ui.views.run_view import RunView

_END = object()
log = logging.getLogger(__name__)


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200] if text else ''}"


class LiveRun:
    """Validate on construction (UserError), then ``frames()`` to watch it and ``stop()`` to end it.

    ``hold_model`` (the model lock, or ``AppContext.hold_model``, which also charges the time) serialises
    everything that puts hooks on the shared model: the run holds it from its first forward until its
    hooks are gone.
    """

    def __init__(self, lm: LoadedModel, settings: RunSettings, hold_model: AbstractContextManager,
                 recorder: RunRecorder | None = None, key: str | None = None):
        self.cancel = worker.Cancel()
        try:
            self._events = worker.stream(lm, settings, self.cancel)  # raises UserError before anything starts
        except BaseException:
            if recorder is not None:
                recorder.close()  # nothing was written: a run that never started leaves no row
            raise
        self.recorder = recorder
        self.run_id = recorder.run_id if recorder is not None else None
        self.view = RunView(key or self.run_id or f"run-{id(self)}", lm.profile.think_close)
        self._hold = hold_model
        self._queue: queue.Queue = queue.Queue()
        # In the request's context: on ZeroGPU, the GPU is booked against the user who asked.
        self._thread = start_in_request_context(self._work, f"live-{self.view.key}")

    def _work(self) -> None:
        try:
            with self._hold:
                for event in self._events:
                    if self.recorder is not None:
                        self.recorder(event)
                    self._queue.put(event)
        except UserError as err:
            self._fail(str(err))
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: the run ends, the app stays up
            if isinstance(err, torch.OutOfMemoryError):
                self._fail(f"{type(err).__name__}: {worker.out_of_memory_message(err)}")
            else:
                self._fail(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
        finally:
            self._events = None  # drop the generator (and its cache) before anything else runs
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give an out-of-memory run's blocks back for the next one
            if self.recorder is not None:
                self.recorder.close()
                if self.recorder.error is not None:  # the run happened, but the log did not take it
                    message = f"the run was not saved to the session log ({_first_line(self.recorder.error)})"
                    log.error("run %s: %s", self.run_id, message)
                    self._queue.put(("error", message))
            self._queue.put(_END)

    def _fail(self, message: str) -> None:
        if self.recorder is not None:
            self.recorder.fail(message)
        self._queue.put(("error", message))

    def frames(self, interval: float = 1 / 15) -> Iterator[RunView]:
        """The view, at most once per ``interval`` seconds while events arrive, and once more at the end."""
        last = 0.0
        while True:
            try:
                item = self._queue.get(timeout=interval)
            except queue.Empty:
                continue
            ended = self._drain(item)
            now = time.monotonic()
            if ended:
                yield self.view
                return
            if now - last >= interval:
                last = now
                yield self.view

    def _drain(self, first: object) -> bool:
        """Apply every queued event; True when the run has ended."""
        item = first
        while True:
            if item is _END:
                return True
            if isinstance(item, tuple):
                self.view.error = item[1]
            else:
                self.view.apply(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False

    def stop(self, timeout: float | None = 60.0) -> None:
        """End the run at its next decode step and wait (up to ``timeout``; 0: not at all) until it is saved
        and the model is free."""
        self.cancel.set()
        if timeout != 0:
            self._thread.join(timeout)
