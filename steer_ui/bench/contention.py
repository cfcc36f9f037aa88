"""The contended case (``--contended``): the engine's case 3 alone and beside one other CPU-bound process.

The other process is a pure-Python loop (one busy core, like a test run or another program). Case 3 is
timed alone, beside it with the thread count following the load (``model.cpu_threads``, the default),
and beside it with the count fixed (``cpu_threads.fixed``, the behaviour before), round-robin.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from steer_ui.bench.cases import _time_once
from steer_ui.model import cpu_threads
from steer_ui.model.loading import LoadedModel

SETTLE_S = 1.5  # the competitor's load shows in cpu_threads' next reading (every 0.5 s)


@contextmanager
def busy_process() -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(SETTLE_S)
        yield
    finally:
        proc.kill()
        proc.wait()
        time.sleep(SETTLE_S)  # and its absence, before the next case alone


def contended(lm: LoadedModel, fn: Callable[[], object], tokens: int, repeats: int) -> dict[str, float]:
    """Case 3's tokens/s per stream: ``alone``, ``beside`` a busy process, ``beside_fixed`` (fixed count)."""
    seconds: dict[str, list[float]] = {"alone": [], "beside": [], "beside_fixed": []}
    for round_ in range(repeats):
        print(f"  contended, round {round_ + 1} of {repeats}", file=sys.stderr, flush=True)
        seconds["alone"].append(_time_once(lm, fn))
        with busy_process():
            seconds["beside"].append(_time_once(lm, fn))
            with cpu_threads.fixed():
                seconds["beside_fixed"].append(_time_once(lm, fn))
    return {key: tokens / statistics.median(values) for key, values in seconds.items()}
