"""Benchmark: ``python -m steer_ui.bench`` (see README for the table it produces).

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
from dataclasses import asdict

import torch

from steer_ui.bench.cases import CASES, PROMPT, Result, _load_times, _probe_costs, _timed_round_robin, case_functions
from steer_ui.bench.memory import PeakMemory, peak_tensor_mb
from steer_ui.bench.report import markdown
from steer_ui.bench.shapes import random_r1_qwen_shape
from steer_ui.engine.plan import plan_run
from steer_ui.engine.run_settings import RunSettings
from steer_ui.model import cpu_matmul
from steer_ui.model.loading import LoadedModel, compile_model, load_model


def _peak_in_fresh_process(case: str, args: argparse.Namespace) -> dict[str, float | None]:
    """Run one case in a new process; its peak memory growth in MB, as ``{"tensor_mb", "rss_mb"}``."""
    import subprocess

    cmd = [sys.executable, "-m", "steer_ui.bench", "--memory-case", case, "--new-tokens", str(args.new_tokens),
           "--model", args.model, "--device", args.device, "--dtype", args.dtype, "--cache", args.cache]
    if args.compile:
        cmd.append("--compile")
    if args.random_shape:
        cmd += ["--random-shape", args.random_shape]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
        "compiled": bool(args.compile), "few_row_linears": cpu_matmul.in_use(lm.model), "new_tokens": n,
        "repeats": repeats, "prompt_tokens": prompt_tokens,
        "cases": [{**asdict(r), "median_s": r.median_s, "tok_s_per_stream": r.tok_s} for r in results.values()],
        "probe_cost": _probe_costs(lm, contexts, repeats, "static" if args.compile else args.cache), **extra,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m steer_ui.bench", description=__doc__.splitlines()[0])
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
