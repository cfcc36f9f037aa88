"""The fast path: decode and probe steps as compiled graphs (CUDA graphs on a GPU), reused across runs.

Measured on an H100 (issue #15's table, R1-Distill-Qwen-1.5B shape, bf16): an eager decode step is
Python and kernel launches, ~41 tok/s per stream whatever the GPU; the same step replayed as a CUDA
graph ran at ~269. Graphs have fixed shapes and fixed addresses, so everything a step touches is
bucketed and kept:

- rows are padded to a bucket (1, 4, 8, 16): a run of baseline + 1 steered row and one of baseline + 3
  steered rows replay the same graph shapes, and the baseline row's kernels do not change with the
  number of rows beside it (in bf16, cuBLAS picks kernels by batch size). A step is bound by reading
  the weights (~1 ms for the 1.5B shape in bf16 on an H100), not by its few rows, so padding 2 rows to
  4 costs next to nothing there;
- the KV cache is a static cache, one per (rows, length) bucket, kept for the model's life and rewound
  (not reallocated) for each run; lengths are rounded up to 1,024, 2,048, 4,096, ...;
- steering lives in fixed buffers read by one persistent hook per decoder layer (``SteeringSlots``): a
  run copies its per-row directions in, so a new vector is new data, not a new graph;
- probe steps always carry the longest suffix (padding after a row's own suffix is hidden by the
  causal mask), so there is one probe-step shape per bucket.

The graphs are built on a copy of the module tree that shares the weights (``shared_clone``): its hooks
never touch the model eager runs use, so eager runs can go on while shapes compile. Every call on
the copy runs on one thread of its own, because CUDA graph trees are per thread. A shape is used only
once it is warm (``warm``); until then a run decodes eagerly, so nobody waits for a compile they did
not ask for. Compiled artifacts go to inductor's on-disk caches under the cache directory, so a
restart loads them instead of compiling again.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import StaticCache

from steer_ui.engine.forward import tree_inputs
from steer_ui.model import cpu_threads
from steer_ui.model.loading import LoadedModel, find_layers

ROW_BUCKETS = (1, 4, 8, 16)
LENGTH_BUCKETS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
Report = Callable[[str], None]


def row_bucket(rows: int) -> int | None:
    return next((b for b in ROW_BUCKETS if b >= rows), None)


def length_bucket(positions: int) -> int | None:
    return next((b for b in LENGTH_BUCKETS if b >= positions), None)


@dataclass(frozen=True)
class Shape:
    """What a compiled step is specialised on: rows (a bucket), cache length (a bucket), probe width, and
    the positions multi-token probe answers add after it (their tree: a mask and positions as inputs)."""

    rows: int
    length: int
    probe_width: int
    tree: int = 0

    def __str__(self) -> str:
        answers = f" (+{self.tree} answer positions)" if self.tree else ""
        return f"{self.rows} row{'s' if self.rows > 1 else ''} x {self.length} positions{answers}"


def shared_clone(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s module tree that shares every parameter and buffer (no memory is copied)."""
    memo: dict[int, Any] = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    clone = copy.deepcopy(model, memo)
    cpu_threads.unfollow(clone)
    return clone


class SteeringSlots:
    """One persistent forward hook per decoder layer adding ``scale[row, pos] * directions[layer][row]``.

    The directions are fixed buffers (``rows`` x hidden per layer, zero where a row does not steer the
    layer); a run loads its own with ``load`` and ``clear`` zeroes them. ``scale`` is set before each
    call, like ``hooks.Steerer``'s, and is always a tensor on the fast path, so every call traces the
    same graph.
    """

    def __init__(self, layers: torch.nn.ModuleList, rows: int, hidden: int, dtype: torch.dtype):
        self.directions: list[torch.Tensor] = []
        self.scale: torch.Tensor | None = None
        for index, layer in enumerate(layers):
            device = next(layer.parameters()).device
            buffer = torch.zeros(rows, 1, hidden, dtype=dtype, device=device)
            self.directions.append(buffer)
            layer.register_forward_hook(partial(self._add, index))

    def load(self, directions: dict[int, torch.Tensor]) -> None:
        """This run's directions: ``{layer: (rows, hidden)}``; every other layer and row is zero."""
        for index, buffer in enumerate(self.directions):
            buffer.zero_()
            if index in directions:
                matrix = directions[index]
                buffer[: matrix.shape[0], 0].copy_(matrix.to(device=buffer.device, dtype=buffer.dtype))

    def clear(self) -> None:
        for buffer in self.directions:
            buffer.zero_()
        self.scale = None

    def _add(self, index: int, module: torch.nn.Module, args: tuple, output: object) -> object:
        scale = self.scale
        if scale is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        per_row = self.directions[index][: hidden.shape[0]]
        hidden = hidden + scale.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1) * per_row
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    # The decode loop uses a steerer as a context manager (see hooks.Steerer); slots stay installed.
    def __enter__(self) -> SteeringSlots:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


