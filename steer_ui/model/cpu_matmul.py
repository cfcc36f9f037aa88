"""Linear layers for the few-row products of batched decode steps on CPU, the kernel chosen by timing.

A decode step multiplies every weight by one row per stream (two for baseline + steered, four when the
probe's last positions reach the lm_head). There are two ways to compute it, and which is faster
depends on the CPU, the weight's shape and the row count:

- ``F.linear``. With 2-8 rows, MKL may repack the whole weight on every call.
- ``weight @ x.T``. This streams the weight once. x.T stays a transposed view (column-major for
  MKL), and the output is made contiguous.

So neither is assumed. At load, for each distinct weight shape of a CPU float32 model, both paths are
timed on one of the model's own weights. Each gets one warm-up call, then up to ``REPEATS`` calls
alternating with the other, and its best time counts (on a shared machine, noise only adds time).
``weight @ x.T`` is kept where it takes at most ``MARGIN`` of ``F.linear``'s time. Rows 2, 4 and 8 are
always timed; a row count between them is timed only where its neighbours disagree, and otherwise takes
their decision. Everything else uses ``F.linear``: one row (``generate``, a single stream), 9 rows and
more (prompts, probe suffixes), and shapes not decided yet.

The decisions are cached as JSON under ``<cache dir>/cpu_kernels/``, beside the conversion cache. The
key is the CPU model name, the torch version, the thread count and the model's weight shapes, so a
restart only reads the file. A file that is unreadable or for another key is ignored; the shapes are
timed again and the file is replaced atomically. A busy CPU makes small products wait for a core
(10-15 ms instead of 0.05 ms), and then both paths' times are noise. Such timings are caught (see
``time_shape``), use ``F.linear``, and are not cached. ``STEER_UI_PLAIN_LINEAR=1`` turns it all off.
``summary()`` says which path each shape took, and ``python -m steer_ui.bench`` reports it.

Measured with SmolLM2-135M (weights 576x576, 192x576, 1536x576, 576x1536 and the 49152x576 lm_head),
2 threads:

- Intel Xeon with AVX-512, 2 cores (issue #15). At 2 rows the lm_head took 6.5 ms with ``F.linear`` and
  12.4 ms as ``weight @ x.T``. With ``weight @ x.T`` used for every few-row product, case 3 of the
  bench ran at 9.7 tok/s per stream, against 23.4 on the development machine.
- AMD EPYC, 2 cores (the development machine), 2026-11-23. At 2 rows the lm_head took 19.2 ms with
  ``F.linear`` and 6.6 ms as ``weight @ x.T``; at 4 rows, 18.6 and 6.4 ms; at 8 rows, 19.9 and
  10.2 ms; at 1 row, 9.6 ms with ``F.linear``. A pass over all 211 weights at 2 rows took 74 ms with
  ``F.linear`` and 38 ms as ``weight @ x.T`` (at 4 rows, 83 and 39 ms). A 2-row decode step took
  ~97 ms with ``F.linear`` everywhere and ~56 ms as decided. This machine chose ``weight @ x.T`` at
  2-8 rows for the lm_head, 1536x576 and 576x1536, and at 2-5 rows for 576x576. 192x576 flips
  between runs (at ~0.03 ms either way, it makes no difference). Timing took 0.32-0.34 s at load
  (0.3 s of it the lm_head), and reading the cache file takes 1-2 ms. With a test run sharing the
  cores, timing took 1.3-2.2 s, and the result was not cached.

Either path is the same product with a different summation order, so they agree to float32 rounding,
not bit for bit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MIN_ROWS, MAX_ROWS = 2, 8
TIMED_ROWS = (2, 4, 8)  # always timed; rows between two that disagree are timed by bisection
REPEATS = 5  # timed calls per path after one warm-up; the best counts ...
MIN_REPEATS, PAIR_BUDGET_S = 2, 0.03  # ... but stop after 2 once both paths together took 30 ms
PLAUSIBLE, RETRIES = 2.0, 1  # see time_shape: a timing slowed down by a busy machine is re-taken once
BUSY_BUDGET_S = 1.0  # on a busy CPU, shapes still untimed after this long use F.linear (not cached)
MARGIN = 0.9  # weight @ x.T must take at most this fraction of F.linear's time to be chosen
OPT_OUT_ENV = "STEER_UI_PLAIN_LINEAR"
CACHE_SUBDIR = "cpu_kernels"
CACHE_VERSION = 1  # bump when the timing procedure changes, so old decisions are not reused

# (out_features, in_features) -> the row counts computed as ``weight @ x.T``. A shape that is missing,
# and any row count not in its set, uses F.linear. Filled by ``decide``; one table per process, since
# the decision depends on the shape and the CPU, not on the weight's values.
DECISIONS: dict[tuple[int, int], frozenset[int]] = {}
# How the last ``decide`` got its decisions: {"source": "timed" | "cache" | "memory", "seconds": ...}.
LAST_DECIDE: dict = {}


def _weight_at_x(weight: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    # x.T must stay a transposed view (MKL takes it as column-major) and the output must be made
    # contiguous: a strided output sends attention to its slow kernel and the next layer's input
    # into the slow layout.
    return (weight @ x2d.T).T.contiguous()


class FewRowLinear(torch.nn.Linear):
    """``nn.Linear`` that computes 2-8 input rows as ``weight @ x.T`` where ``DECISIONS`` says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not (MIN_ROWS <= rows <= MAX_ROWS
                and rows in DECISIONS.get((self.out_features, self.in_features), ())):
            return F.linear(x, self.weight, self.bias)
        out = _weight_at_x(self.weight, x.reshape(rows, x.shape[-1]))
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def use_where_wanted(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, cache_dir: Path) -> int:
    """Swap in few-row linears for a CPU float32 model and decide their kernels; how many were swapped.

    Nothing happens off the CPU, for other dtypes, or with ``STEER_UI_PLAIN_LINEAR=1``. ``cache_dir`` is
    the conversion cache's directory (``loading`` passes its own), where the decisions are kept.
    """
    if device.type != "cpu" or dtype != torch.float32 or os.environ.get(OPT_OUT_ENV, "") == "1":
        return 0
    swapped = use_few_row_linears(model)
    if swapped:
        decide(model, cache_dir)
    return swapped


