"""Benchmark: ``python -m steer_ui.bench`` (see docs/performance.md for the tables it produces).

Same model, prompt and number of new tokens (greedy, end-of-sequence ignored) in every case:
  1   model.generate, one stream, no steering (the reference)
  1s  on a GPU: model.generate with its static cache, which transformers compiles (CUDA graphs)
  2   our engine, baseline only
  3   our engine, baseline + one steered row
  4   as 3, probe every token
  4e  where the engine's steps are compiled: as 4, eager (what the fast path is measured against)
  5   as 3, probe every 4 tokens
  6   the usual alternative: generate for the baseline, generate with hooks for the steered row, and a
      probe that re-runs prompt + generated text + suffix every 4 tokens on both
  7   probe cost alone at several context lengths (cached probe vs re-running the text)
  8   time to first token; model load cold (GGUF conversion) and from the conversion cache; with compiled
      steps, their warm-up per shape and a warm restart (a new process, compiled code from the disk cache)
  --contended  CPU: case 3 alone and beside one other CPU-bound process (``bench.contention``)
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
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from steer_ui.bench.cases import (CASES, PROMPT, Result, _answer_probe_costs, _load_times, _probe_costs,
                                  _timed_round_robin)
from steer_ui.bench.cases import case_functions, fast_shapes, wanted_cases
from steer_ui.bench.contention import contended
from steer_ui.bench.memory import PeakMemory, peak_tensor_mb
from steer_ui.bench.report import markdown
from steer_ui.bench.shapes import SHAPES, random_shape
from steer_ui.engine.fast_path import attach
from steer_ui.engine.plan import plan_run
from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError
from steer_ui.model import cpu_matmul
from steer_ui.model.loading import LoadedModel, load_model


def _model_args(args: argparse.Namespace) -> list[str]:
    cmd = ["--new-tokens", str(args.new_tokens), "--model", args.model, "--device", args.device,
           "--dtype", args.dtype, "--cache", args.cache]
    cmd += ["--compile", "--compile-backend", args.compile_backend] if args.compile else []
    cmd += ["--eager"] if args.eager else []
    cmd += ["--random-shape", args.random_shape] if args.random_shape else []
    cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    return cmd


def _peak_in_fresh_process(case: str, args: argparse.Namespace) -> dict[str, float | None]:
    """Run one case in a new process; its peak memory growth in MB, as ``{"tensor_mb", "rss_mb"}``."""
    cmd = [sys.executable, "-m", "steer_ui.bench", "--memory-case", case, *_model_args(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _restart_first_token_s(args: argparse.Namespace) -> float:
    """A new process: load, warm the compiled steps (from the disk cache now), first token of case 3."""
    cmd = [sys.executable, "-m", "steer_ui.bench", "--restart-probe", *_model_args(args)]
    started = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - started


def load(args: argparse.Namespace) -> LoadedModel:
    """The model the benchmark runs, with compiled steps where there are any (CUDA; CPU with --compile)."""
    if args.random_shape:
        lm = random_shape(args.random_shape, args.device, args.dtype, args.tokenizer)
    else:
        lm = load_model(args.model, args.device, args.dtype)
    if not args.eager:
        attach(lm, compile_on_cpu=args.compile, backend=args.compile_backend)
    return lm


def warm(lm: LoadedModel, args: argparse.Namespace) -> dict[str, float]:
    """Warm the engine cases' compiled shapes; seconds per shape (compile and, on CUDA, graph capture)."""
    if lm.fast is None:
        return {}
    shapes = fast_shapes(lm, args.new_tokens, args.cache)
    lm.fast.warm(shapes, report=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    failed = {str(s): why for s, why in lm.fast.failed.items()}
    if failed:
        raise UserError(f"compiling the decode steps failed: {failed}; run with --eager")
    return {str(s): lm.fast.warm_s[s] for s in shapes}


def run_benchmark(lm: LoadedModel, n: int, repeats: int, contexts: list[int], spec: str | None,
                  args: argparse.Namespace) -> dict:
    threads = torch.get_num_threads()  # as set: the contended case moves this thread's count
    warm_s = warm(lm, args)
    fns = case_functions(lm, n, args.cache)
    keys = wanted_cases(lm)
    prompt_tokens = len(plan_run(lm, RunSettings(PROMPT)).prompt_ids)
    results = {key: Result(key, CASES[key][0], CASES[key][1], tokens=n) for key in keys}
    first_call = _timed_round_robin(lm, {key: fns[key] for key in keys}, repeats, results)
    for key, r in results.items() if args.memory else ():
        print(f"  memory {key}: {r.label}", file=sys.stderr, flush=True)
        peak = _peak_in_fresh_process(key, args)
        r.peak_mb, r.rss_mb = peak["tensor_mb"], peak["rss_mb"]
    extra: dict = {"ttft_s": statistics.median(fns["ttft"]() for _ in range(max(1, repeats)))}
    if "1s" in first_call:
        extra["hf_static_first_call_s"] = first_call["1s"]  # transformers compiles on the first call
    if lm.fast is not None:
        extra["fast_path_warm_s"] = warm_s
        extra["restart_first_token_s"] = _restart_first_token_s(args)
    if spec is not None:
        extra.update(_load_times(spec, args.device, args.dtype))
    if args.contended:
        extra["contended_tok_s"] = contended(lm, fns["3"], n, repeats)
    gpu = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None
    return {
        "model": lm.model_id, "device": str(lm.device), "gpu": gpu, "dtype": str(lm.dtype).removeprefix("torch."),
        "threads": threads, "cache": args.cache, "compiled": lm.fast is not None,
        "few_row_linears": cpu_matmul.summary(lm.model), "new_tokens": n, "repeats": repeats,
        "prompt_tokens": prompt_tokens, "torch": torch.__version__,
        "cases": [{**asdict(r), "median_s": r.median_s, "tok_s_per_stream": r.tok_s} for r in results.values()],
        "probe_cost": _probe_costs(lm, contexts, repeats, args.cache),
        "answer_probe_cost": _answer_probe_costs(lm, contexts, repeats, args.cache), **extra,
    }


def _memory_case(args: argparse.Namespace) -> int:
    lm = load(args)
    warm(lm, args)  # compiling is a one-off cost, not the run's memory
    fn = case_functions(lm, args.new_tokens, args.cache)[args.memory_case]
    with torch.inference_mode():  # page the mmapped weights in: that is load cost, not the case's
        lm.model(input_ids=torch.tensor([[1, 2]], device=lm.input_device))
    if lm.fast is not None or args.memory_case == "1s":
        fn()  # the first call of a compiled case records its graphs
    with PeakMemory(lm.device) as mem:  # first, while the allocator is fresh
        fn()
    cpu = lm.device.type == "cpu"
    print(json.dumps({"tensor_mb": peak_tensor_mb(fn) if cpu else mem.peak_mb,
                      "rss_mb": mem.peak_mb if cpu else None}))
    return 0


def _restart_probe(args: argparse.Namespace) -> int:
    lm = load(args)
    warm(lm, args)
    case_functions(lm, args.new_tokens, args.cache)["ttft"]()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m steer_ui.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--random-shape", choices=sorted(SHAPES), default=None,
                   help="benchmark a randomly initialised model of this shape instead (built from its config, no "
                        "download)")
    p.add_argument("--tokenizer", default=None,
                   help="with --random-shape: a saved tokenizer folder (default: the bundled model's)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contexts", default="128,512,2048", help="context lengths for the probe-cost case")
    p.add_argument("--quick", action="store_true", help="a few tokens, one repeat, no cold load: a smoke run")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                   help="the KV cache of the engine's eager cases (compiled steps always use a static one)")
    p.add_argument("--compile", action="store_true",
                   help="on CPU, compile the engine's steps too (a CUDA GPU compiles them unless --eager)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend for the engine's steps (inductor; aot_eager traces without code "
                        "generation: a quick check that the compiled path runs)")
    p.add_argument("--eager", action="store_true", help="no compiled engine steps, even on a GPU")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory measurements (a fresh process per case)")
    p.add_argument("--contended", action="store_true",
                   help="CPU: also time case 3 beside one other CPU-bound process (a busy Python loop), with the "
                        "thread count following the load and fixed")
    p.add_argument("--sweeps", type=int, default=None, metavar="QUESTIONS",
                   help="instead: sweep throughput in process and on 1 and 2 Ray workers (QUESTIONS yes/no "
                        "questions x 3 arms, --new-tokens each; needs Ray)")
    p.add_argument("--json", default=None, help="also write the full report here")
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # internal: one case, print its peaks
    p.add_argument("--restart-probe", action="store_true", help=argparse.SUPPRESS)  # internal: a warm restart
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.memory_case:
            return _memory_case(args)
        if args.restart_probe:
            return _restart_probe(args)
        if args.sweeps is not None:
            return _sweeps(args)
        if args.quick:
            args.new_tokens, args.repeats, args.contexts = 16, 1, "32,128"
        try:
            contexts = [int(x) for x in args.contexts.split(",")]
        except ValueError:
            raise UserError(f"--contexts takes comma-separated token counts, got {args.contexts!r}") from None
        if args.new_tokens < 1 or args.repeats < 1 or min(contexts) < 1:
            raise UserError("--new-tokens, --repeats and every --contexts value must be >= 1")
        lm = load(args)
        if args.contended and lm.device.type != "cpu":
            raise UserError("--contended measures CPU decoding beside another CPU-bound process; use it on CPU")
        spec = None if args.random_shape or args.quick or not (args.model.endswith(".gguf")
                                                                or args.model == "smollm2-135m") else args.model
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


def _sweeps(args: argparse.Namespace) -> int:
    from steer_ui.bench.sweeps import markdown as sweeps_markdown
    from steer_ui.bench.sweeps import sweep_throughput
    from steer_ui.experiments.cluster import import_ray

    if args.sweeps < 1 or args.new_tokens < 1:
        raise UserError("--sweeps and --new-tokens must be >= 1")
    import_ray()
    lines = sweep_throughput(args.model, args.sweeps, args.new_tokens)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"sweeps": lines, "questions": args.sweeps, "new_tokens": args.new_tokens}, f, indent=2)
    print(sweeps_markdown(lines, args.sweeps, args.new_tokens))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
