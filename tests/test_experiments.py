"""Sweeps and where-it-went-wrong analysis: answer extraction, generated question sets, a real sweep."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.errors import UserError
from steer_ui.experiments.analysis import analyze, split_steps
from steer_ui.experiments.grading import is_correct, last_boxed, read_answer
from steer_ui.experiments.paired import wilson
from steer_ui.experiments.questions import (
    Question,
    kind_of,
    load_questions,
    read_questions_jsonl,
    word_problems,
    yesno_questions,
)
from steer_ui.experiments.sweep import SweepConfig, run_sweep
from steer_ui.log.store import Store
from steer_ui.vectors.files import load_vector
from steer_ui.vectors.presets import preset_vector_path
from steer_ui.vectors.vector import SteeringVector

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, kind, want, how", [
    ("No, 91 is not prime: 91 = 7 x 13.", "yesno", "No", "line"),
    ("Let me check 91 = 7 x 13.\n\nNo. It is not prime.", "yesno", "No", "line"),
    ("Yes, at first glance.\nWait.\nNo, 91 = 7 x 13.", "yesno", "No", "line"),
    ("Yes or no? Let me check. 91 = 7 x 13, so the answer is No.", "yesno", "No", "phrase"),
    ("**Answer:** Yes", "yesno", "Yes", "phrase"),
    ("Maybe yes at first... the final answer: \\boxed{No}", "yesno", "No", "boxed"),
    ("<think>Is it yes? Could be.</think>\n\nThe answer is no.", "yesno", "No", "phrase"),
    ("I cannot tell.", "yesno", None, "none"),
    ("To answer this we add 5 and 3, which gives 8. The answer is 8.", "number", "8", "phrase"),
    ("So the total is \\boxed{1,250} apples.", "number", "1250", "boxed"),
    ("\\boxed{\\frac{3}{4}}", "number", "3/4", "boxed"),
    ("First 12, then 7 more: 19 pages remain.", "number", "19", "last-number"),
    ("The answer is -4.5.", "number", "-9/2", "phrase"),
    ("\\boxed{x^{2} + 1}", "text", "x^{2} + 1", "boxed"),
    ("no digits here", "number", None, "none"),
])
def test_answer_extraction(text, kind, want, how):
    got = read_answer(text, kind)
    assert (got.value, got.how) == (want, how)


def test_scoring():
    q = Question("q", "?", "1250", "number")
    assert is_correct("1250", q) and is_correct("1,250", q) and not is_correct("125", q) and not is_correct(None, q)
    assert is_correct("3/4", Question("f", "?", "0.75", "number"))
    assert is_correct("No", Question("n", "?", "no", "yesno"))
    assert not is_correct("Yes", Question("n", "?", "No", "yesno"))
    assert is_correct("x^{2}+1", Question("t", "?", "x^{2} + 1", "text"))
    assert last_boxed("\\boxed{a{b}c} and \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None


def _sieve(n: int) -> set[int]:
    flags = [True] * (n + 1)
    flags[0:2] = [False, False]
    for i in range(2, int(n ** 0.5) + 1):
        if flags[i]:
            flags[i * i::i] = [False] * len(flags[i * i::i])
    return {i for i, f in enumerate(flags) if f}


def test_generated_yes_no_answers_are_right_and_balanced():
    primes = _sieve(1000)
    qs = yesno_questions(80)
    assert len({q.question for q in qs}) >= 70
    assert sum(q.answer == "Yes" for q in qs) == 40  # balanced
    for q in qs:  # recompute each answer from the question's own text
        nums = list(map(int, re.findall(r"\d+", q.question)))
        if "prime" in q.question:
            truth = nums[0] in primes
        elif "divisible" in q.question:
            truth = nums[0] % nums[1] == 0
        elif "greater" in q.question:
            truth = nums[0] * nums[1] > nums[2]
        else:
            truth = nums[0] + nums[1] == nums[2]
        assert q.answer == ("Yes" if truth else "No"), q.question


def test_generated_word_problems_are_right():
    for q in word_problems(40):
        n = list(map(int, re.findall(r"\d+", q.question)))
        if q.question.startswith("Sam"):
            want = n[0] + n[1] * n[2] - n[3]
        elif "train" in q.question:
            want = n[0] * n[1]
        elif "pen" in q.question:
            want = n[2] - n[0] * n[1]
        else:
            want = n[0] - n[1] * n[2]
        assert int(q.answer) == want, q.question


def test_question_files_and_names(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "Is 4 even?", "answer": "Yes"}\n\n{"id": "m1", "question": "2+2?", "answer": 4}\n')
    qs = read_questions_jsonl(f)
    assert [(q.id, q.kind, q.answer) for q in qs] == [("1", "yesno", "Yes"), ("m1", "number", "4")]
    assert len(load_questions("yesno:7")) == 7 and len(load_questions("wordproblems")) == 50
    for bad, message in [('{"question": "x"}', "expected"), ("not json", "not valid JSON"),
                         ('{"question": "", "answer": "1"}', "empty"), ("", "no questions")]:
        f.write_text(bad + "\n")
        with pytest.raises(UserError, match=message):
            read_questions_jsonl(f)
    with pytest.raises(UserError, match="no such questions file"):
        load_questions("nope.jsonl")
    with pytest.raises(UserError, match="size"):
        load_questions("yesno:many")


def test_wilson_interval():
    lo, hi = wilson(9, 10)
    assert lo == pytest.approx(0.596, abs=1e-3) and hi == pytest.approx(0.982, abs=1e-3)
    assert wilson(0, 0) == (0.0, 0.0)


def test_steps_flags_and_emergence():
    pieces = ["First", " step", ".\n", "\n", "Second", ".\n", "Third", " one", ".\n", "End"]
    assert split_steps(pieces) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    # Readings after 3, 6, 9 and 10 tokens: leaning yes, then a sharp drop, then a flip, then committed.
    result = analyze(pieces, [0, 3, 6, 9, 10], [0.5, 3.0, 0.4, -1.0, -2.5], [0.9] * 5, [True] * 5,
                     commit=2.0, drop=2.0)
    assert [s.flag for s in result.steps] == [None, "drop", "flip", None]
    assert result.first_flag == 1 and result.emergence == 0
    assert [s.reading_step for s in result.steps] == [3, 6, 9, 10]
    # Sparse probes: the latest reading before each boundary; unreliable readings flag nothing.
    sparse = analyze(pieces, [0, 4, 8], [1.0, -1.0, -3.0], [0.9, 0.01, 0.9], [True, False, True])
    assert [s.reading_step for s in sparse.steps] == [0, 4, 8, 8] and sparse.steps[1].flag is None
    assert sparse.emergence == 2


@pytest.fixture(scope="module")
def sweep_setup(bundled, tmp_path_factory):
    vec = load_vector(preset_vector_path("reconsideration", "smollm2-135m"))
    qs = yesno_questions(2) + word_problems(1)
    # The probe at every token (as the CLI's sweep does): the last reading is the forced answer after the chain.
    cfg = SweepConfig(questions=qs, coefs=(-4.0, 0.0, 4.0),
                      template=RunSettings("", max_new_tokens=12, probe_every=1), vector=vec, layers=(15, 16, 17, 18))
    root = tmp_path_factory.mktemp("sweep")
    return cfg, root, Store(str(root / "log.sqlite"))


def test_a_small_sweep_writes_everything_and_logs_every_run(bundled, sweep_setup):
    cfg, root, store = sweep_setup
    result = run_sweep(bundled, cfg, root / "out", store)
    assert result.ran == 3
    names = {p.name for p in result.files}
    assert {"results.csv", "summary.csv", "summary.txt", "figure.html", "sweep.json"} <= names
    rows = list(csv.DictReader((root / "out" / "results.csv").open()))
    assert len(rows) == 3 * 3
    assert {(r["question_id"], float(r["coef"])) for r in rows} == {(q.id, c) for q in cfg.questions
                                                                    for c in cfg.coefs}
    for r in rows:  # each row's score is its own extraction, and its run is in the log with that text
        q = next(q for q in cfg.questions if q.id == r["question_id"])
        assert int(r["correct"]) == is_correct(read_answer(r["text"], q.kind).value, q)
        stream = store.get_run(r["run_id"]).streams
        assert r["text"] in [s.text for s in stream]
        if q.kind == "yesno":
            assert r["final_logodds"] != ""
    assert len(store.list_runs()) == 3
    summary = {s.coef: s for s in result.summary}
    assert summary[0.0].n == 3 and 0 <= summary[4.0].accuracy <= 1
    assert summary[0.0].mean_tokens == pytest.approx(
        sum(int(r["cot_tokens"]) for r in rows if float(r["coef"]) == 0) / 3)


def test_a_sweep_resumes_where_it_stopped(bundled, sweep_setup, tmp_path):
    cfg, root, store = sweep_setup
    out = root / "out"
    run_sweep(bundled, cfg, out, store)  # done already when the test above ran: then nothing runs
    before = (out / "results.csv").read_text()
    again = run_sweep(bundled, cfg, out, store)
    assert again.ran == 0 and (out / "results.csv").read_text() == before
    assert any(n.startswith("every result was already in") and "ran nothing" in n for n in again.notes)
    # An interruption after the first question: only the rest is run, and the results are the same.
    body = list(csv.DictReader(io.StringIO(before, newline="")))
    keep = [i for i, r in enumerate(body) if r["question_id"] == cfg.questions[0].id]
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "sweep.json").write_text((out / "sweep.json").read_text())
    with (partial / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(body[0]))
        w.writeheader()
        w.writerows(body[i] for i in keep)
    resumed = run_sweep(bundled, cfg, partial, None)
    assert resumed.ran == 2
    assert "resumed: 1 of 3 question runs were already in results.csv; ran the other 2" in resumed.notes
    strip = lambda rows: sorted((r["question_id"], r["coef"], r["text"], r["correct"]) for r in rows)  # noqa: E731
    assert strip(csv.DictReader((partial / "results.csv").open())) == strip(body)
    # A folder begun before final_p_gold existed resumes under its own header: no shifted columns.
    older = tmp_path / "older"
    older.mkdir()
    (older / "sweep.json").write_text((out / "sweep.json").read_text())
    old_fields = [f for f in body[0] if f != "final_p_gold"]
    with (older / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(body[i] for i in keep)
    run_sweep(bundled, cfg, older, None)
    assert strip(csv.DictReader((older / "results.csv").open())) == strip(body)
    assert next(csv.reader((older / "results.csv").open())) == old_fields
    # A different sweep into the same folder is refused, and nothing is written.
    other = SweepConfig(questions=cfg.questions, coefs=(0.0, 8.0), template=cfg.template, vector=cfg.vector,
                        layers=cfg.layers)
    with pytest.raises(UserError, match="different sweep.*coefs"):
        run_sweep(bundled, other, out, store)
    # So is one whose runs differ in a knob of the template (its prompt is not part of it).
    with pytest.raises(UserError, match=r"different sweep \(differs in: template\)"):
        run_sweep(bundled, replace(cfg, template=replace(cfg.template, max_new_tokens=13)), out, store)
    assert replace(cfg, template=replace(cfg.template, prompt="ignored")).fingerprint() == cfg.fingerprint()
    assert (out / "results.csv").read_text() == before


@pytest.mark.parametrize("cfg_kwargs, message", [
    ({"coefs": ()}, "at least one arm"),
    ({"coefs": (0.0, 4.0), "vector": None}, "need a steering vector"),
    ({"coefs": (0.0, float("nan"))}, "finite"),
    ({"samples": 3}, "temperature"),
    ({"coefs": (1.0, 1.0)}, "repeat"),
    ({"template": RunSettings("", top_p=0.0)}, "top-p must be in"),
    ({"template": RunSettings("", max_new_tokens=0)}, "max new tokens must be >= 1"),
    ({"template": RunSettings("", rows=steered(SteeringVector({0: torch.ones(576)}), (1.0,)))},
     "rows with their own vectors"),
])
def test_sweep_bad_settings(bundled, sweep_setup, tmp_path, cfg_kwargs, message):
    cfg, _, _ = sweep_setup
    kwargs = {"questions": cfg.questions, "coefs": (0.0,), "template": RunSettings("", max_new_tokens=4),
              "vector": cfg.vector, **cfg_kwargs}
    with pytest.raises(UserError, match=message):
        run_sweep(bundled, SweepConfig(**kwargs), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def cli(*args: str, env_db: Path) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "steer_ui", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "STEER_UI_DB": str(env_db)})


def test_sweep_options_become_the_config(tmp_path):
    from steer_ui.cli import build_parser
    from steer_ui.cli.experiment_commands import sweep_config
    from steer_ui.cli.options import join_negative_lists
    from steer_ui.engine.scope import Scope

    def config(*args: str) -> SweepConfig:
        argv = ["sweep", "--questions", "yesno:3", "--out", str(tmp_path / "o"), *args]
        return sweep_config(build_parser().parse_args(join_negative_lists(argv)))

    cfg = config("--vector", "reconsideration", "--layers", "15-18", "--scope", "generated", "--coefs", "-4,0,4",
                 "--temperature", "0.5", "--seed", "7", "--system", "Be brief.", "--samples", "2")
    assert cfg.coefs == (-4.0, 0.0, 4.0) and cfg.layers == (15, 16, 17, 18) and cfg.scope == Scope("generated")
    assert cfg.vector.name == "reconsideration" and cfg.samples == 2 and len(cfg.questions) == 3
    t = cfg.template
    assert t.rows == () and (t.temperature, t.seed, t.system_prompt) == (0.5, 7, "Be brief.")
    cfg.validate()
    # Defaults: the knobs' own (128 new tokens), except the probe, read at every token in a sweep.
    plain = config("--coefs", "0")
    assert plain.vector is None and plain.layers is None and plain.scope == Scope()
    assert plain.template.max_new_tokens == 128 and plain.template.probe_every == 1
    assert plain.template.to_dict() == {**RunSettings("(each question)", probe_every=1).to_dict()}
    with pytest.raises(UserError, match="not a number"):
        config("--coefs", "4,x")


def test_sweep_and_analyze_from_the_command_line(tmp_path):
    db = tmp_path / "log.sqlite"
    out = tmp_path / "sweep"
    proc = cli("sweep", "--questions", "yesno:2", "--vector", "reconsideration", "--layers", "15-18",
               "--coefs", "-4,0", "--max-new-tokens", "10", "--out", str(out), env_db=db)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "forced acc" in proc.stdout
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 4
    # stderr is a pipe here, not a terminal: progress comes as plain lines, not a hidden bar.
    progress = [line for line in proc.stderr.splitlines() if line.startswith("2 questions x 2 arms: ")]
    assert [line.split(": ")[1].split(",")[0] for line in progress] == ["0/2 runs", "1/2 runs", "2/2 runs"]
    again = cli("sweep", "--questions", "yesno:2", "--vector", "reconsideration", "--layers", "15-18",
                "--coefs", "-4,0", "--max-new-tokens", "10", "--out", str(out), "--jsonl", env_db=db)
    assert again.returncode == 0 and "note: every result was already in" in again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines()]  # --jsonl: progress, then the summary
    assert "ran nothing" in again.stderr and events[0] == {"event": "progress", "done": 2, "total": 2}
    assert events[-1]["event"] == "summary" and [a["arm"] for a in events[-1]["arms"]] == ["coef -4", "baseline"]
    # The run knobs go into the sweep's template: the given ones, and the sweep's own probe default (every token).
    template = json.loads((out / "sweep.json").read_text())["settings"]["template"]
    assert template["max_new_tokens"] == 10 and template["probe_every"] == 1
    run_id = list(csv.DictReader((out / "results.csv").open()))[0]["run_id"]
    proc = cli("analyze", run_id, "--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.html"),
               env_db=db)
    assert proc.returncode == 0, proc.stderr
    assert "steps | first flagged step" in proc.stdout
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["run"] == run_id and data["rows"][0]["steps"]
    assert (tmp_path / "a.html").stat().st_size > 100_000
    for args, message in [(("sweep", "--questions", "missing.jsonl", "--coefs", "0", "--out", str(tmp_path / "x")),
                           "no such questions file"),
                          (("analyze", run_id, "--rollouts", "2"), "needs --answer")]:
        proc = cli(*args, env_db=db)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_rollouts_score_continuations_from_each_step(bundled):
    from steer_ui.experiments.analysis import rollout_values

    q = Question("q", "Is 91 a prime number?", "No", "yesno")
    result = analyze(["Let", " me", " think", ".\n", "No", "."], [0, 4, 6], [0.1, -0.5, -2.5], [0.9] * 3,
                     [True] * 3)
    calls = []
    valued = rollout_values(bundled, "Q: Is 91 a prime number? Answer Yes or No.\nA:", result, q, 2, 4,
                            RunSettings("x"), None, progress=lambda d, t: calls.append((d, t)))
    assert [s.index for s in valued.steps] == [0, 1] and calls == [(1, 2), (2, 2)]
    # The second step's prefix already says "No.": every continuation from it is scored correct.
    assert valued.steps[1].value == 1.0 and 0.0 <= valued.steps[0].value <= 1.0


# --- MATH-grade grading, MATH500 files, P(gold) in sweeps and analysis --------------------------------
@pytest.mark.parametrize("gold, answer, right", [
    ("\\frac{3}{4}", "0.75", True), ("(2,-1)", "(2, -1)", True), ("3\\sqrt{2}", "\\sqrt{18}", True),
    ("\\frac{5}{6}", "5/6", True), ("\\text{(C)}", "C", True), ("391", "391.0", True),
    ("391", "392", False), ("\\frac{3}{4}", "\\frac{4}{3}", False), ("(2,-1)", "(-1,2)", False),
])
def test_math_answers_are_graded_by_equivalence(gold, answer, right):
    question = Question("q", "?", gold, kind_of(gold))
    text = f"Some working.\n\nThe final answer is $\\boxed{{{answer}}}$."
    got = read_answer(text, question.kind)
    assert got.how == "boxed" and is_correct(got.value, question) is right


def test_grading_in_a_worker_thread_survives_a_pathological_answer():
    """Off the main thread math-verify cannot time itself out: a child process does it, and is replaced."""
    import threading

    from steer_ui.experiments.grading import equivalent

    out = {}

    def work():
        out["tower"] = equivalent("2", "2^{2^{2^{2^{99}}}}")
        out["radical"] = equivalent("3\\sqrt{2}", "\\sqrt{18}")
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(120)  # a hang guard only: VERIFY_TIMEOUT_S bounds the tower
    assert out == {"tower": False, "radical": True}


def test_math500_shaped_files_run_as_they_are():
    qs = load_questions(str(ROOT / "assets" / "examples" / "math-sample.jsonl"))
    assert len(qs) == 8 and qs[0].id == "sample/prealgebra/0.json" and qs[0].question == "What is $17 \\times 23$?"
    assert {q.kind for q in qs} == {"number", "text"}
    assert "\\boxed{}" in qs[1].prompt()


def test_a_math_sweep_reads_p_gold_and_grades_with_math_verify(bundled, tmp_path):
    qs = load_questions(str(ROOT / "assets" / "examples" / "math-sample.jsonl"))[:2]
    cfg = SweepConfig(questions=qs, coefs=(0.0,), template=RunSettings("", max_new_tokens=16, probe_every=4))
    store = Store(str(tmp_path / "log.sqlite"))
    result = run_sweep(bundled, cfg, tmp_path / "out", store)
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    for r, q in zip(rows, qs):
        run = store.get_run(r["run_id"])
        assert run.settings["probe_gold"] == q.answer and run.settings["probe_every"] == 4
        final = [p for p in store.probe_points(r["run_id"]) if p.final]
        assert len(final) == 1 and final[0].step == int(r["cot_tokens"])
        assert float(r["final_p_gold"]) == pytest.approx(math.exp(final[0].logprobs[q.answer]), abs=1e-4)
        assert int(r["correct"]) == is_correct(read_answer(r["text"], q.kind).value, q)
    summary = result.summary[0]
    assert summary.mean_final_p_gold == pytest.approx(sum(float(r["final_p_gold"]) for r in rows) / 2, abs=1e-4)
    assert "final P(gold)" in (tmp_path / "out" / "summary.txt").read_text()


def test_which_gold_answers_a_sweep_probes(bundled):
    from steer_ui.experiments.sweep import gold_readable

    assert gold_readable(bundled, "\\frac{3}{4}") and gold_readable(bundled, "\\frac{3}{4}", 32)
    # 30 digits: 59 positions at every reading; fine for the probe, over a server's cap of 32.
    assert gold_readable(bundled, "1" * 30) and not gold_readable(bundled, "1" * 30, 32)
    assert not gold_readable(bundled, "1" * 40)  # 40 tokens: over the probe's 32 per form
    assert not gold_readable(bundled, "x" * 65)  # over 64 characters
    # A yes/no question is read as Yes against No whatever the template's choices (its forced answer).
    cfg = SweepConfig(questions=yesno_questions(1), coefs=(0.0,),
                      template=RunSettings("", probe_choices=("391", "392"), probe_gold="7"))
    s = cfg.run_settings(cfg.questions[0], 0, cfg.arms)
    assert (s.probe_choices, s.probe_gold) == (("Yes", "No"), None)


def test_p_gold_collapse_and_agreement_with_rollouts():
    from steer_ui.experiments.analysis import agreement

    pieces = ["a", "\n", "b", "\n", "c", "\n", "d", "\n"]
    series = analyze(pieces, [2, 4, 6, 8], [1.0, 2.0, -1.0, -2.0], [1.0] * 4, [True] * 4,
                     p_gold=[0.4, 0.7, 0.3, 0.2])
    assert [s.p_gold for s in series.steps] == [0.4, 0.7, 0.3, 0.2]
    assert series.collapse == 2  # 0.3 < half of the peak 0.7
    steps = [replace(s, value=v) for s, v in zip(series.steps, [0.5, 1.0, 0.25, 0.0])]
    agree = agreement(replace(series, steps=steps))
    import numpy as np

    assert agree.n == 4 and agree.pearson == pytest.approx(np.corrcoef([0.4, 0.7, 0.3, 0.2], [0.5, 1, 0.25, 0])[0, 1])
    assert agree.mean_abs_diff == pytest.approx((0.1 + 0.3 + 0.05 + 0.2) / 4)
    # No collapse while P(gold) only rises, or falls by less than 0.1.
    assert analyze(pieces, [2, 4, 6, 8], [0.0] * 4, [1.0] * 4, [True] * 4, p_gold=[0.1, 0.12, 0.05, 0.3]).collapse \
        is None


def test_generate_with_a_gold_answer_and_analyze_it_from_the_command_line(tmp_path):
    db = tmp_path / "log.sqlite"
    proc = cli("generate", "--prompt", "What is 17 times 23? Think step by step.", "--gold", "391",
               "--probe-choices", "392,17", "--probe-every", "4", "--max-new-tokens", "24", "--jsonl", env_db=db)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    start = events[0]
    assert start["probe"]["gold"] == "391"
    assert [c["label"] for c in start["probe"]["choices"]] == ["391", "392", "17"]
    assert start["probe"]["choices"][0]["variants"] == [[35, 41, 33], [216, 35, 41, 33]]
    probes = [e for e in events if e["event"] == "probe"]
    assert [e for e in probes if e.get("final")] == [probes[-1]]
    run_id = Store(str(db)).list_runs()[0].id
    proc = cli("analyze", run_id, "--rollouts", "2", "--rollout-tokens", "6", "--json", str(tmp_path / "a.json"),
               env_db=db)
    assert proc.returncode == 0, proc.stderr
    assert "P(gold) collapses at step" in proc.stdout and "P(gold) vs rollout value over" in proc.stdout
    row = json.loads((tmp_path / "a.json").read_text())["rows"][0]
    assert all(s["p_gold"] is not None for s in row["steps"]) and row["agreement"]["n"] == len(row["steps"])
    for args, message in [(("generate", "--prompt", "x", "--gold", "1" * 65), "gold answer must be 1 to 64"),
                          (("generate", "--prompt", "x", "--probe-choices", "a,b,c,d,e,f,g,h,i"), "at most 8 choices"),
                          (("generate", "--prompt", "x", "--probe-choices", "Paris, Paris"), "must differ")]:
        proc = cli(*args, env_db=db)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
