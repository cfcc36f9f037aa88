"""Driving one run for a notebook: the engine in a worker thread, its events handed to the caller.

Why a thread: Ctrl-C (Jupyter's interrupt) raises KeyboardInterrupt wherever the main thread is. If the
engine's generator ran there, an interrupt landing inside a forward would close the generator and lose
the run. With the engine in a worker, the interrupt lands in the caller's wait for the next event; it
sets the engine's cancel flag, the engine stops at its next step and still sends its done event (rows
marked ``cancelled``), so the partial run is kept.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from steer_ui.engine.decode import run
from steer_ui.engine.events import DoneEvent, Event
from steer_ui.engine.run_settings import RunSettings
from steer_ui.model.loading import LoadedModel

_END = object()
OnEvent = Callable[[Event], None]


def drive(lm: LoadedModel, settings: RunSettings, on_event: OnEvent | None = None,
          on_tick: Callable[[], None] | None = None, tick_s: float = 0.25) -> tuple[list[Event], bool]:
    """Run ``settings`` on ``lm``; (every event, whether it was interrupted).

    ``on_event`` sees each event as it comes; ``on_tick`` is called at most every ``tick_s`` seconds while
    events arrive, and once at the end (a live display's refresh). Settings are checked before the
    thread starts, so a mistake raises ``UserError`` here. A second Ctrl-C while stopping is raised.
    """
    cancel = threading.Event()
    events = run(lm, settings, cancel)  # UserError now, in the caller's thread
    inbox: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            for event in events:
                inbox.put(event)
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
            inbox.put(err)
        finally:
            inbox.put(_END)

    thread = threading.Thread(target=work, name="steer-ui-run", daemon=True)
    thread.start()
    got: list[Event] = []
    interrupted = False
    last_tick = time.monotonic()
    while True:
        try:
            item = inbox.get()
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            cancel.set()  # the engine stops at its next step and still sends done
            continue
        if item is _END:
            break
        if isinstance(item, BaseException):
            thread.join()
            raise item
        got.append(item)
        if on_event is not None:
            on_event(item)
        if on_tick is not None and (time.monotonic() - last_tick >= tick_s or isinstance(item, DoneEvent)):
            last_tick = time.monotonic()
            on_tick()
    thread.join()
    return got, interrupted