def use_few_row_linears(model: torch.nn.Module) -> int:
    """Turn every plain ``nn.Linear`` in ``model`` into a ``FewRowLinear`` in place; how many were.

    Subclasses (quantized linears, adapters) are left alone: their forward is not ``F.linear``. Until
    ``decide`` has run for a shape, its layers keep using ``F.linear``.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = FewRowLinear
            swapped += 1
    return swapped


def in_use(model: torch.nn.Module) -> bool:
    return any(isinstance(m, FewRowLinear) for m in model.modules())


def _weights_by_shape(model: torch.nn.Module) -> dict[tuple[int, int], torch.Tensor]:
    """One weight of each shape among the model's few-row linears, to time on."""
    out: dict[tuple[int, int], torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, FewRowLinear):
            out.setdefault((m.out_features, m.in_features), m.weight.detach())
    return out


def summary(model: torch.nn.Module) -> dict[str, list[int]]:
    """Per weight shape ("out x in") of the model's few-row linears, the row counts that use ``weight @ x.T``.

    Empty when the model has none (not CPU float32, or ``STEER_UI_PLAIN_LINEAR=1``). An empty list means
    that shape uses ``F.linear`` at every row count.
    """
    return {f"{o}x{i}": sorted(DECISIONS.get((o, i), ())) for o, i in sorted(_weights_by_shape(model), reverse=True)}


def describe(summ: dict[str, list[int]]) -> str:
    """A short line for a ``summary``: which shapes took ``weight @ x.T`` at which row counts.

    E.g. "weight @ x.T for 49152x576, 1536x576 at 2-8 rows; 576x576 at 2-5 rows, F.linear elsewhere".
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for shape, rows in summ.items():
        if rows:
            groups.setdefault(tuple(rows), []).append(shape)
    if not groups:
        return "F.linear for every shape"
    rest = "" if all(summ.values()) else ", F.linear elsewhere"
    return "weight @ x.T for " + "; ".join(f"{', '.join(shapes)} at {_ranges(rows)}"
                                           for rows, shapes in groups.items()) + rest


def _ranges(rows) -> str:
    """[2, 3, 4, 6] -> "2-4,6 rows"."""
    spans: list[list[int]] = []
    for r in rows:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans) + " rows"


def decide(model: torch.nn.Module, cache_dir: Path) -> dict[tuple[int, int], frozenset[int]]:
    """Fill ``DECISIONS`` for the model's few-row linear shapes: from this process, the cache file, or timing."""
    start = time.perf_counter()
    weights = _weights_by_shape(model)
    if not weights:
        return {}
    if all(shape in DECISIONS for shape in weights):
        LAST_DECIDE.clear()
        LAST_DECIDE.update(source="memory", seconds=time.perf_counter() - start)
        return {s: DECISIONS[s] for s in weights}
    key = cache_key(weights)
    path = cache_file(cache_dir, key)
    cached = _read_cache(path, key)
    if cached is not None:
        DECISIONS.update(cached)
        source = "cache"
    else:
        settled = True
        # Largest first: they matter most per step and are the least thrown off by a busy CPU.
        for shape in sorted((s for s in weights if s not in DECISIONS), key=lambda s: -s[0] * s[1]):
            if settled:
                DECISIONS[shape], settled = time_shape(weights[shape])
            elif time.perf_counter() - start < BUSY_BUDGET_S:
                # Once the CPU has proved busy, no more retries: they would cost ~0.1 s each ...
                DECISIONS[shape] = time_shape(weights[shape], retries=0)[0]
            else:
                DECISIONS[shape] = frozenset()  # ... and past the budget, no more timing: F.linear
        if settled:
            _write_cache(path, key, {s: DECISIONS[s] for s in weights})
        else:
            log.warning("few-row linears: the CPU was too busy for some timings (F.linear there); "
                        "not cached, the next load times them again")
        source = "timed" if settled else "timed, busy CPU, not cached"
    seconds = time.perf_counter() - start
    LAST_DECIDE.clear()
    LAST_DECIDE.update(source=source, seconds=seconds, file=str(path))
    log.info("few-row linears (%s in %.0f ms): %s", source, seconds * 1e3, describe(summary(model)))
    return {s: DECISIONS[s] for s in weights}


