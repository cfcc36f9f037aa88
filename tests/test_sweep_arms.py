"""Sweeps over arms (baseline, budget rows, vector rows) with paired statistics, checked against scipy on the
sweep's own results.csv."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from steer_ui.engine.run_settings import RunSettings
from steer_ui.engine.scope import Scope
from steer_ui.experiments.arms import arms_from_specs
from steer_ui.experiments.paired import paired, wilson
from steer_ui.experiments.questions import word_problems, yesno_questions
from steer_ui.experiments.sweep import SweepConfig, run_sweep
from steer_ui.vectors.files import load_vector
from steer_ui.vectors.presets import preset_vector_path

ARMS = ["baseline", "budget:min=20", "reconsideration=4@15-18"]


@pytest.fixture(scope="module")
def arms_sweep(bundled, tmp_path_factory):
    vec = load_vector(preset_vector_path("reconsideration", "smollm2-135m"))
    arms = arms_from_specs(ARMS, lambda name: vec, None, Scope())
    cfg = SweepConfig(questions=yesno_questions(3) + word_problems(1), coefs=(),
                      template=RunSettings("", max_new_tokens=24, probe_every=4), extra_arms=tuple(arms))
    out = tmp_path_factory.mktemp("arms") / "out"
    return cfg, out, run_sweep(bundled, cfg, out)


def test_every_question_runs_every_arm_once_with_its_dynamics(arms_sweep):
    cfg, out, result = arms_sweep
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["question_id"], r["arm"]) for r in rows) == sorted((q.id, a) for q in cfg.questions for a in ARMS)
    for r in rows:
        assert int(r["think_tokens"]) == int(r["cot_tokens"])  # no thinking block: every token counts
        assert int(r["settled_at"]) <= int(r["cot_tokens"]) and int(r["flips"]) >= 0
        assert (r["coef"] == "") == (r["arm"] == "budget:min=20")
    budget = [r for r in rows if r["arm"] == "budget:min=20"]
    assert all(int(r["cot_tokens"]) >= 20 for r in budget)  # no end taken before 20 tokens
    assert {"summary.json", "pareto.html", "figure.html"} <= {p.name for p in result.files}


def test_paired_statistics_match_scipy_on_the_sweeps_own_csv(arms_sweep):
    cfg, out, _ = arms_sweep
    rows = list(csv.DictReader((out / "results.csv").open()))
    summary = {a["arm"]: a for a in json.loads((out / "summary.json").read_text())["arms"]}
    base = {(r["question_id"], r["sample"]): r for r in rows if r["arm"] == "baseline"}
    assert summary["baseline"]["vs_baseline"] is None
    for arm in ARMS[1:]:
        mine = [r for r in rows if r["arm"] == arm]
        pairs = [(int(r["correct"]), int(base[(r["question_id"], r["sample"])]["correct"])) for r in mine]
        only_arm, only_base = sum(a > b for a, b in pairs), sum(b > a for a, b in pairs)
        vs = summary[arm]["vs_baseline"]
        assert (vs["only_arm"], vs["only_baseline"]) == (only_arm, only_base)
        assert vs["both"] + vs["neither"] + only_arm + only_base == len(mine)
        expected_p = stats.binomtest(only_arm, only_arm + only_base).pvalue if only_arm + only_base else 1.0
        assert vs["p_value"] == pytest.approx(expected_p)
        diffs = [int(r["cot_tokens"]) - int(base[(r["question_id"], r["sample"])]["cot_tokens"]) for r in mine]
        assert vs["token_diff"] == pytest.approx(np.mean(diffs))
        lo, hi = vs["token_diff_ci"]
        assert lo <= np.mean(diffs) <= hi and min(diffs) <= lo and hi <= max(diffs)
        k = sum(int(r["correct"]) for r in mine)
        ci = stats.binomtest(k, len(mine)).proportion_ci(method="wilson")
        assert summary[arm]["ci"] == pytest.approx([ci.low, ci.high])


def test_paired_statistics_on_known_pairs():
    # 7 questions only the arm got right, 1 only the baseline: exact McNemar = two-sided binomial on 8 pairs.
    arm = [True] * 7 + [False] + [True] * 2 + [False] * 2
    base = [False] * 7 + [True] + [True] * 2 + [False] * 2
    p = paired(arm, base, list(range(12)), [0] * 12)
    assert (p.only_arm, p.only_baseline, p.both, p.neither) == (7, 1, 2, 2)
    assert p.p_value == pytest.approx(0.0703125)  # 2 * P(X >= 7 | n=8, 1/2) = 2 * 9/256
    assert p.token_diff == pytest.approx(5.5) and p.token_diff_ci[0] < 5.5 < p.token_diff_ci[1]
    assert paired([True], [True], [3], [3]).p_value == 1.0  # no discordant pairs
    assert wilson(0, 0) == (0.0, 0.0) and wilson(5, 10)[0] == pytest.approx(0.2366, abs=1e-4)


def test_an_arm_gives_the_same_text_whatever_runs_beside_it(bundled, arms_sweep, tmp_path):
    """Greedy: the budget arm alone (with the baseline) gives the text it gave beside the vector arm."""
    cfg, out, _ = arms_sweep
    vec = load_vector(preset_vector_path("reconsideration", "smollm2-135m"))
    alone = SweepConfig(questions=cfg.questions[:2], coefs=(), template=cfg.template,
                        extra_arms=tuple(arms_from_specs(ARMS[:2], lambda name: vec, None, Scope())))
    run_sweep(bundled, alone, tmp_path / "alone")
    text = {(r["question_id"], r["arm"]): r["text"] for r in csv.DictReader((out / "results.csv").open())}
    for r in csv.DictReader((tmp_path / "alone" / "results.csv").open()):
        assert r["text"] == text[(r["question_id"], r["arm"])]


@pytest.mark.parametrize(("args", "message"), [
    (["--arm", "baseline", "--arm", "budget:min=x"], "budget min='x' in 'budget:min=x' must be a whole number"),
    (["--arm", "baseline", "--arm", "baseline"], "arms repeat: baseline"),
    ([], "give at least one arm"),
])
def test_bad_arms_are_one_line_and_nonzero(args, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "steer_ui", "sweep", "--questions", "yesno:2", "--out",
                        str(tmp_path / "o"), "--no-log", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sweep_over_arms_from_python(bundled, tmp_path):
    import steer_ui
    from steer_ui.api.model import Model

    model = Model(bundled)
    result = steer_ui.sweep(model, "yesno:2", arms=["baseline", "budget:min=16"], max_new_tokens=20,
                            out=tmp_path / "py")
    assert list(result.summary["arm"]) == ["baseline", "budget:min=16"]
    vs = result.summary["vs_baseline"][1]
    assert vs["both"] + vs["neither"] + vs["only_arm"] + vs["only_baseline"] == 2
    assert set(result.frame["arm"]) == {"baseline", "budget:min=16"}
    pareto = result.pareto()
    assert [t.name for t in pareto.data] == ["baseline", "budget:min=16"]
    assert [t.x[0] for t in pareto.data] == pytest.approx(
        list(result.frame.groupby("arm", sort=False)["cot_tokens"].mean()))