class _Executor:
    """One long-lived thread that makes every call on the fast path's model (graphs are per thread)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="steer-ui-fast-path", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, done = self._jobs.get()
            try:
                done.put((True, fn()))
            except BaseException as err:  # noqa: BLE001 - handed back to the caller, who re-raises it
                done.put((False, err))

    def call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        done: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put((fn, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value


def use_inductor_cache(cache_dir: Path) -> None:
    """Keep inductor's compiled kernels and graphs on disk under the cache dir (a restart reuses them)."""
    folder = cache_dir / "inductor"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


class FastPath:
    """Compiled decode and probe steps for ``lm``, shape by shape; see the module docstring."""

    def __init__(self, lm: LoadedModel, backend: str | Callable = "inductor", mode: str | None = None,
                 max_rows: int = ROW_BUCKETS[-1]):
        self.lm = lm
        self.model = shared_clone(lm.model)
        self.slots = SteeringSlots(find_layers(self.model), max_rows, lm.hidden_size, lm.dtype)
        self.step = torch.compile(self.model.forward, backend=backend, mode=mode, dynamic=False)
        self.executor = _Executor()
        self.ready: set[Shape] = set()
        self.failed: dict[Shape, str] = {}
        self.busy = threading.Lock()  # one run (or one warm-up) on the fast path at a time
        self._caches: dict[tuple[int, int], StaticCache] = {}
        self.warming: Shape | None = None
        self.warm_s: dict[Shape, float] = {}
        self.on_demand: Report | None = None  # set (CLI): a cold shape is warmed when a run asks for it
        self._wanted: queue.Queue = queue.Queue()
        self._queued: set[Shape] = set()
        self._warmer: threading.Thread | None = None

    # --- shapes ---------------------------------------------------------------------------------
    def shape(self, rows: int, positions: int, probe_width: int, tree: int = 0) -> Shape | None:
        """The bucketed shape a run of ``rows`` rows and up to ``positions`` positions uses (None: too big)."""
        r, n = row_bucket(rows), length_bucket(positions)
        return Shape(r, n, probe_width, tree) if r is not None and n is not None else None

    @torch.inference_mode()  # the cache's tensors are inference tensors (made in the first, warm-up forward)
    def cache(self, shape: Shape) -> StaticCache:
        """The static cache of ``shape``'s buckets, rewound to empty: the same tensors every time."""
        key = (shape.rows, shape.length)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = StaticCache(config=self.model.config, max_cache_len=shape.length)
        for layer in cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.zero_()
        return cache

    # --- warming --------------------------------------------------------------------------------
    def warm(self, shapes: Iterable[Shape], report: Report | None = None) -> None:
        """Compile (and on CUDA, record) ``shapes`` now, on the fast path's thread; ``report`` hears of each."""
        for shape in shapes:
            if shape in self.ready:
                continue
            if report is not None:
                report(f"compiling decode steps for {shape} (the first time takes a while; cached on disk after)")
            started = time.perf_counter()
            with self.busy:
                self.warming = shape
                try:
                    self.executor.call(partial(self._warm_one, shape))
                    self.ready.add(shape)
                except Exception as err:  # noqa: BLE001 - that shape stays eager, with the reason kept
                    self.failed[shape] = _first_line(err)
                finally:
                    self.warming = None
            self.warm_s[shape] = time.perf_counter() - started
            if report is not None:
                report(f"{shape}: ready in {self.warm_s[shape]:.0f} s" if shape in self.ready else
                       f"{self.failure(shape)} after {self.warm_s[shape]:.0f} s; its runs decode eagerly")

    def warm_in_background(self, shapes: Iterable[Shape], report: Report | None = None) -> None:
        """Queue ``shapes`` for one background thread to warm, one at a time; runs meanwhile stay eager."""
        for shape in shapes:
            if shape not in self.ready and shape not in self._queued and shape not in self.failed:
                self._queued.add(shape)
                self._wanted.put((shape, report))
        if self._warmer is None:
            self._warmer = threading.Thread(target=self._warm_queued, name="steer-ui-warm", daemon=True)
            self._warmer.start()

    def _warm_queued(self) -> None:
        while True:
            shape, report = self._wanted.get()
            self.warm([shape], report)
            self._queued.discard(shape)

    @torch.inference_mode()
    def _warm_one(self, shape: Shape) -> None:
        """Two plain steps and two probe steps (CUDA graph trees record on a shape's second call)."""
        device = self.lm.input_device
        cache = self.cache(shape)
        self.slots.load({})
        try:
            self.slots.scale = torch.zeros(shape.rows, 4, device=device, dtype=self.lm.dtype)
            self.model(input_ids=torch.zeros(shape.rows, 4, dtype=torch.long, device=device),
                       **{self.lm.cache_arg: cache}, use_cache=True, logits_to_keep=1)
            probe = 1 + shape.probe_width + shape.tree
            for width, keep in ((1, 1), (probe, None)) * 2:
                self.slots.scale = torch.zeros(shape.rows, width, device=device, dtype=self.lm.dtype)
                # A probe step keeps the token, the suffix's end and each answer position (see decode).
                keep_arg = keep if keep is not None else torch.tensor(
                    [[0, shape.probe_width, *range(shape.probe_width + 1, width)]] * shape.rows, device=device)
                tree = tree_inputs(self.lm, cache, [[i - 1 for i in range(width)]] * shape.rows) \
                    if width > 1 and shape.tree else {}
                self.step(input_ids=torch.zeros(shape.rows, width, dtype=torch.long, device=device),
                          **{self.lm.cache_arg: cache}, use_cache=True, logits_to_keep=keep_arg, **tree)
                if width > 1:
                    for layer in cache.layers:
                        layer.cumulative_length.sub_(width - 1)
        finally:
            self.slots.clear()

    def warming_soon(self) -> bool:
        """A shape is compiling now or queued to."""
        return self.warming is not None or bool(self._queued)

    def failure(self, shape: Shape) -> str:
        """One line on why ``shape`` has no compiled steps (it failed to compile)."""
        return f"compiling {shape} failed ({self.failed[shape]})"

    def status(self) -> list[str]:
        """What is compiling, ready and failed: a line each."""
        if self.warming is not None:
            lines = [f"compiling decode steps for {self.warming}; runs decode eagerly until it is ready"]
        else:
            ready = ", ".join(map(str, sorted(self.ready, key=lambda s: (s.rows, s.length)))) or "none yet"
            lines = [f"fast path ready for: {ready}"]
        return lines + [f"{self.failure(shape)}; its runs decode eagerly" for shape in self.failed]

    # --- runs -----------------------------------------------------------------------------------
    def open(self, shape: Shape | None) -> FastSession | str:
        """A session on the fast path for one run of ``shape``, or why the run decodes eagerly (one line).

        A cold shape is warmed now when ``on_demand`` is set (the CLI: a long job waits once, with a
        message), else queued to warm in the background (the dashboard: the next run of it is fast).
        """
        if shape is None:
            return "no compiled steps for this many rows or positions"
        if shape not in self.ready and shape not in self.failed:
            if self.on_demand is None:
                self.warm_in_background([shape])
                return f"{shape} is compiling in the background"
            self.warm([shape], self.on_demand)
        if shape in self.failed:
            return self.failure(shape)
        if not self.busy.acquire(blocking=False):
            return "another run is using the compiled steps"
        return FastSession(self, shape)


