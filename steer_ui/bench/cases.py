"""The benchmark's cases: the same prompt and number of new tokens through ``generate``, the engine with and
without steering and the probe, and the usual alternative (generate + hooks + a re-run probe)."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer_ui.engine.decode import fast_shape, run
from steer_ui.engine.events import TokenEvent
from steer_ui.engine.forward import Forward
from steer_ui.engine.hooks import Steerer
from steer_ui.engine.kv_cache import crop
from steer_ui.engine.plan import plan_run
from steer_ui.engine.probe import read, tree_parents
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.model.loading import LoadedModel, load_model
from steer_ui.vectors.vector import SteeringVector

PROMPT = "Is 391 equal to 17 times 23? Think it through step by step, then answer yes or no."


@dataclass
class Result:
    case: str
    label: str
    streams: int
    seconds: list[float] = field(default_factory=list)
    peak_mb: float | None = None  # peak growth of live tensor memory (CPU: profiler; CUDA: allocator)
    rss_mb: float | None = None  # CPU only: peak growth of the process's resident memory
    tokens: int = 0

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.median_s


def _sync(lm: LoadedModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def _time_once(lm: LoadedModel, fn: Callable[[], object]) -> float:
    _sync(lm)
    start = time.perf_counter()
    fn()
    _sync(lm)
    return time.perf_counter() - start


def _timed(lm: LoadedModel, fn: Callable[[], object], repeats: int, result: Result) -> Result:
    fn()  # warm-up: first calls pay for allocator growth and kernel selection
    result.seconds += [_time_once(lm, fn) for _ in range(repeats)]
    return result


def _timed_round_robin(lm: LoadedModel, fns: dict[str, Callable[[], object]], repeats: int,
                       results: dict[str, Result]) -> dict[str, float]:
    """Time every case once per round, ``repeats`` rounds: a machine that slows down for a while
    (shared cores) slows every case alike instead of skewing the ratios between them. Returns each
    case's first (warm-up) call in seconds: for a case that compiles on its first call, its warm-up."""
    first = {}
    for key, fn in fns.items():
        print(f"  warm-up {key}: {results[key].label}", file=sys.stderr, flush=True)
        first[key] = _time_once(lm, fn)
    for round_ in range(repeats):
        print(f"  round {round_ + 1} of {repeats}", file=sys.stderr, flush=True)
        for key, fn in fns.items():
            results[key].seconds.append(_time_once(lm, fn))
    return first


def _engine(lm: LoadedModel, settings: RunSettings) -> None:
    for _ in run(lm, settings):
        pass


def _generate(lm: LoadedModel, ids: list[int], n: int, static: bool = False) -> list[int]:
    """One plain stream through transformers' ``generate``; ``static``: its static cache, which it compiles
    (CUDA graphs on a GPU), the fastest a user of transformers gets for one stream."""
    extra = {"cache_implementation": "static"} if static else {}
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids], device=lm.input_device), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=lm.tokenizer.pad_token_id or 0, **extra)
    return out[0, len(ids):].tolist()


def _alternative(lm: LoadedModel, plan, vector: SteeringVector, coef: float, n: int, every: int) -> None:
    """Two generate calls (the second under repeng-style hooks) and a probe that re-runs the whole text."""
    ids, suffix = list(plan.prompt_ids), list(plan.probe.suffix_ids)
    directions = {layer: torch.stack([vector.directions[layer]]) for layer in plan.layers}  # one row
    base = _generate(lm, ids, n)
    with Steerer(lm.layers, directions, lm.dtype) as steerer:
        steerer.scale = torch.tensor([[coef]], device=lm.input_device)  # every position, like repeng
        steered_ids = _generate(lm, ids, n)
        for tokens, steer in ((steered_ids, True), (base, False)):
            steerer.scale = torch.tensor([[coef]], device=lm.input_device) if steer else None
            for s in range(0, n + 1, every):
                with torch.inference_mode():
                    lm.model(input_ids=torch.tensor([ids + tokens[:s] + suffix], device=lm.input_device),
                             use_cache=False, logits_to_keep=1)


