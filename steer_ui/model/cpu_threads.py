"""CPU threads that give way when another process wants the cores.

torch runs each operator of a decode step as an OpenMP parallel region over all its threads, and every
region ends at a barrier. With 2 threads on 2 cores and another busy process on the machine, one of
our threads keeps losing its core: the other reaches the barrier, spins, and the step waits for a
time slice. A decode step of the bundled model is a few hundred such regions, so it all but stops.

Measured with the README's CLI example (bundled model, 4 rows, 48 tokens) on the development machine
(AMD EPYC, 2 cores), decode steps/s, alone and beside one pure-Python busy loop:

- 2 threads, OpenMP's default (active) waiting: 13.6 alone, 3.1 contended (4.4x slower; beside
  another torch process it was 3.1-3.2 here, and 0.6 in the issue's report, 24x);
- 2 threads, ``OMP_WAIT_POLICY=PASSIVE``: 10.0 alone, 7.9 contended (it costs a quarter alone);
- ``GOMP_SPINCOUNT`` of 1,000 / 20,000 / 100,000: 10.7 / 10.2 / 14.7 alone, 6.5 / 2.4 / 1.1 contended;
- 1 thread: 9.0 alone, 9.5 contended.

So the count follows the machine: every ``INTERVAL_S`` the CPU time other processes took is read from
``/proc/stat`` minus our own (psutil, ~0.1 ms), and the next steps use the cores that are free (at
least one, never more than the count set at start). A forward pre-hook on the model (``follow_load``)
sets it in the thread that runs the model, before each call: under OpenMP torch's count is per thread
(a thread that has not run anything yet starts from the count last set anywhere). Results stay within float32
rounding of each other: 1 and 2 threads gave logits within 3.4e-5 on the bundled model (2 and 2:
identical), the same order as the CPU kernels chosen per machine (``cpu_matmul``).
``STEER_UI_FIXED_THREADS=1`` keeps the count fixed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import torch

INTERVAL_S = 0.5  # how often the load is read: a few decode steps on CPU
FREE_ENOUGH = 0.5  # a core counts as free when others leave at least half of it (rounding)


class CpuThreads:
    """Picks the intra-op thread count from the cores other processes leave free; see the module docstring."""

    def __init__(self, most: int | None = None):
        self.most = most or torch.get_num_threads()
        # The CPUs this process may run on (a container's cpuset, taskset): others' load elsewhere is no matter.
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self.cores = len(self.cpus) if self.cpus else psutil.cpu_count() or self.most
        self.wanted = self.most
        self.follow = True  # False: the count as set at start (``fixed``)
        self._lock = threading.Lock()
        self._me = psutil.Process()
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        """(wall time, CPU seconds busy on our CPUs, CPU seconds of this process)."""
        per_cpu = psutil.cpu_times(percpu=True)
        times = [per_cpu[i] for i in self.cpus if i < len(per_cpu)] if self.cpus else per_cpu
        busy = sum(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) for t in times)
        mine = self._me.cpu_times()
        return time.monotonic(), busy, mine.user + mine.system

    def others(self) -> float | None:
        """Cores other processes kept busy since the last reading, or None within ``INTERVAL_S`` of it."""
        if time.monotonic() - self._last[0] < INTERVAL_S:  # the usual case: no reading due (~0.2 us)
            return None
        with self._lock:
            now = self._sample()
            elapsed = now[0] - self._last[0]
            if elapsed < INTERVAL_S:  # another thread took the reading meanwhile
                return None
            others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / elapsed
            self._last = now
            return others

    def tick(self) -> None:
        """Before a model call on CPU: re-read the load when due, and set this thread's count to match."""
        others = self.others()
        if others is not None:
            self.wanted = max(1, min(self.most, int(self.cores - others + FREE_ENOUGH)))
        count = self.wanted if self.follow else self.most
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)


@contextmanager
def fixed() -> Iterator[None]:
    """Inside, every model keeps the count set at start whatever the load (the bench compares the two)."""
    threads = shared()
    if threads is None:
        yield
        return
    threads.follow = False
    try:
        yield
    finally:
        threads.follow = True


def follow_load(model: torch.nn.Module) -> None:
    """Before every forward of ``model`` on CPU, whoever calls it (the engine, training and extraction,
    which call the inner model, ``generate``, a notebook) and on whatever thread, that thread's count
    follows the load: the hook sits on the input embeddings, which every forward starts with."""
    threads = shared()
    if threads is not None:
        model.get_input_embeddings().register_forward_pre_hook(_ticker(threads))


def unfollow(model: torch.nn.Module) -> None:
    """Take ``follow_load``'s hook off (a compiled copy: the graph is not the place to read /proc)."""
    hooks = model.get_input_embeddings()._forward_pre_hooks
    for key, hook in list(hooks.items()):
        if getattr(hook, "follows_load", False):
            del hooks[key]


def _ticker(threads: CpuThreads):
    def tick(module: torch.nn.Module, args: tuple) -> None:
        threads.tick()

    tick.follows_load = True
    return tick


_shared: CpuThreads | None = None


def shared() -> CpuThreads | None:
    """The process's one ``CpuThreads`` (the cores are the process's), or None when turned off."""
    global _shared
    if os.environ.get("STEER_UI_FIXED_THREADS") == "1":
        return None
    if _shared is None:
        _shared = CpuThreads()
    return _shared
