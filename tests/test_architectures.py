"""Tiny random Llama, Qwen2, GPT-2 and GPT-NeoX models: the same guarantees as on the bundled model."""

from __future__ import annotations

import pytest
from conftest import random_vector
from helpers import add_everywhere, collect, full_forward_reading, generate_greedy

from steer_ui.engine.plan import eos_ids
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.engine.scope import Scope


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_engine_on_architecture(tiny, arch, cache):
    lm = tiny[arch]
    vec = random_vector(lm, [1, 2], scale=4.0)
    s = RunSettings("Is nine a prime number?", rows=steered(vec, (0.0, 3.0), scope=Scope("all")),
                    max_new_tokens=12, probe_every=4, probe_choices=("Yes", "No"), cache=cache)
    start, _, probes, done = collect(lm, s)
    base, zero, bent = (r.token_ids for r in done.rows)
    assert base == generate_greedy(lm, start.prompt_ids, 12, eos_ids(lm))
    assert zero == base
    assert bent != base
    choices = [{"label": c.label, "token_ids": c.token_ids} for c in start.probe_choices]
    for row, coef in ((0, 0.0), (2, 3.0)):
        with add_everywhere(lm, vec.directions, coef):
            for p in (p for p in probes if p.row == row):
                # The template leaves <think> open, so the probe closes it before the suffix.
                assert p.think_closed
                ids = start.prompt_ids + done.rows[row].token_ids[:p.step] + _close_ids(lm, s)
                logodds, mass, _ = full_forward_reading(lm, ids, choices)
                assert p.logodds == pytest.approx(logodds, abs=1e-3)
                assert p.mass == pytest.approx(mass, abs=1e-3)


def _close_ids(lm, settings):
    from steer_ui.engine.probe import build_probe
    return list(build_probe(lm.tokenizer, lm.profile, settings).close_think_ids)
