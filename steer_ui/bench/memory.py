"""Peak memory of a benchmark case: live tensors (CPU: profiler allocation events; CUDA: the allocator's peak)
and, on CPU, the process's RSS sampled every 2 ms."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


class PeakMemory:
    """Peak growth of process memory while the block runs (CPU: RSS sampled every 2 ms; CUDA: allocator peak)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        import psutil

        self._proc = psutil.Process()
        self._base = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = (self._peak - self._base) / 2**20


def peak_tensor_mb(fn: Callable[[], object]) -> float:
    """Peak growth of live CPU tensor memory while ``fn`` runs: the CPU twin of CUDA's allocator peak.

    RSS also counts what glibc keeps after a free, which depends on the order of allocations more than
    on their size; the profiler's allocation events count tensors only.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20