class FastSession:
    """One run on the fast path: its cache, its steering slots, its calls on the fast path's thread."""

    def __init__(self, fast: FastPath, shape: Shape):
        self.fast, self.shape = fast, shape
        self.cache = fast.cache(shape)
        self.calls = 0

    def steering(self, directions: dict[int, torch.Tensor]) -> SteeringSlots:
        self.fast.executor.call(partial(self.fast.slots.load, directions))
        return self.fast.slots

    def __call__(self, **inputs: Any) -> Any:
        """The model on the fast path's thread: the prefill eagerly, every later call compiled."""
        fn = self.fast.model if self.calls == 0 else self.fast.step
        self.calls += 1
        return self.fast.executor.call(lambda: _inference(fn, inputs))

    def close(self) -> None:
        self.fast.slots.clear()
        self.fast.busy.release()


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "inner_exception", None) or err.__cause__ or err  # dynamo wraps the real error
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _inference(fn: Callable, inputs: dict) -> Any:
    with torch.inference_mode():
        return fn(**inputs)


def attach(lm: LoadedModel, compile_on_cpu: bool = False, backend: str | Callable = "inductor",
           mode: str | None = None, cache_dir: Path | None = None) -> FastPath | None:
    """Give ``lm`` a fast path: by default on a single CUDA GPU (CUDA graphs), on CPU only when asked
    (``--compile``: inductor's code, no graphs). None where there is none (a model spread over GPUs)."""
    from steer_ui.model.loading import default_cache_dir

    devices = {p.device for p in lm.model.parameters()}
    if lm.device.type == "cuda" and len(devices) == 1:
        mode = mode or "reduce-overhead"  # inductor's CUDA graphs (cudagraph trees)
    elif lm.device.type != "cpu" or not compile_on_cpu or len(devices) != 1:
        return None
    use_inductor_cache(cache_dir or default_cache_dir())
    lm.fast = FastPath(lm, backend=backend, mode=mode)
    return lm.fast


def common_shapes(lm: LoadedModel) -> list[Shape]:
    """What the dashboard warms at startup: baseline + 1 to 3 steered rows (one bucket), for runs of up to
    ~1,000 and ~4,000 positions, with the model's own probe suffix."""
    from steer_ui.engine.plan import plan_run
    from steer_ui.engine.run_settings import RunSettings

    width = plan_run(lm, RunSettings("warm-up", max_new_tokens=1)).probe_width
    return [Shape(ROW_BUCKETS[1], length, width) for length in LENGTH_BUCKETS[:3:2]]
