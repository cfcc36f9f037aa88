"""The decode loop on the real bundled model: equivalence with generate, the probe, hooks, cancel."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import random_vector
from helpers import add_everywhere, collect, full_forward_reading, generate_greedy, probe_logits_fingerprint

from steer_ui.engine.decode import eos_ids, run
from steer_ui.engine.events import TokenEvent
from steer_ui.engine.run_settings import ProbeSettings, RunSettings, Sampling, Scope

PROMPT = "Is 17 a prime number? Answer yes or no, then explain."
LAYERS = range(8, 16)


@pytest.fixture(scope="module")
def vec(bundled):
    # Norm 4 per layer: coefficient 2 visibly bends SmolLM2 without turning it into token salad.
    return random_vector(bundled, LAYERS, scale=4.0)


def test_baseline_equals_generate_and_coef0_equals_baseline(bundled, vec):
    s = RunSettings(PROMPT, vector=vec, coefs=(0.0, 2.0), max_new_tokens=24, probe=ProbeSettings(every=3))
    start, tokens, probes, done = collect(bundled, s)
    base, zero, steered = (r.token_ids for r in done.rows)
    assert base == generate_greedy(bundled, start.prompt_ids, 24, eos_ids(bundled))
    assert zero == base
    assert steered != base, "the test vector must actually steer, or the comparisons prove nothing"
    # The token events are the same stream the done event summarises.
    for row in done.rows:
        assert [t.token_id for t in tokens if t.row == row.row] == row.token_ids
        assert "".join(t.text for t in tokens if t.row == row.row) == row.text


def test_coef0_equals_baseline_when_sampling(bundled, vec):
    s = RunSettings(PROMPT, vector=vec, coefs=(0.0, 2.0), max_new_tokens=24,
                    sampling=Sampling(temperature=0.9, top_p=0.95, top_k=50, seed=7), probe=ProbeSettings(every=0))
    done = collect(bundled, s)[3]
    assert done.rows[1].token_ids == done.rows[0].token_ids
    again = collect(bundled, s)[3]
    assert again.rows[2].token_ids == done.rows[2].token_ids, "same seed, same samples"
    other = collect(bundled, RunSettings(PROMPT, max_new_tokens=24, probe=ProbeSettings(every=0),
                                         sampling=Sampling(temperature=0.9, top_p=0.95, top_k=50, seed=8)))[3]
    assert other.rows[0].token_ids != done.rows[0].token_ids, "a different seed samples differently"


@pytest.mark.parametrize("coef", [0.0, 2.0])
def test_probe_equals_full_forward(bundled, vec, coef):
    """Each fused, cache-based reading matches an uncached forward over prompt + s tokens + suffix."""
    s = RunSettings(PROMPT, vector=vec, coefs=(coef,), max_new_tokens=16, scope=Scope("all"),
                    probe=ProbeSettings(every=5))
    start, _, probes, done = collect(bundled, s)
    row = done.rows[1]
    choices = [{"label": c.label, "token_ids": c.token_ids} for c in start.probe_choices]
    mine = [p for p in probes if p.row == 1]
    assert [p.step for p in mine] == [0, 5, 10, 15]
    with add_everywhere(bundled, {x: vec.directions[x] for x in LAYERS}, coef):
        for p in mine:
            ids = start.prompt_ids + row.token_ids[:p.step] + start.probe_suffix_ids
            logodds, mass, per = full_forward_reading(bundled, ids, choices)
            assert p.logodds == pytest.approx(logodds, abs=1e-3)
            assert p.mass == pytest.approx(mass, abs=1e-3)
            for label, value in per.items():
                assert p.logprobs[label] == pytest.approx(value, abs=1e-3)
            assert p.reliable == (p.mass >= 0.1)


def test_hooks_leave_no_trace_after_run_error_and_cancel(bundled, vec):
    before = probe_logits_fingerprint(bundled)
    hooks = lambda: sum(len(layer._forward_hooks) for layer in bundled.layers)  # noqa: E731
    s = RunSettings(PROMPT, vector=vec, coefs=(3.0,), max_new_tokens=8)
    collect(bundled, s)
    assert hooks() == 0

    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")

    handle = bundled.layers[-1].register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            collect(bundled, s)
    finally:
        handle.remove()
    assert hooks() == 0

    events = run(bundled, s)
    for ev in events:
        if isinstance(ev, TokenEvent) and ev.step == 2:
            break  # the consumer walks away mid-run (a closed browser tab)
    events.close()
    assert hooks() == 0
    assert torch.equal(probe_logits_fingerprint(bundled), before)


def test_cancel_stops_within_one_step_and_keeps_tokens(bundled, vec):
    cancel = threading.Event()
    s = RunSettings(PROMPT, vector=vec, coefs=(2.0,), max_new_tokens=64, probe=ProbeSettings(every=2))
    seen = []
    for ev in run(bundled, s, cancel):
        if isinstance(ev, TokenEvent):
            seen.append(ev)
            if ev.step == 3:
                cancel.set()
        last = ev
    assert {r.finish_reason for r in last.rows} == {"cancelled"}
    assert all(len(r.token_ids) == 4 for r in last.rows)
    assert max(t.step for t in seen) == 3


def test_consumer_code_keeps_grad_mode(bundled):
    """The engine's inference mode must not leak into the consumer's code between events."""
    for _ in run(bundled, RunSettings(PROMPT, max_new_tokens=3)):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
