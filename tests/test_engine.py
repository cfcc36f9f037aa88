"""The decode loop on the real bundled model: equivalence with generate, the probe, hooks, cancel."""

from __future__ import annotations

import pickle
import threading

import pytest
import torch
from conftest import random_vector
from helpers import add_everywhere, collect, full_forward_reading, generate_greedy, our_hooks, probe_logits_fingerprint

from steer_ui.engine.decode import decode, run
from steer_ui.engine.events import DoneEvent, ProbeEvent, TokenEvent
from steer_ui.engine.plan import eos_ids, plan_run
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError

PROMPT = "Is 17 a prime number? Answer yes or no, then explain."
LAYERS = range(8, 16)


@pytest.fixture(scope="module")
def vec(bundled):
    # Norm 4 per layer: coefficient 2 visibly bends SmolLM2 without turning it into token salad.
    return random_vector(bundled, LAYERS, scale=4.0)


def test_baseline_equals_generate_and_coef0_equals_baseline(bundled, vec):
    s = RunSettings(PROMPT, rows=steered(vec, (0.0, 2.0)), max_new_tokens=24, probe_every=3)
    start, tokens, _, done = collect(bundled, s)
    base, zero, bent = (r.token_ids for r in done.rows)
    assert base == generate_greedy(bundled, start.prompt_ids, 24, eos_ids(bundled))
    assert zero == base
    assert bent != base, "the test vector must actually steer, or the comparisons prove nothing"
    # The token events are the same stream the done event summarises.
    for row in done.rows:
        assert [t.token_id for t in tokens if t.row == row.row] == row.token_ids
        assert "".join(t.text for t in tokens if t.row == row.row) == row.text


def test_coef0_equals_baseline_when_sampling(bundled, vec):
    s = RunSettings(PROMPT, rows=steered(vec, (0.0, 2.0)), max_new_tokens=24,
                    temperature=0.9, top_p=0.95, top_k=50, seed=7, probe_every=0)
    done = collect(bundled, s)[3]
    assert done.rows[1].token_ids == done.rows[0].token_ids
    again = collect(bundled, s)[3]
    assert again.rows[2].token_ids == done.rows[2].token_ids, "same seed, same samples"
    other = collect(bundled, RunSettings(PROMPT, max_new_tokens=24, probe_every=0,
                                         temperature=0.9, top_p=0.95, top_k=50, seed=8))[3]
    assert other.rows[0].token_ids != done.rows[0].token_ids, "a different seed samples differently"


@pytest.mark.parametrize("coef", [0.0, 2.0])
def test_probe_equals_full_forward(bundled, vec, coef):
    """Each fused, cache-based reading matches an uncached forward over prompt + s tokens + suffix."""
    s = RunSettings(PROMPT, rows=steered(vec, (coef,), scope=Scope("all")), max_new_tokens=16, probe_every=5)
    start, _, probes, done = collect(bundled, s)
    row = done.rows[1]
    choices = [{"label": c.label, "token_ids": c.token_ids} for c in start.probe_choices]
    mine = [p for p in probes if p.row == 1]
    assert [p.step for p in mine] == [0, 5, 10, 15, 16]  # 16: the final reading, where the row ended
    assert [p.final for p in mine] == [False] * 4 + [True]
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
    s = RunSettings(PROMPT, rows=steered(vec, (3.0,)), max_new_tokens=8)
    collect(bundled, s)
    assert our_hooks(bundled) == 0

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
    assert our_hooks(bundled) == 0

    events = run(bundled, s)
    for ev in events:
        if isinstance(ev, TokenEvent) and ev.step == 2:
            break  # the consumer walks away mid-run (a closed browser tab)
    events.close()
    assert our_hooks(bundled) == 0
    assert torch.equal(probe_logits_fingerprint(bundled), before)


def test_cancel_stops_within_one_step_and_keeps_tokens(bundled, vec):
    cancel = threading.Event()
    s = RunSettings(PROMPT, rows=steered(vec, (2.0,)), max_new_tokens=64, probe_every=2)
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


def test_run_checks_before_any_event_and_a_plan_decodes_anywhere(bundled, vec):
    """``run`` refuses bad settings when called, not when first iterated; a plan survives pickling (the
    ZeroGPU worker gets one) and decodes to the same run."""
    with pytest.raises(UserError, match=r"max new tokens must be >= 1, got 0"):
        run(bundled, RunSettings(PROMPT, max_new_tokens=0))
    s = RunSettings(PROMPT, rows=steered(vec, (2.0,)), max_new_tokens=6, probe_every=3)
    direct = list(run(bundled, s))
    shipped = list(decode(bundled, pickle.loads(pickle.dumps(plan_run(bundled, s)))))
    assert direct[0].to_dict() == shipped[0].to_dict()
    assert [e for e in direct if isinstance(e, TokenEvent)] == [e for e in shipped if isinstance(e, TokenEvent)]
    readings = [[(p.row, p.step, p.logodds) for p in events if isinstance(p, ProbeEvent)]
                for events in (direct, shipped)]
    assert [r[:2] for r in readings[0]] == [r[:2] for r in readings[1]]
    assert all(a[2] == pytest.approx(b[2], abs=1e-5) for a, b in zip(*readings))
    assert isinstance(shipped[-1], DoneEvent) and shipped[-1].rows == direct[-1].rows
