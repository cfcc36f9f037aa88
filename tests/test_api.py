"""The Python API (``import steer_ui``) on the bundled model: what a notebook does, checked against the
engine's own events, a real SQLite log and a real Jupyter kernel running the example notebook."""

from __future__ import annotations

import _thread
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import collect

import steer_ui
from steer_ui.api.model import Model
from steer_ui.engine.knobs import KNOBS, STEERING
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.engine.scope import Scope
from steer_ui.views.chart import figure as chart_figure
from steer_ui.views.run_view import RunView

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Is 91 a prime number? Answer Yes or No."


@pytest.fixture(scope="module")
def model(bundled) -> Model:
    return Model(bundled)


@pytest.fixture(scope="module")
def run(model):
    vec = model.vector("reconsideration")
    return model.compare(PROMPT, rows=[(vec, 4), (vec, 8)], layers="15-18", probe_every=1, max_new_tokens=24)


def test_the_public_names_resolve_and_import_nothing_heavy():
    for name in steer_ui.__all__:
        assert getattr(steer_ui, name) is not None, name
    code = "import sys, steer_ui; print('torch' in sys.modules, 'gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_compare_is_the_engine_run_of_the_same_settings(model, run, bundled):
    vec = model.vector("reconsideration")
    settings = RunSettings(PROMPT, rows=steered(vec, (4.0, 8.0), (15, 16, 17, 18)), probe_every=1, max_new_tokens=24)
    _, tokens, probes, done = collect(bundled, settings)
    assert [r.text for r in run.rows] == [r.text for r in done.rows]
    assert [r.token_ids for r in run.rows] == [r.token_ids for r in done.rows]
    assert [r.finish_reason for r in run.rows] == [r.finish_reason for r in done.rows]
    assert [r.label for r in run.rows] == ["baseline", "coef +4", "coef +8"] and run.baseline.row == 0
    # The tidy frame: one line per token with the reading taken just before it, and the final reading.
    frame = run.to_pandas()
    assert list(frame.columns) == ["row", "label", "coef", "step", "token_id", "token", "logodds", "mass", "reliable",
                                   "forced", "stop_logprob", "intervention", "flips", "settled_at"]
    assert not frame.forced.any() and frame.intervention.isna().all()  # no budget rows here
    token_lines = frame.dropna(subset=["token_id"])
    assert [(t.row, t.step, t.token_id, t.text) for t in tokens] == sorted(
        zip(token_lines.row, token_lines.step, token_lines.token_id, token_lines.token), key=lambda x: (x[1], x[0]))
    read = frame.dropna(subset=["logodds"])
    # One line per reading; a final reading that repeats the one already at the row's last token shares its line.
    assert len(read) == len({(p.row, p.step) for p in probes})
    by_key = {(p.row, p.step): p for p in probes}
    for line in read.itertuples():
        p = by_key[(line.row, line.step)]
        assert line.logodds == pytest.approx(p.logodds, abs=1e-3) and line.mass == pytest.approx(p.mass, abs=1e-3)
        assert line.reliable == p.reliable
    # Every row has its final reading on a line of its own, after its last token, without a token.
    for r in run.rows:
        last = frame[(frame.row == r.row) & (frame.step == len(r.token_ids))]
        assert len(last) == 1 and len(r.token_ids) in r.probe_steps
        assert last.token_id.isna().all() and last.logodds.notna().all()
    # First divergence as the dashboard computes it.
    assert all(r.first_divergence is None or 0 <= r.first_divergence < len(r.token_ids) for r in run.rows[1:])


def test_the_figure_is_the_dashboard_chart(run):
    fig = run.figure()
    view = RunView("x")
    for event in run.events:
        view.apply(event)
    expected = chart_figure(view)["data"]
    assert len(fig.data) == len(expected) == 3 * len(run)  # per row: trusted readings, every reading, mass
    for trace, want in zip(fig.data, expected):
        assert trace.name == want["name"] and list(trace.x) == want["x"]
        assert [None if v is None else round(v, 3) for v in trace.y] == want["y"]


def test_display_escapes_what_the_model_and_the_user_wrote(model):
    run = model.compare("<script>alert(1)</script> Say <b>", max_new_tokens=6, probe_every=2)
    html = run._repr_html_()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<span title='step") == len(run.baseline.token_ids)
    assert "plotly" in html  # the chart comes along


def test_rows_in_every_form_give_the_same_settings(model, tmp_path):
    vec = model.vector("confidence")
    path = steer_ui.save_vector(vec, tmp_path / "confidence.safetensors")
    forms = [
        model.settings("q", rows=[(vec, -6, "12-15", "generated"), (vec, 4)], layers="16-19"),
        model.settings("q", rows=["confidence=-6@12-15/generated", "confidence=4"], layers=[16, 17, 18, 19]),
        model.settings("q", rows=[(str(path), -6, (12, 13, 14, 15), "generated"), ("confidence", 4.0)],
                       layers="16-19"),
    ]
    for s in forms:
        assert [(r.coef, r.layers, str(r.scope)) for r in s.rows] == [
            (-6.0, (12, 13, 14, 15), str(Scope.parse("generated"))), (4.0, (16, 17, 18, 19), str(Scope()))]
        assert all(r.vector.content_hash() == vec.content_hash() for r in s.rows[1:])
    both = model.settings("q", vector=vec, coefs=[4, 8], rows=[(vec, -2)], layers="16-19", max_new_tokens=9)
    assert [r.coef for r in both.rows] == [4.0, 8.0, -2.0] and both.max_new_tokens == 9
    # Every knob but the steering ones is a keyword of compare, documented from its one declaration.
    for knob in KNOBS:
        if knob.name not in ("prompt", *STEERING):
            assert f"{knob.name} = " in Model.compare.__doc__


