"""Benchmark: ``python -m steer_ui.bench.__main__`` (see README for the table it produces).

Same model, prompt and number of new tokens (greedy, end-of-sequence ignored) in every case:
  1  model.generate, one stream, no steering (the reference)
  2  our engine, baseline only
  3  our engine, baseline + one steered row
  4  as 3, probe every token
  5  as 3, probe every 4 tokens
  6  the usual alternative: generate for the baseline, generate with hooks for the steered row, and a
     probe that re-runs prompt + generated text + suffix every 4 tokens on both
  7  probe cost alone at several context lengths (cached probe vs re-running the text)
  8  time to first token; model load cold (GGUF conversion) and from the conversion cache
Speeds are tokens per second per stream (a run of 2 rows x N tokens in T s is N / T), medians of
``--repeats`` rounds, each timing every case once (round-robin, so a slow stretch of a shared machine
hits all cases alike). Peak memory is the peak growth over the memory held once the model is loaded,
measured for each case in a fresh process, because an allocator that already grew for one case hides
the next case's growth: live tensor memory (CPU: the profiler's allocation events; CUDA: the
allocator's peak), and on CPU also the process's RSS, sampled every 2 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from steer_ui.model import cpu_matmul
from steer_ui.engine.decode import _Forward, plan_run, run
from steer_ui.engine.events import TokenEvent
from steer_ui.engine.kv_cache import crop
from steer_ui.model.loading import LoadedModel, compile_model, load_model
from steer_ui.engine.run_settings import ProbeSettings, RunSettings
from steer_ui.engine.hooks import Steerer
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
                       results: dict[str, Result]) -> None:
    """Time every case once per round, ``repeats`` rounds: a machine that slows down for a while
    (shared cores) slows every case alike instead of skewing the ratios between them."""
    for key, fn in fns.items():
        print(f"  warm-up {key}: {results[key].label}", file=sys.stderr, flush=True)
        fn()
    for round_ in range(repeats):
        print(f"  round {round_ + 1} of {repeats}", file=sys.stderr, flush=True)
        for key, fn in fns.items():
            results[key].seconds.append(_time_once(lm, fn))


def _peak_in_fresh_process(case: str, args: argparse.Namespace) -> dict[str, float | None]:
    """Run one case in a new process; its peak memory growth in MB, as ``{"tensor_mb", "rss_mb"}``."""
    import subprocess

    cmd = [sys.executable, "-m", "steer_ui.bench.__main__", "--memory-case", case, "--new-tokens", str(args.new_tokens),
           "--model", args.model, "--device", args.device, "--dtype", args.dtype, "--cache", args.cache]
    if args.compile:
        cmd.append("--compile")
    if args.random_shape:
        cmd += ["--random-shape", args.random_shape]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _engine(lm: LoadedModel, settings: RunSettings) -> None:
    for _ in run(lm, settings):
        pass


def _generate(lm: LoadedModel, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids], device=lm.input_device), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=lm.tokenizer.pad_token_id or 0)
    return out[0, len(ids):].tolist()


def _alternative(lm: LoadedModel, plan, vector: SteeringVector, coef: float, n: int, every: int) -> None:
    """Two generate calls (the second under repeng-style hooks) and a probe that re-runs the whole text."""
    ids, suffix = list(plan.prompt_ids), list(plan.probe.suffix_ids)
    directions = {layer: vector.directions[layer] for layer in plan.layers}
    base = _generate(lm, ids, n)
    with Steerer(lm.layers, directions, lm.dtype) as steerer:
        steerer.scale = torch.tensor([[coef]], device=lm.input_device)  # every position, like repeng
        steered = _generate(lm, ids, n)
        for tokens, steer in ((steered, True), (base, False)):
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
        fw = _Forward(lm, None, torch.zeros(1, device=lm.input_device), cache, length + len(suffix) + 1)
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


def random_r1_qwen_shape(device: str, dtype: str) -> LoadedModel:
    """A random model with DeepSeek-R1-Distill-Qwen-1.5B's shape (28 layers, hidden 1536), no download."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from steer_ui.model.known import KNOWN_MODELS
    from steer_ui.model.loading import find_layers, resolve_device_dtype

    dev, dt = resolve_device_dtype(device, dtype)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                      rope_theta=10000.0, tie_word_embeddings=False)
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        model = Qwen2ForCausalLM(cfg).to(dt).eval()
    cpu_matmul.use_where_wanted(model, dev, dt)
    tokenizer = load_model().tokenizer  # any tokenizer whose ids fit the vocabulary
    profile = KNOWN_MODELS["deepseek-ai/deepseek-r1-distill-qwen-1.5b"]
    return LoadedModel(model, tokenizer, "random:r1-distill-qwen-1.5b-shape", profile, find_layers(model), dev, dt,
                       time.perf_counter() - start, "random init")


