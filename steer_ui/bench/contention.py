"""The contended case (``--contended``): the engine's case 3 alone and beside one other CPU-bound process.

The other process is a pure-Python loop (one busy core, like a test run or another program). Case 3 is
timed alone, beside it with the thread count following the load (``model.cpu_threads``, the default),
and beside it with the count fixed (``STEER_UI_FIXED_THREADS=1``, the behaviour before), round-robin.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from steer_ui.bench.cases import _time_once
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


@contextmanager
def fixed_threads() -> Iterator[None]:
    """The thread count as set at start, whatever the load (and this thread's count put back to it)."""
    most = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    before = os.environ.get("STEER_UI_FIXED_THREADS")
    os.environ["STEER_UI_FIXED_THREADS"] = "1"
    threads = torch.get_num_threads()
    torch.set_num_threads(most)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if before is None:
            del os.environ["STEER_UI_FIXED_THREADS"]
        else:
            os.environ["STEER_UI_FIXED_THREADS"] = before


def contended(lm: LoadedModel, fn: Callable[[], object], tokens: int, repeats: int) -> dict[str, float]:
    """Case 3's tokens/s per stream: ``alone``, ``beside`` a busy process, ``beside_fixed`` (fixed count)."""
    seconds: dict[str, list[float]] = {"alone": [], "beside": [], "beside_fixed": []}
    for round_ in range(repeats):
        print(f"  contended, round {round_ + 1} of {repeats}", file=sys.stderr, flush=True)
        seconds["alone"].append(_time_once(lm, fn))
        with busy_process():
            seconds["beside"].append(_time_once(lm, fn))
            with fixed_threads():
                seconds["beside_fixed"].append(_time_once(lm, fn))
    return {key: tokens / statistics.median(values) for key, values in seconds.items()}
