"""Where the model work runs: in this process, or on a Hugging Face ZeroGPU Space.

ZeroGPU attaches a GPU only while a ``@spaces.GPU`` function runs, and runs that function in a
process it forks: the arguments and whatever it returns or yields are pickled across, nothing else
comes back. So the GPU functions here take a plan (never the model), find the model in a module
global that the fork inherits, and send back events or a vector; the session log, the views and
the model lock stay in the main process. A run is planned (validated) once, here, before any GPU is
booked. A Stop reaches the worker through a shared memory word made before any fork (a
``threading.Event`` would stay behind in this process). ZeroGPU passes only its own error type back
with a message, so a worker yields a ``WorkerFailure`` instead of raising, and the main process
raises it again as a ``UserError``.

Without the ``spaces`` package, or with it outside a ZeroGPU Space, ``spaces.GPU`` is the identity
and everything below is a plain call in this process.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from steer_ui.engine.decode import decode
from steer_ui.engine.events import Event
from steer_ui.engine.plan import RunPlan, plan_run
from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError
from steer_ui.model.loading import LoadedModel
from steer_ui.vectors.contrastive import ComputedVector, Pair
from steer_ui.vectors.contrastive import compute_vector as _compute_vector

spaces = None
if os.environ.get("SPACES_ZERO_GPU"):  # anywhere else spaces.GPU is the identity: skip the import
    try:
        import spaces  # patches torch; app.py imports it before anything touches CUDA
    except ImportError:
        pass

# The model the GPU functions use. Set once at startup (ZeroGPU packs the weights at launch and
# its workers are forks of this process, so a model loaded later would never reach them).
_model: LoadedModel | None = None

# The number of the run to stop; each run gets a fresh number, so a Stop for a run still waiting
# for the lock never stops the one decoding.
_stop_run = multiprocessing.get_context("fork").Value("q", -1, lock=False) if spaces is not None else None
_numbers = itertools.count()


@dataclass(frozen=True)
class WorkerFailure:
    """A user-facing error from the GPU worker, carried back as a value (see the module docstring)."""

    message: str


def out_of_memory_message(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"out of memory ({first}); try fewer tokens, fewer rows or a smaller model"


def _gpu(duration: int | Callable[..., int]) -> Callable[[Callable], Callable]:
    return spaces.GPU(duration=duration) if spaces is not None else (lambda fn: fn)


def _decode_seconds(model_id: str, plan: RunPlan, number: int) -> int:
    """ZeroGPU's time request for one run: generous per token, as reasoning models think long."""
    return int(min(300, 20 + 0.06 * plan.settings.max_new_tokens * max(1, len(plan.rows) - 1)))


class _SharedStop:
    """The engine's cancel flag for run ``number``, readable from the forked worker."""

    def __init__(self, number: int):
        self.number = number

    def set(self) -> None:
        _stop_run.value = self.number

    def is_set(self) -> bool:
        return _stop_run.value == self.number


@_gpu(duration=_decode_seconds)
def _decode(model_id: str, plan: RunPlan, number: int) -> Iterator[Event | WorkerFailure]:
    try:
        yield from decode(_current(model_id), plan, _SharedStop(number))
    except torch.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        yield WorkerFailure(out_of_memory_message(err))
    except UserError as err:
        yield WorkerFailure(str(err))


@_gpu(duration=120)
def _compute(model_id: str, pairs: list[Pair], layers: tuple[int, ...], method: str,
             source: str) -> ComputedVector | WorkerFailure:
    try:
        return _compute_vector(_current(model_id), pairs, layers, method, source=source)
    except UserError as err:
        return WorkerFailure(str(err))


ACTIVE = hasattr(_decode, "zerogpu")  # spaces.GPU marks what it wraps only on a ZeroGPU Space


def _current(model_id: str) -> LoadedModel:
    if _model is None or _model.model_id != model_id:
        raise UserError(f"the GPU worker has no {model_id!r} loaded; on ZeroGPU the model is fixed at startup")
    return _model


def attach(lm: LoadedModel) -> None:
    """Make ``lm`` the model of the GPU functions (the app's startup model)."""
    global _model
    _model = lm


def startup_device(device: str) -> str:
    """On ZeroGPU the model goes to one GPU with a plain ``.to()``: its workers attach exactly one."""
    return "cuda:0" if ACTIVE and device in ("auto", "cuda") else device


class Cancel:
    """A run's Stop flag: a ``threading.Event`` here, shared memory when the run decodes in a worker."""

    def __init__(self) -> None:
        self._local = threading.Event()
        self._shared = _SharedStop(next(_numbers))

    def set(self) -> None:
        self._local.set()
        if _stop_run is not None:
            self._shared.set()

    def is_set(self) -> bool:
        return self._local.is_set()


def stream(lm: LoadedModel, settings: RunSettings, cancel: Cancel | threading.Event | None = None
           ) -> Iterator[Event]:
    """The run's events, planned here first: a mistake is a UserError before any GPU is asked for."""
    plan = plan_run(lm, settings)
    if not ACTIVE:
        return decode(lm, plan, cancel)
    number = cancel._shared.number if isinstance(cancel, Cancel) else next(_numbers)
    return _relay(_decode(lm.model_id, plan, number))


def _relay(items: Iterator[Event | WorkerFailure]) -> Iterator[Event]:
    for item in items:
        if isinstance(item, WorkerFailure):
            raise UserError(item.message)
        yield item


def compute_vector(lm: LoadedModel, pairs: Sequence[Pair], layers: Sequence[int], method: str,
                   progress=None, source: str = "") -> ComputedVector:
    """``contrastive.compute_vector``, on the GPU worker when there is one (without progress there)."""
    if not ACTIVE:
        return _compute_vector(lm, pairs, layers, method, progress=progress, source=source)
    result = _compute(lm.model_id, list(pairs), tuple(layers), method, source)
    if isinstance(result, WorkerFailure):
        raise UserError(result.message)
    return result