@pytest.mark.parametrize("call, message", [
    (lambda m: m.compare("q", max_new_tokens=0), "max new tokens must be >= 1, got 0"),
    (lambda m: m.compare("q", max_new_token=3), "unknown setting 'max_new_token'; the settings are: system_prompt"),
    (lambda m: m.compare("q", rows=[("confidence",)]), "a row is (vector, coef)"),
    (lambda m: m.compare("q", rows=[("confidence", "lots")]), "coefficient 'lots' is not a number"),
    (lambda m: m.compare("q", rows=[(3, 1)]), "a vector must be a SteeringVector, a preset name or a file, got int"),
    (lambda m: m.compare("q", coefs=[4]), "coefs need a vector"),
    (lambda m: m.compare("q", rows=[("confidence", 4, "0-99")]), "layer 30 is out of range: the model has 30 layers"),
    (lambda m: m.vector("no-such-vector"), "no-such-vector"),
    (lambda m: m.compute_vector([("a", "b")]), "need at least 2 pairs"),
    (lambda m: steer_ui.open_run("nope", db=":memory:"), "no run 'nope'"),
])
def test_mistakes_raise_user_error_with_the_cli_message(model, call, message):
    with pytest.raises(steer_ui.UserError) as err:
        call(model)
    assert message in str(err.value)


def test_save_and_open_round_trip_through_a_real_log(run, model, tmp_path):
    db = str(tmp_path / "log.sqlite")
    run_id = run.save(db=db)
    assert run.save(db=db) == run_id  # saved once
    back = steer_ui.open_run(run_id, db=db, model=model)
    assert back.id == run_id and [r.text for r in back.rows] == [r.text for r in run.rows]
    assert back.to_pandas().equals(run.to_pandas())
    assert back.settings.to_dict() == run.settings.to_dict()
    assert [r.vector.content_hash() for r in back.settings.rows] == [r.vector.content_hash() for r in run.settings.rows]
    from steer_ui.log.store import Store

    stored = Store(db).get_run(run_id)
    assert stored.status == "finished" and stored.prompt_text.endswith(PROMPT + "<|im_end|>\n<|im_start|>assistant\n")
    text_only = steer_ui.open_run(run_id, db=db)  # no tokenizer: each row's text arrives whole
    assert [r.text for r in text_only.rows] == [r.text for r in run.rows]


def test_an_interrupt_stops_within_a_step_and_keeps_the_partial_run(model, tmp_path):
    """Ctrl-C / the notebook's interrupt is a KeyboardInterrupt in the main thread."""
    assert threading.current_thread() is threading.main_thread()
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    try:
        run = model.compare("Count slowly from one to five hundred.", vector="verbosity", coefs=[4],
                            layers="16-19", max_new_tokens=2000, ignore_eos=True, probe_every=0)
    finally:
        timer.cancel()
    assert run.interrupted and {r.finish_reason for r in run.rows} == {"cancelled"}
    assert 0 < len(run.baseline.token_ids) < 2000
    assert len({len(r.token_ids) for r in run.rows}) == 1  # the rows stopped at the same step
    run_id = run.save(db=str(tmp_path / "log.sqlite"))
    from steer_ui.log.store import Store

    assert Store(str(tmp_path / "log.sqlite")).get_run(run_id).status == "cancelled"


def test_sweep_from_python_matches_its_folder_and_resumes(model, tmp_path):
    out, db = tmp_path / "sweep", str(tmp_path / "log.sqlite")
    first = steer_ui.sweep(model, "yesno:2", coefs=[0, 4], vector="confidence", layers="16-19",
                           max_new_tokens=12, out=out, log=True, db=db)
    assert len(first.frame) == 4 and set(first.frame.coef) == {0.0, 4.0}
    assert list(first.summary.coef) == [0.0, 4.0] and list(first.summary.n) == [2, 2]
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and first.out == out
    assert len(first.figure().data) >= 2
    from steer_ui.log.store import Store

    assert len(Store(db).list_runs(limit=100)) == 2  # one run per question (baseline and steered batched)
    again = steer_ui.sweep(model, "yesno:2", coefs=[0, 4], vector="confidence", layers="16-19",
                           max_new_tokens=12, out=out, log=True, db=db)
    assert again.frame.equals(first.frame) and len(Store(db).list_runs(limit=100)) == 2  # nothing re-run
    questions = [{"question": "Is 2 an even number?", "answer": "Yes"}]
    assert steer_ui.sweep(model, questions, coefs=[0], max_new_tokens=4).summary.n.tolist() == [1]
    with pytest.raises(steer_ui.UserError, match="nonzero coefficients need a steering vector"):
        steer_ui.sweep(model, "yesno:1", coefs=[4])


def test_the_example_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "examples" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("STEER_UI_DB", str(tmp_path / "notebook.sqlite"))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    runs = [h for h in html if "steer-ui-run" in h]
    assert len(runs) == 2  # the compared run and the live one (its cell updated in place)
    assert all("running ..." not in h and "Baseline" in h for h in runs)
    assert "<div class='steer-ui-run'>starting ...</div>" not in json.dumps(html)
    assert any("True" in o.get("data", {}).get("text/plain", "") for o in outputs)  # the log round trip