def _probe_costs(lm: LoadedModel, contexts: list[int], repeats: int, cache: str = "dynamic") -> list[dict]:
    """ms per decode step, per cached probe (suffix on the live cache, cropped) and per re-run probe."""
    plan = plan_run(lm, RunSettings(PROMPT))
    suffix = list(plan.probe.suffix_ids)
    filler = list(plan.prompt_ids)
    rows = []
    for length in contexts:
        ctx = (filler * (length // len(filler) + 1))[:length]
        fw = Forward(lm, None, torch.zeros(1, device=lm.input_device), cache, length + len(suffix) + 1)
        fw([ctx], [[0.0] * length], 1, 0)

        def step() -> None:
            fw([[ctx[-1]]], [[0.0]], 1, 0)
            crop(fw.cache, 1)  # keep the context length fixed across repeats

        def cached_probe() -> None:
            fw([suffix], [[0.0] * len(suffix)], 1, len(suffix))

        def rerun_probe() -> None:
            with torch.inference_mode():
                lm.model(input_ids=torch.tensor([ctx + suffix], device=lm.input_device), use_cache=False,
                         logits_to_keep=1)

        row = {"context": length}
        for name, fn in (("decode_step_ms", step), ("cached_probe_ms", cached_probe), ("rerun_probe_ms", rerun_probe)):
            r = _timed(lm, fn, max(3, repeats * 3), Result(name, name, 1))
            row[name] = 1000 * r.median_s
        rows.append(row)
    return rows


ANSWERS = ("391", "392")  # 3 tokens each in SmolLM2 ('3' '9' '1'; ' 391' is 4), sharing their first two


def _answer_probe_costs(lm: LoadedModel, contexts: list[int], repeats: int, cache: str = "dynamic") -> list[dict]:
    """ms per fused probe step (the decode token, the suffix, and for multi-token answers their tree, in one
    forward, read and cropped) with Yes/No and with two multi-token answers, at the same context."""
    specs = {"yesno": plan_run(lm, RunSettings(PROMPT)).probe,
             "answers": plan_run(lm, RunSettings(PROMPT, probe_choices=ANSWERS)).probe}
    filler = list(plan_run(lm, RunSettings(PROMPT)).prompt_ids)
    rows = []
    for length in contexts:
        ctx = (filler * (length // len(filler) + 1))[:length]
        width = 1 + len(specs["answers"].suffix_ids) + specs["answers"].tree.size
        fw = Forward(lm, None, torch.zeros(1, device=lm.input_device), cache, length + width)
        fw([ctx], [[0.0] * length], 1, 0)
        fns = {name: _probe_step(fw, ctx[-1], spec) for name, spec in specs.items()}
        timed = {n: Result(n, n, 1) for n in fns}
        _timed_round_robin(lm, fns, max(3, repeats * 3), timed)
        row = {"context": length, "forms": [len(v) for c in specs["answers"].choices for v in c.variants],
               "tree_nodes": specs["answers"].tree.size}
        row.update({f"{name}_probe_step_ms": 1000 * r.median_s for name, r in timed.items()})
        row["ratio"] = row["answers_probe_step_ms"] / row["yesno_probe_step_ms"]
        rows.append(row)
    return rows


def _probe_step(fw: Forward, token: int, spec) -> Callable[[], object]:
    suffix, tree = list(spec.suffix_ids), spec.tree
    ids = [token, *suffix, *tree.tokens]
    keep = [[0, len(suffix), *range(1 + len(suffix), len(ids))]]
    parents = [tree_parents(1 + len(suffix), tree, len(ids))] if tree.size else None

    def step() -> None:
        logits = fw([ids], [[0.0] * len(ids)], keep, len(ids), parents)  # crop it all: the context stays put
        read(logits[:, 1:], spec)
    return step


def _first_token_s(lm: LoadedModel, settings: RunSettings) -> float:
    start = time.perf_counter()
    events = run(lm, settings)
    for ev in events:
        if isinstance(ev, TokenEvent):
            elapsed = time.perf_counter() - start
            events.close()
            return elapsed
    raise RuntimeError("the run produced no token")


def _load_times(spec: str, device: str, dtype: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        load_model(spec, device, dtype, cache_dir=Path(cache))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        load_model(spec, device, dtype, cache_dir=Path(cache))
        warm = time.perf_counter() - start
    return {"load_cold_s": cold, "load_cached_s": warm}


CASES = {"1": ("model.generate, 1 stream", 1), "1s": ("model.generate, static cache (compiled by transformers)", 1),
         "2": ("engine, baseline only", 1), "3": ("engine, baseline + 1 steered", 2),
         "4": ("as 3, probe every token", 2), "4e": ("as 4, eager", 2), "5": ("as 3, probe every 4 tokens", 2),
         "6": ("2x generate + hooks, re-run probe every 4", 2)}
FAST_PATH_ONLY = ("4e",)  # cases that only make sense next to compiled engine steps
GPU_ONLY = ("1s",)  # transformers compiles a static-cache generate: minutes on CPU, a reference on a GPU


def wanted_cases(lm: LoadedModel) -> list[str]:
    """The cases for this model: the GPU reference where there is a GPU, the eager twin where steps compile."""
    return [key for key in CASES if (key not in GPU_ONLY or lm.device.type == "cuda")
            and (key not in FAST_PATH_ONLY or lm.fast is not None)]


def bench_settings(lm: LoadedModel, n: int, cache: str = "dynamic"):
    """``settings(coefs, probe every, eager)`` for the engine cases, and the one steering vector."""
    g = torch.Generator().manual_seed(0)
    layers = list(range(*lm.profile.layer_band))[:4] or [lm.n_layers // 2]
    # Unit-norm random directions at coefficient 1: steering work without derailing the text.
    vector = SteeringVector({x: torch.nn.functional.normalize(torch.randn(lm.hidden_size, generator=g), dim=0)
                             for x in layers}, name="bench")

    def settings(coefs: tuple[float, ...], every: int, eager: bool = False) -> RunSettings:
        return RunSettings(PROMPT, rows=steered(vector, coefs, tuple(layers)), max_new_tokens=n, ignore_eos=True,
                           probe_every=every, cache=cache, eager=eager)

    return settings, vector


def case_functions(lm: LoadedModel, n: int, cache: str = "dynamic") -> dict[str, Callable[[], object]]:
    settings, vector = bench_settings(lm, n, cache)
    coef = 1.0
    plan = plan_run(lm, settings((coef,), 4))
    prompt_ids = list(plan.prompt_ids)
    return {
        "1": lambda: _generate(lm, prompt_ids, n),
        "1s": lambda: _generate(lm, prompt_ids, n, static=True),
        "2": lambda: _engine(lm, settings((), 0)),
        "3": lambda: _engine(lm, settings((coef,), 0)),
        "4": lambda: _engine(lm, settings((coef,), 1)),
        "4e": lambda: _engine(lm, settings((coef,), 1, eager=True)),
        "5": lambda: _engine(lm, settings((coef,), 4)),
        "6": lambda: _alternative(lm, plan, vector, coef, n, 4),
        "ttft": lambda: _first_token_s(lm, settings((coef,), 4)),
    }


def fast_shapes(lm: LoadedModel, n: int, cache: str = "dynamic") -> list:
    """The compiled shapes the engine cases use (baseline alone; baseline + 1 steered), to warm first."""
    settings, _ = bench_settings(lm, n, cache)
    shapes = []
    for s in (settings((), 0), settings((1.0,), 1)):
        plan = plan_run(lm, s)
        shapes.append(fast_shape(lm.fast, plan))
    return [s for s in dict.fromkeys(shapes) if s is not None]
