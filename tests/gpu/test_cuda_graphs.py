"""The fast path on a CUDA GPU: CUDA graphs give the eager run, keep the baseline row stable within a bucket
in bf16, steer inside the graphs, stop within a step and do not grow memory over runs.

Run them on any CUDA machine with ``python -m pytest -m gpu tests/gpu`` (they are skipped without one).
They build random models of a real shape (R1-Distill-Qwen-1.5B's width and vocabulary, fewer layers)
from configs, with a tokenizer trained in the test: no download and no bundled model needed.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch
from helpers import collect, full_forward_reading

from steer_ui.engine.decode import fast_shape, run
from steer_ui.engine.events import TokenEvent
from steer_ui.engine.fast_path import attach
from steer_ui.engine.plan import plan_run
from steer_ui.engine.run_settings import RunSettings, SteeredRow, steered
from steer_ui.vectors.vector import SteeringVector

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
PROMPT = "Is seventeen a prime number?"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tiny import build_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer().save_pretrained(path)
    return str(path)


def random_vector(lm, layers, scale: float = 1.0, seed: int = 0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({x: torch.nn.functional.normalize(torch.randn(lm.hidden_size, generator=g), dim=0) * scale
                           for x in layers}, name=f"random{seed}")


def gpu_model(tokenizer_dir: str, dtype: str, layers: int = 4):
    """R1-Distill-Qwen-1.5B's width and vocabulary with ``layers`` layers, random, on the first GPU."""
    from steer_ui.bench.shapes import random_shape

    return random_shape("r1-distill-qwen-1.5b", device="cuda:0", dtype=dtype, tokenizer=tokenizer_dir, layers=layers)


def warmed(lm, settings):
    fast = attach(lm)
    assert fast is not None, "a single CUDA GPU gets the fast path"
    plan = plan_run(lm, settings)
    fast.warm([fast_shape(fast, plan)])
    return fast


@pytest.fixture(scope="module")
def fp32(tokenizer_dir):
    return gpu_model(tokenizer_dir, "float32")


@pytest.fixture(scope="module")
def bf16(tokenizer_dir):
    return gpu_model(tokenizer_dir, "bfloat16")


def test_float32_graphs_give_the_eager_run_generate_and_uncached_readings(fp32):
    vec = random_vector(fp32, [1, 2], scale=8.0)
    s = RunSettings(PROMPT, rows=steered(vec, (4.0,)), max_new_tokens=48, ignore_eos=True, probe_every=1)
    warmed(fp32, s)
    start, _, probes, done = collect(fp32, s)
    _, _, probes_e, done_e = collect(fp32, replace(s, eager=True))
    assert done.timing.compiled and not done_e.timing.compiled
    assert [r.token_ids for r in done.rows] == [r.token_ids for r in done_e.rows]
    assert max(abs(a.logodds - b.logodds) for a, b in zip(probes, probes_e)) < 1e-3
    # The baseline row is what a plain one-row generate gives, and its readings what an uncached forward gives.
    with torch.inference_mode():  # min_new_tokens: on past end-of-sequence, as the run was (ignore_eos)
        ref = fp32.model.generate(torch.tensor([start.prompt_ids], device=fp32.input_device), max_new_tokens=48,
                                  min_new_tokens=48, do_sample=False, pad_token_id=0)
    assert done.rows[0].token_ids == ref[0, len(start.prompt_ids):].tolist()
    choices = [{"label": c.label, "token_ids": c.token_ids} for c in start.probe_choices]
    for p in (p for p in probes if p.row == 0 and p.step % 8 == 0):
        ids = start.prompt_ids + done.rows[0].token_ids[:p.step] + start.probe_suffix_ids
        assert p.logodds == pytest.approx(full_forward_reading(fp32, ids, choices)[0], abs=1e-3)
    # Steering is inside the graphs: the steered row departs from the baseline.
    assert done.rows[1].token_ids != done.rows[0].token_ids


def test_bf16_baseline_is_the_same_with_one_two_or_three_rows_beside_it(bf16):
    vecs = [random_vector(bf16, [1, 2], scale=8.0, seed=s) for s in (1, 2, 3)]
    runs = [tuple(SteeredRow(v, 4.0) for v in vecs[:n]) for n in (1, 2, 3)]
    warmed(bf16, RunSettings(PROMPT, rows=runs[0], max_new_tokens=64, ignore_eos=True))
    baselines = []
    for rows in runs:
        done = collect(bf16, RunSettings(PROMPT, rows=rows, max_new_tokens=64, ignore_eos=True))[3]
        assert done.timing.compiled
        baselines.append(done.rows[0].token_ids)
    assert baselines[0] == baselines[1] == baselines[2]


def test_stop_ends_a_graph_run_within_a_step(fp32):
    s = RunSettings(PROMPT, rows=steered(random_vector(fp32, [1], seed=4), (2.0,)), max_new_tokens=400,
                    ignore_eos=True)
    warmed(fp32, s)
    cancel = threading.Event()
    seen = 0
    for event in run(fp32, s, cancel):
        if isinstance(event, TokenEvent) and event.row == 0:
            seen += 1
            if seen == 10:
                cancel.set()
    done = event
    assert all(r.finish_reason == "cancelled" and len(r.token_ids) <= 11 for r in done.rows)
    assert not fp32.fast.busy.locked()


def test_twenty_runs_do_not_grow_gpu_memory(fp32):
    s = RunSettings(PROMPT, rows=steered(random_vector(fp32, [1, 2], seed=5), (2.0, -2.0)), max_new_tokens=32,
                    ignore_eos=True, probe_every=4)
    warmed(fp32, s)
    collect(fp32, s)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for seed in range(20):
        vec = random_vector(fp32, [1, 2], seed=100 + seed)
        done = collect(fp32, RunSettings(PROMPT, rows=steered(vec, (2.0, -2.0)), max_new_tokens=32, ignore_eos=True,
                                         probe_every=4))[3]
        assert done.timing.compiled
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 16 * 2**20