def time_shape(weight: torch.Tensor, retries: int = RETRIES) -> tuple[frozenset[int], bool]:
    """The row counts in MIN_ROWS..MAX_ROWS at which ``weight @ x.T`` beats ``F.linear`` on ``weight``.

    Also whether every timing was plausible. On a busy machine a small product can take 10-15 ms
    instead of 0.05 ms, waiting for a core, and then both paths' times are noise. So a timing counts
    only if the faster path took at most ``PLAUSIBLE`` times as long as ``rows`` separate 1-row
    products. A row count whose timing stays implausible after ``retries`` uses ``F.linear``, and the
    result is not cached, so the next load times it again.
    """
    x1 = torch.randn(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    (one_row_s,) = best_times([lambda: F.linear(x1, weight)])
    wins: dict[int, bool] = {}
    settled = True

    def timed(rows: int) -> None:
        nonlocal settled
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
        for _ in range(1 + retries):
            linear_s, matmul_s = best_times([lambda: F.linear(x, weight), lambda: _weight_at_x(weight, x)])
            if min(linear_s, matmul_s) <= PLAUSIBLE * rows * one_row_s:
                wins[rows] = matmul_s <= MARGIN * linear_s
                return
        wins[rows] = False
        settled = False

    def fill(lo: int, hi: int) -> None:
        if hi - lo < 2:
            return
        if wins[lo] == wins[hi]:
            wins.update((r, wins[lo]) for r in range(lo + 1, hi))
            return
        mid = (lo + hi) // 2
        timed(mid)
        fill(lo, mid)
        fill(mid, hi)

    for rows in TIMED_ROWS:
        timed(rows)
    for lo, hi in itertools.pairwise(TIMED_ROWS):
        fill(lo, hi)
    return frozenset(r for r, won in wins.items() if won), settled


def best_times(paths: list[Callable[[], object]], repeats: int = REPEATS) -> list[float]:
    """Best seconds of each path: one warm-up call each, then up to ``repeats`` rounds, calls alternating.

    Small weights get all ``repeats``. A large one (the lm_head) stops after ``MIN_REPEATS`` rounds once
    they have used ``PAIR_BUDGET_S``, which keeps its row counts to about 0.1 s each.
    """
    best = [math.inf] * len(paths)
    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            path()  # warm-up
        for n in range(1, repeats + 1):
            for i, path in enumerate(paths):
                t0 = time.perf_counter()
                path()
                best[i] = min(best[i], time.perf_counter() - t0)
            if n >= MIN_REPEATS and time.perf_counter() - start >= PAIR_BUDGET_S:
                break
    return best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cache_key(shapes) -> dict:
    """What a cached decision depends on: CPU, torch (and its BLAS), threads, and the weight shapes."""
    return {"version": CACHE_VERSION, "cpu": cpu_name(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "rows": [MIN_ROWS, MAX_ROWS],
            "shapes": sorted([int(o), int(i)] for o, i in shapes)}


def cache_file(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / CACHE_SUBDIR / f"{digest}.json"


def _read_cache(path: Path, key: dict) -> dict[tuple[int, int], frozenset[int]] | None:
    """The cached decisions, or None if the file is missing, unreadable, or for another key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] != key:
            raise ValueError("key mismatch")
        out = {}
        for o, i in key["shapes"]:
            rows = data["weight_at_x"][f"{o}x{i}"]
            if not all(type(r) is int and MIN_ROWS <= r <= MAX_ROWS for r in rows):
                raise ValueError(f"bad row counts {rows!r}")
            out[(o, i)] = frozenset(rows)
        return out
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the few-row linear cache %s (%s); timing again", path, err)
        return None


def _write_cache(path: Path, key: dict, decisions: dict[tuple[int, int], frozenset[int]]) -> None:
    """Write atomically (temp file + rename); a cache that cannot be written is only logged."""
    data = {"key": key, "weight_at_x": {f"{o}x{i}": sorted(rows) for (o, i), rows in sorted(decisions.items())}}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot write the few-row linear cache %s: %s", path, err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
