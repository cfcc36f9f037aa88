"""Probing leaves the KV cache as it was; each scope steers exactly the positions it names."""

from __future__ import annotations

import pytest
import torch
from conftest import random_vector
from helpers import collect

from steer_ui.engine.forward import Forward
from steer_ui.engine.plan import plan_run
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.engine.scope import Scope


def _snapshot(cache):
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def test_probe_leaves_cache_exactly_as_before(bundled):
    plan = plan_run(bundled, RunSettings("Is 9 prime?"))
    prompt, suffix = list(plan.prompt_ids), list(plan.probe.suffix_ids)
    coefs = torch.zeros(1)
    fused, plain = Forward(bundled, None, coefs), Forward(bundled, None, coefs)
    with torch.inference_mode():
        for fw in (fused, plain):
            fw([prompt], [[0.0] * len(prompt)], 1, 0)
        before = _snapshot(fused.cache)
        # A probe on its own: suffix in, reading out, cropped: the cache is bit-identical.
        fused([suffix], [[0.0] * len(suffix)], 1, len(suffix))
        assert fused.cache.get_seq_length() == len(prompt)
        for (k0, v0), layer in zip(before, fused.cache.layers):
            assert torch.equal(k0, layer.keys) and torch.equal(v0, layer.values)
        # Fused into a decode step: the cache holds prompt + token, the same as a plain step's.
        token = 42
        a = fused([[token] + suffix], [[0.0] * (1 + len(suffix))], [[0, len(suffix)]], len(suffix))
        b = plain([[token]], [[0.0]], 1, 0)
    assert fused.cache.get_seq_length() == plain.cache.get_seq_length() == len(prompt) + 1
    for (k0, v0), lf, lp in zip(before, fused.cache.layers, plain.cache.layers):
        assert torch.equal(lf.keys[..., : len(prompt), :], k0)
        assert torch.equal(lf.values[..., : len(prompt), :], v0)
        # The new position went through a (1 + suffix)-token forward in one cache and a 1-token forward in
        # the other: float32 rounding differs with the GEMM shape (1.06e-5 seen on an AMD CPU), hence 1e-4.
        torch.testing.assert_close(lf.keys, lp.keys, rtol=0, atol=1e-4)
        torch.testing.assert_close(lf.values, lp.values, rtol=0, atol=1e-4)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-4)


def _expected(scope: Scope, n_prompt: int, fed: list[int], think_close: int) -> list[bool]:
    """Steered flags for prompt positions then fed tokens, derived independently of the engine."""
    prompt = [scope.kind == "all" or (scope.kind == "kick" and p == n_prompt - 1) for p in range(n_prompt)]
    flags, thinking = [], True  # the tiny template opens <think>
    for i, tok in enumerate(fed):
        in_think = thinking
        if tok == think_close:
            thinking = False
        flags.append({"all": True, "generated": True, "think": in_think, "answer": not in_think,
                      "kick": (i + 1) % max(scope.every, 1) == 0}[scope.kind])
    return prompt + flags


@pytest.mark.parametrize("scope", ["all", "generated", "kick:3", "think", "answer"])
def test_scope_steers_exactly_the_named_positions(tiny, scope):
    lm = tiny["llama"]
    layer = 1
    vec = random_vector(lm, [layer], scale=1.0)
    before_add, after_add = [], []
    h1 = lm.layers[layer].register_forward_hook(lambda m, a, out: before_add.append(out.detach().clone()),
                                                prepend=True)
    h2 = lm.layers[layer + 1].register_forward_pre_hook(lambda m, a: after_add.append(a[0].detach().clone()))
    try:
        s = RunSettings("Is seventeen prime?", rows=steered(vec, (2.0,), scope=Scope.parse(scope)),
                        max_new_tokens=12, probe_every=0)
        start, _, _, done = collect(lm, s)
    finally:
        h1.remove()
        h2.remove()
    added = torch.cat([(b - a) for a, b in zip(before_add, after_add)], dim=1)  # rows x positions x hidden
    assert added[0].abs().max() == 0, "the baseline row is never steered"
    flags = (added[1].abs().amax(dim=-1) > 0).tolist()
    row = done.rows[1]
    fed = row.token_ids[:-1] if row.finish_reason == "length" else row.token_ids
    close = lm.tokenizer.convert_tokens_to_ids("</think>")
    assert flags == _expected(Scope.parse(scope), len(start.prompt_ids), fed, close)
    for pos in [i for i, f in enumerate(flags) if f]:
        torch.testing.assert_close(added[1, pos], 2.0 * vec.directions[layer], rtol=0, atol=1e-5)


def test_static_cache_gives_the_dynamic_cache_run(bundled):
    """Preallocated cache, suffix left behind the length instead of cut: same tokens, same readings."""
    vec = random_vector(bundled, list(range(14, 20)), scale=2.0)
    runs = {}
    for cache in ("dynamic", "static"):
        s = RunSettings("Is 7 larger than 5? Answer Yes or No.", rows=steered(vec, (4.0, -4.0), scope="generated"),
                        max_new_tokens=48, ignore_eos=True, probe_every=1, cache=cache)
        runs[cache] = collect(bundled, s)
    (_, _, probes_d, done_d), (_, _, probes_s, done_s) = runs["dynamic"], runs["static"]
    assert [r.token_ids for r in done_s.rows] == [r.token_ids for r in done_d.rows]
    assert len({tuple(r.token_ids) for r in done_d.rows}) == 3  # the rows differ: steering reached both
    assert [(p.row, p.step) for p in probes_s] == [(p.row, p.step) for p in probes_d]
    assert max(abs(a.logodds - b.logodds) for a, b in zip(probes_s, probes_d)) < 1e-3


def test_static_cache_refuses_sliding_window_models(tiny):
    import copy

    from steer_ui.engine.kv_cache import check_static_cache
    from steer_ui.errors import UserError

    config = copy.deepcopy(tiny["qwen2"].model.config)
    config.sliding_window, config.use_sliding_window = 8, True
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    with pytest.raises(UserError, match="static cache does not support .*sliding-window"):
        check_static_cache(config, "tiny-qwen2-sliding")
    check_static_cache(tiny["qwen2"].model.config, "tiny-qwen2")  # full attention: fine
