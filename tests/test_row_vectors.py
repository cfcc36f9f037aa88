"""Rows with their own vectors, layers and scopes in one batch: each steered row runs exactly as it would
alone beside the baseline, the start event says what each row is, and a bad row is named in the error."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_vector
from helpers import collect

from steer_ui.engine.plan import plan_run
from steer_ui.engine.run_settings import RunSettings, SteeredRow, steered
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.vectors.presets import resolve_vector
from steer_ui.vectors.vector import SteeringVector

PROMPT = "Is 17 a prime number? Answer yes or no, then explain."
N = 14
RECON_LAYERS, CONF_LAYERS = (15, 16, 17, 18), (16, 17, 18, 19)


@pytest.fixture(scope="module")
def presets() -> dict[str, SteeringVector]:
    return {name: resolve_vector(name, "smollm2-135m") for name in ("reconsideration", "confidence")}


@pytest.fixture(scope="module")
def mixed_rows(presets) -> tuple[SteeredRow, SteeredRow]:
    return (SteeredRow(presets["reconsideration"], 4.0, RECON_LAYERS, Scope("generated")),
            SteeredRow(presets["confidence"], -6.0, CONF_LAYERS, Scope("all")))


def _settings(rows) -> RunSettings:
    return RunSettings(PROMPT, rows=tuple(rows), max_new_tokens=N, ignore_eos=True, probe_every=4)


def _readings(probes, row: int) -> list[tuple[int, float, float]]:
    return [(p.step, p.logodds, p.mass) for p in probes if p.row == row]


def _assert_same_readings(got, want) -> None:
    assert [s for s, _, _ in got] == [s for s, _, _ in want]
    for (_, lo_a, mass_a), (_, lo_b, mass_b) in zip(got, want):
        assert lo_a == pytest.approx(lo_b, abs=1e-3)
        assert mass_a == pytest.approx(mass_b, abs=1e-3)


@pytest.fixture(scope="module")
def runs(bundled, mixed_rows):
    """The mixed run and each steered row alone beside the baseline (greedy, fixed length)."""
    return {"mixed": collect(bundled, _settings(mixed_rows)),
            "recon": collect(bundled, _settings(mixed_rows[:1])),
            "conf": collect(bundled, _settings(mixed_rows[1:]))}


def test_each_row_runs_as_it_would_alone(runs):
    _, _, probes, done = runs["mixed"]
    base, recon, conf = (r.token_ids for r in done.rows)
    assert len({tuple(base), tuple(recon), tuple(conf)}) == 3, "both vectors must change the output"
    for row, alone in ((1, "recon"), (2, "conf")):
        _, _, alone_probes, alone_done = runs[alone]
        assert done.rows[row].token_ids == alone_done.rows[1].token_ids, alone
        assert done.rows[row].text == alone_done.rows[1].text
        _assert_same_readings(_readings(probes, row), _readings(alone_probes, 1))
    # The baseline is the same run whatever rows share its batch.
    for alone in ("recon", "conf"):
        _, _, alone_probes, alone_done = runs[alone]
        assert alone_done.rows[0].token_ids == base
        _assert_same_readings(_readings(alone_probes, 0), _readings(probes, 0))


def test_start_event_says_what_each_row_is(runs):
    start, _, _, done = runs["mixed"]
    rows = json.loads(json.dumps(start.to_dict()))["rows"]  # the --jsonl contract
    assert rows == [
        {"row": 0, "label": "baseline", "coef": 0.0, "vector": None, "layers": [], "scope": None},
        {"row": 1, "label": "reconsideration +4 @15-18 (generated)", "coef": 4.0, "vector": "reconsideration",
         "layers": [15, 16, 17, 18], "scope": "generated"},
        {"row": 2, "label": "confidence -6 @16-19 (all)", "coef": -6.0, "vector": "confidence",
         "layers": [16, 17, 18, 19], "scope": "all"},
    ]
    assert start.layers == [15, 16, 17, 18, 19]
    assert [r.label for r in done.rows] == [r["label"] for r in rows]
    alone = runs["recon"][0].to_dict()["rows"]
    assert [r["label"] for r in alone] == ["baseline", "coef +4"]  # one vector, layers and scope: no need to say
    assert alone[1]["vector"] == "reconsideration" and alone[1]["scope"] == "generated"


def test_labels_name_only_what_differs(bundled, presets):
    recon, conf = presets["reconsideration"], presets["confidence"]

    def labels(rows) -> list[str]:
        return [r.label for r in plan_run(bundled, _settings(rows)).rows]

    assert labels(steered(recon, (4, 8), RECON_LAYERS)) == ["baseline", "coef +4", "coef +8"]
    assert labels([SteeredRow(recon, 4, RECON_LAYERS), SteeredRow(conf, -6, RECON_LAYERS)]) == \
        ["baseline", "reconsideration +4", "confidence -6"]
    assert labels([SteeredRow(recon, 4, RECON_LAYERS), SteeredRow(recon, 4, CONF_LAYERS)]) == \
        ["baseline", "coef +4 @15-18", "coef +4 @16-19"]
    assert labels([SteeredRow(recon, 4, scope=Scope("generated")), SteeredRow(recon, 4, scope=Scope("kick", 8))]) == \
        ["baseline", "coef +4 (generated)", "coef +4 (kick:8)"]


def test_plan_gives_each_row_its_own_direction(bundled, mixed_rows):
    plan = plan_run(bundled, _settings(mixed_rows))
    recon, conf = (r.vector for r in mixed_rows)
    assert plan.layers == [15, 16, 17, 18, 19] and plan.coefs == [0.0, 4.0, -6.0]
    assert [str(s) if s else None for s in plan.scopes] == [None, "generated", "all"]
    for layer in plan.layers:
        matrix = plan.directions[layer]
        assert matrix.shape == (3, bundled.hidden_size)
        assert not matrix[0].any(), "the baseline is never steered"
        want_recon = recon.directions[layer] if layer in RECON_LAYERS else torch.zeros(bundled.hidden_size)
        want_conf = conf.directions[layer] if layer in CONF_LAYERS else torch.zeros(bundled.hidden_size)
        assert torch.equal(matrix[1], want_recon) and torch.equal(matrix[2], want_conf)


def test_a_bad_row_is_named(bundled, presets):
    small = SteeringVector({16: torch.ones(64)}, name="small.safetensors")
    rows = (SteeredRow(presets["confidence"], -6.0, CONF_LAYERS), SteeredRow(small, 2.0))
    with pytest.raises(UserError, match=r"^row 2 \(small \+2\): vector small.safetensors has hidden size 64 "
                                        r"but the model has 576"):
        plan_run(bundled, _settings(rows))
    few = random_vector(bundled, [3], seed=1)
    with pytest.raises(UserError, match=r"^row 1 \(random \+2\): layer 16 is not in the vector \(it has layers 3\)"):
        plan_run(bundled, _settings([SteeredRow(few, 2.0, (16,)), SteeredRow(presets["confidence"], -6.0)]))


@pytest.mark.parametrize("scope", ["think", "answer"])
def test_thinking_scopes_need_a_thinking_model(bundled, presets, scope):
    rows = (SteeredRow(presets["confidence"], -6.0, CONF_LAYERS),
            SteeredRow(presets["reconsideration"], 4.0, RECON_LAYERS, Scope.parse(scope)))
    with pytest.raises(UserError, match=f"scope '{scope}' needs a model with a thinking block; smollm2-135m has none"):
        plan_run(bundled, _settings(rows))


def test_think_and_answer_rows_share_a_batch_on_a_thinking_model(tiny):
    """On a model with a thinking block, a think-scoped row and an answer-scoped row with different vectors
    each decode as they would alone."""
    lm = tiny["llama"]
    think = SteeredRow(random_vector(lm, [1], scale=4.0, seed=1), 3.0, scope=Scope("think"))
    answer = SteeredRow(random_vector(lm, [2], scale=4.0, seed=2), -3.0, scope=Scope("answer"))

    def go(rows):
        return collect(lm, RunSettings("Is nine a prime number?", rows=rows, max_new_tokens=16, ignore_eos=True,
                                       probe_every=4))

    _, _, probes, done = go((think, answer))
    for row, alone in ((1, go((think,))), (2, go((answer,)))):
        assert done.rows[row].token_ids == alone[3].rows[1].token_ids
        _assert_same_readings(_readings(probes, row), _readings(alone[2], 1))
    assert done.rows[1].token_ids != done.rows[0].token_ids, "the think-scoped row must actually be steered"