CASES = {"1": ("model.generate, 1 stream", 1), "2": ("engine, baseline only", 1),
         "3": ("engine, baseline + 1 steered", 2), "4": ("as 3, probe every token", 2),
         "5": ("as 3, probe every 4 tokens", 2), "6": ("2x generate + hooks, re-run probe every 4", 2)}


def case_functions(lm: LoadedModel, n: int, cache: str = "dynamic") -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    layers = list(range(*lm.profile.layer_band))[:4] or [lm.n_layers // 2]
    # Unit-norm random directions at coefficient 1: steering work without derailing the text.
    vector = SteeringVector({x: torch.nn.functional.normalize(torch.randn(lm.hidden_size, generator=g), dim=0)
                             for x in layers}, name="bench")
    coef = 1.0

    def settings(coefs: tuple[float, ...], every: int) -> RunSettings:
        return RunSettings(PROMPT, vector=vector, layers=tuple(layers), coefs=coefs, max_new_tokens=n,
                           ignore_eos=True, probe=ProbeSettings(every=every), cache=cache)

    plan = plan_run(lm, settings((coef,), 4))
    prompt_ids = list(plan.prompt_ids)
    return {
        "1": lambda: _generate(lm, prompt_ids, n),
        "2": lambda: _engine(lm, settings((), 0)),
        "3": lambda: _engine(lm, settings((coef,), 0)),
        "4": lambda: _engine(lm, settings((coef,), 1)),
        "5": lambda: _engine(lm, settings((coef,), 4)),
        "6": lambda: _alternative(lm, plan, vector, coef, n, 4),
        "ttft": lambda: _first_token_s(lm, settings((coef,), 4)),
    }


def _few_row_linears(lm: LoadedModel) -> bool:
    return any(isinstance(m, cpu_matmul.FewRowLinear) for m in lm.model.modules())


def run_benchmark(lm: LoadedModel, n: int, repeats: int, contexts: list[int], spec: str | None,
                  args: argparse.Namespace) -> dict:
    fns = case_functions(lm, n, args.cache)
    prompt_tokens = len(plan_run(lm, RunSettings(PROMPT)).prompt_ids)
    results = {key: Result(key, label, streams, tokens=n) for key, (label, streams) in CASES.items()}
    _timed_round_robin(lm, {key: fns[key] for key in CASES}, repeats, results)
    for key, r in results.items():
        print(f"  memory {key}: {r.label}", file=sys.stderr, flush=True)
        peak = _peak_in_fresh_process(key, args)
        r.peak_mb, r.rss_mb = peak["tensor_mb"], peak["rss_mb"]
    device, dtype = args.device, args.dtype
    extra = {"ttft_s": statistics.median(fns["ttft"]() for _ in range(max(1, repeats)))}
    if spec is not None:
        extra.update(_load_times(spec, device, dtype))
    return {
        "model": lm.model_id, "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "cache": "static" if args.compile else args.cache,
        "compiled": bool(args.compile), "few_row_linears": _few_row_linears(lm), "new_tokens": n, "repeats": repeats, "prompt_tokens": prompt_tokens,
        "cases": [{**asdict(r), "median_s": r.median_s, "tok_s_per_stream": r.tok_s} for r in results.values()],
        "probe_cost": _probe_costs(lm, contexts, repeats, "static" if args.compile else args.cache), **extra,
    }


def targets(report: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets, as (what, met, measured)."""
    c = {x["case"]: x for x in report["cases"]}
    speed = {k: v["tok_s_per_stream"] for k, v in c.items()}
    probe = {p["context"]: p["cached_probe_ms"] for p in report["probe_cost"]}
    lo, hi = min(probe), max(probe)
    out = [
        ("4 >= 0.5x the per-stream speed of 1", speed["4"] >= 0.5 * speed["1"], f"{speed['4'] / speed['1']:.2f}x"),
        ("5 >= 5x faster than 6 end to end", c["6"]["median_s"] >= 5 * c["5"]["median_s"],
         f"{c['6']['median_s'] / c['5']['median_s']:.1f}x"),
        (f"probe at {hi} tokens <= 1.3x probe at {lo}", probe[hi] <= 1.3 * probe[lo], f"{probe[hi] / probe[lo]:.2f}x"),
        ("peak memory of 4 <= 1.1x that of 3 (tensors)", c["4"]["peak_mb"] <= 1.1 * max(c["3"]["peak_mb"], 1.0),
         f"{c['4']['peak_mb']:.1f} MB vs {c['3']['peak_mb']:.1f} MB"),
    ]
    if "load_cached_s" in report:
        out.append(("second start from the conversion cache <= 5 s", report["load_cached_s"] <= 5,
                    f"{report['load_cached_s']:.1f} s"))
    return out


def markdown(report: dict) -> str:
    ref = report["cases"][0]["tok_s_per_stream"]
    lines = [f"{report['model']} on {report['device']} ({report['dtype']}, {report['threads']} threads), "
             f"{report['prompt_tokens']}-token prompt, {report['new_tokens']} new tokens, greedy, "
             f"median of {report['repeats']}, engine cache {report.get('cache', 'dynamic')}"
             f"{', compiled' if report.get('compiled') else ''}"
             f"{', few-row CPU linears' if report.get('few_row_linears') else ''}"]
    rss = any(c.get("rss_mb") is not None for c in report["cases"])
    lines += ["", "| # | case | tok/s per stream | vs 1 | peak tensor memory |" + (" peak RSS growth |" if rss else ""),
              "|---|---|---|---|---|" + ("---|" if rss else "")]
    for c in report["cases"]:
        lines.append(f"| {c['case']} | {c['label']} | {c['tok_s_per_stream']:.1f} | "
                     f"{c['tok_s_per_stream'] / ref:.2f}x | {c['peak_mb']:.1f} MB |"
                     + (f" {c['rss_mb']:.0f} MB |" if rss else ""))
    lines += ["", "| context (tokens) | decode step | cached probe (ours) | re-run probe |", "|---|---|---|---|"]
    for p in report["probe_cost"]:
        lines.append(f"| {p['context']} | {p['decode_step_ms']:.1f} ms | {p['cached_probe_ms']:.1f} ms | "
                     f"{p['rerun_probe_ms']:.1f} ms |")
    lines += ["", f"time to first token (3 + probe every 4): {report['ttft_s']:.2f} s"]
    if "load_cold_s" in report:
        lines.append(f"model load: cold (GGUF conversion) {report['load_cold_s']:.1f} s, "
                     f"from the conversion cache {report['load_cached_s']:.1f} s")
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {what} | {'yes' if ok else 'no'} | {value} |" for what, ok, value in targets(report)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m steer_ui.bench.__main__", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--random-shape", choices=["r1-distill-qwen-1.5b"], default=None,
                   help="benchmark a randomly initialised model of this shape instead (no download)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contexts", default="128,512,2048", help="context lengths for the probe-cost case")
    p.add_argument("--quick", action="store_true", help="a few tokens, one repeat, no cold load: a smoke run")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                   help="the engine's KV cache in cases 2-5 (1 and 6 use generate's own)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the engine's decode steps (static cache); each case's warm-up run compiles")
    p.add_argument("--json", default=None, help="also write the full report here")
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # internal: one case, print its peaks
    args = p.parse_args(argv)
    from steer_ui.errors import UserError

    if args.memory_case:
        lm = random_r1_qwen_shape(args.device, args.dtype) if args.random_shape else \
            load_model(args.model, args.device, args.dtype)
        fn = case_functions(lm, args.new_tokens, args.cache)[args.memory_case]
        with torch.inference_mode():  # page the mmapped weights in: that is load cost, not the case's
            lm.model(input_ids=torch.tensor([[1, 2]], device=lm.input_device))
        if args.compile:
            compile_model(lm)
            fn()  # compiling is a one-off cost, not the run's memory
        with PeakMemory(lm.device) as mem:  # first, while the allocator is fresh
            fn()
        cpu = lm.device.type == "cpu"
        print(json.dumps({"tensor_mb": peak_tensor_mb(fn) if cpu else mem.peak_mb,
                          "rss_mb": mem.peak_mb if cpu else None}))
        return 0
    try:
        if args.quick:
            args.new_tokens, args.repeats, args.contexts = 16, 1, "32,128"
        try:
            contexts = [int(x) for x in args.contexts.split(",")]
        except ValueError:
            raise UserError(f"--contexts takes comma-separated token counts, got {args.contexts!r}") from None
        if args.new_tokens < 1 or args.repeats < 1 or min(contexts) < 1:
            raise UserError("--new-tokens, --repeats and every --contexts value must be >= 1")
        if args.random_shape:
            lm, spec = random_r1_qwen_shape(args.device, args.dtype), None
        else:
            lm = load_model(args.model, args.device, args.dtype)
            spec = args.model if not args.quick and (args.model.endswith(".gguf") or args.model == "smollm2-135m") \
                else None
        if args.compile:
            compile_model(lm)
        print(f"benchmarking {lm.describe()} ...", file=sys.stderr, flush=True)
        report = run_benchmark(lm, args.new_tokens, args.repeats, contexts, spec, args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
