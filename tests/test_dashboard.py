"""The dashboard's handlers called directly, on the real bundled model and a real SQLite log."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from conftest import random_vector
from gradio.utils import diff
from gradio_client.utils import apply_diff
from helpers import collect, compute

from steer_ui.app.context import AppContext
from steer_ui.app.dashboard import Dashboard
from steer_ui.app.generate_tab import UPDATES_PER_S
from steer_ui.app.stream_values import streams_value
from steer_ui.app.vector_panel import FILE_VECTOR, NO_VECTOR
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.experiments.sweep_report import summary_rows
from steer_ui.log.archive import record_events
from steer_ui.log.store import Store
from steer_ui.vectors.files import load_vector, save_vector
from steer_ui.vectors.presets import preset_vector_path
from steer_ui.views.chart import figure, figure_html
from steer_ui.views.run_view import RunView

PROMPT = "Is 91 a prime number? Answer Yes or No."
LONG = "Write a long story about a dragon who learns arithmetic."


@pytest.fixture()
def dash(bundled, tmp_path) -> Dashboard:
    d = Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path / "files"))
    d.sid_a, d.token_a = d.ctx.session_for(None)  # two browsers, each with the token the server gave it
    d.sid_b, d.token_b = d.ctx.session_for(None)
    return d


@pytest.fixture(autouse=True)
def _files(tmp_path):
    (tmp_path / "files").mkdir()


def form(**over) -> dict:
    f = dict(prompt=PROMPT, system_prompt="", chat_template=True, vector="reconsideration", vector_file=None,
             layers="15-18", coefs="4, 8", scope="all", max_new_tokens=24, temperature=0.0, top_p=1.0, seed=0,
             probe_suffix="", probe_choices="Yes,No", probe_every=4)
    f.update(over)
    return f


def run_to_end(dash: Dashboard, **over) -> list[dict]:
    return list(dash.generate.generate(**form(**over), browser_id=dash.token_a))


def merge(frames: list[dict]) -> tuple[list[list[str]], list[list[float]]]:
    """What the browser components hold after these updates: (pieces per row, y values per trace).

    Mirrors the components' rule: an update's items start at index "from"; keep what is there, append
    the rest; a "from" past what is held is a gap (None).
    """
    pieces: list[list[str]] = []
    ys: list[list[float]] = []
    for frame in frames:
        streams, chart = frame["streams"], frame["chart"]
        if len(pieces) != len(streams["rows"]):
            pieces = [[] for _ in streams["rows"]]
            ys = [[] for _ in chart["data"]]
        for held, r in zip(pieces, streams["rows"]):
            if r["from"] > len(held):
                return None
            held.extend(json.loads(r["t"])[len(held) - r["from"]:])
        for held, points, k in zip(ys, chart["points"], chart["from"]):
            if k > len(held):
                return None
            held.extend(json.loads(points)[1][len(held) - k:])
    return pieces, ys


def test_generate_streams_the_engines_run_and_logs_it(dash, bundled):
    frames = run_to_end(dash)
    last = frames[-1]
    streams, chart, status, result = last["streams"], last["chart"], last["status"], last["result"]
    files, link, sid = last["downloads"], last["link"], last["browser_id"]
    pieces, ys = merge(frames)
    # The same run straight through the engine: the dashboard shows exactly what it produces.
    vector = load_vector(preset_vector_path("reconsideration", "smollm2-135m"))
    settings = RunSettings(PROMPT, rows=steered(vector, (4.0, 8.0), (15, 16, 17, 18)), max_new_tokens=24,
                           probe_every=4)
    _, _, probes, done = collect(bundled, settings)
    assert [r["text"] for r in result["rows"]] == [r.text for r in done.rows]
    assert ["".join(p) for p in pieces] == [r.text for r in done.rows]
    for row in result["rows"]:
        mine = [p for p in probes if p.row == row["row"]]
        assert row["probe"]["step"] == [p.step for p in mine]
        assert row["probe"]["logodds"] == pytest.approx([p.logodds for p in mine], abs=1e-3)
    # Per row: a solid line through the readings that can be trusted (gaps where there is too little mass
    # on the choices), every reading faint under it, and the mass; with the points the probe produced.
    assert len(chart["data"]) == 3 * len(done.rows)
    assert [t["meta"] for t in chart["data"][1::3]] == ["readings"] * len(done.rows)
    assert all(t["opacity"] < 1 for t in chart["data"][1::3]) and all("opacity" not in t for t in chart["data"][::3])
    mine = [[p for p in probes if p.row == r.row] for r in done.rows]
    assert ys[1::3] == [pytest.approx([p.logodds for p in m], abs=1e-3) for m in mine]
    assert ys[::3] == [pytest.approx([p.logodds if p.reliable else None for p in m], abs=1e-3) for m in mine]
    assert any(not p.reliable for m in mine for p in m)  # the run has readings to leave out of the solid line
    # Every update carries the same static parts; its items start where the windowing says.
    full = dash.generate.snapshot(streams["run"])
    assert streams["run"] != result["run_id"] and dash.generate.snapshot(result["run_id"]) == {}  # not by run id
    assert [json.loads(r["t"]) for r in full["streams"]["rows"]] == pieces
    assert full["chart"]["from"] == [0] * len(ys)
    assert "finished" in status and sid == dash.token_a
    # The run is in the log under this browser's session, and its link and downloads point at it.
    stored = dash.ctx.store.get_run(result["run_id"], dash.sid_a)
    assert stored.status == "finished" and [s.text for s in stored.streams] == [r.text for r in done.rows]
    assert f"?run={result['run_id']}" in link
    names = sorted(p.rsplit("/", 1)[1] for p in files)
    assert names == sorted(f"steer-ui-{result['run_id']}{s}" for s in (".jsonl", "_runs.csv", "_streams.csv",
                                                                        "_probes.csv"))
    record = json.loads(open([p for p in files if p.endswith(".jsonl")][0]).read())
    assert record["id"] == result["run_id"]
    # Downloads carry no session id (the History's key), only a one-way pseudonym of it.
    assert dash.sid_a not in open(files[0]).read() + "".join(open(p).read() for p in files[1:])
    assert record["session_id"].startswith("s") and len(record["session_id"]) == 16
    # The chart page (plotly.js inlined, 4-5 MB) is made when asked for, once per run.
    with_chart = dash.generate.chart_download(last["shown_run"], dash.token_a)["downloads"]
    assert with_chart[0].endswith(f"steer-ui-{result['run_id']}-chart.html") and with_chart[1:] == files
    assert "Plotly" in open(with_chart[0]).read()
    mtime = Path(with_chart[0]).stat().st_mtime_ns
    assert dash.generate.chart_download(result["run_id"], dash.token_a)["downloads"][0] == with_chart[0]
    assert Path(with_chart[0]).stat().st_mtime_ns == mtime
    with pytest.raises(gr.Error, match="no run .* in this session"):
        dash.ctx.any_run_link = False
        dash.generate.chart_download(result["run_id"], dash.token_b)
    # History: the run's vector, coefficients, layers and tokens per row (as Generate's status counts them).
    (listed,) = [h for h in dash.history.history(dash.token_a) if h[0] == result["run_id"]]
    counts = [len(r.token_ids) for r in done.rows]  # here the baseline ends early: 2/24/24
    assert len(set(counts)) > 1 and listed[4:] == ["reconsideration", "+4, +8", "15-18", "/".join(map(str, counts))]
    assert f"{max(counts)} tokens per row" in status
    assert dash.history.history(dash.token_a)[0][0] == result["run_id"]
    assert dash.history.history(dash.token_b) == []


def test_first_divergence_is_the_first_differing_token(dash):
    result = run_to_end(dash)[-1]["result"]
    base = result["rows"][0]
    for row in result["rows"][1:]:
        d = row["first_divergence"]
        ids_base = dash.ctx.store.get_run(result["run_id"]).streams[0].token_ids
        ids_row = dash.ctx.store.get_run(result["run_id"]).streams[row["row"]].token_ids
        expected = next((i for i, (a, b) in enumerate(zip(ids_base, ids_row)) if a != b),
                        min(len(ids_base), len(ids_row)) if len(ids_base) != len(ids_row) else None)
        assert d == expected
    assert base["first_divergence"] is None


def test_updates_are_throttled_and_each_sends_only_what_is_new(dash):
    started = time.monotonic()
    frames = run_to_end(dash, max_new_tokens=64, coefs="4")
    elapsed = time.monotonic() - started
    assert len(frames) <= elapsed * UPDATES_PER_S + 3
    # Neither what Gradio sends (a diff against the previous yield) nor what the browser then holds and
    # processes (the value itself) grows with the run: both stay a few updates' worth of tokens.
    live = ("streams", "chart")
    sent = [sum(len(json.dumps(diff(prev[k], new[k]))) for k in live) for prev, new in zip(frames, frames[1:])]
    held = [len(json.dumps(f["streams"])) + len(json.dumps(f["chart"])) for f in frames]
    early, late = slice(9, len(frames) // 3), slice(-len(frames) // 3, -1)
    assert max(sent[late]) < 2 * max(sent[early]) + 500
    assert max(held[late]) < 2 * max(held[early]) + 500
    assert sum(len(json.loads(r["t"])) for r in frames[-2]["streams"]["rows"]) < 64 * 2  # a window, not the run
    # What Gradio's client rebuilds from the diffs is exactly what the server yielded.
    rebuilt = [copy.deepcopy(frames[0][k]) for k in live]
    for prev, new in zip(frames, frames[1:]):
        rebuilt = [apply_diff(copy.deepcopy(rebuilt[i]), diff(prev[k], new[k])) for i, k in enumerate(live)]
        assert rebuilt == [new[k] for k in live]
    assert merge(frames) is not None and ["".join(p) for p in merge(frames)[0]] == [
        r["text"] for r in frames[-1]["result"]["rows"]]


def test_a_browser_that_missed_updates_sees_a_gap_and_the_snapshot_fills_it(dash):
    frames = run_to_end(dash, max_new_tokens=64, coefs="4")
    assert len(frames) > 20
    assert merge(frames[:5] + frames[-1:]) is None  # skipped more than the window repeats
    full = dash.generate.snapshot(frames[-1]["streams"]["run"])
    assert merge([full] + frames[-1:]) == merge(frames)
    assert dash.generate.snapshot("unknown") == {}


def test_stop_ends_the_run_within_a_step_and_keeps_it(dash):
    class Req:
        session_hash = "tab-1"

    gen = dash.generate.generate(**form(max_new_tokens=400, coefs="4", prompt=LONG), browser_id=dash.token_a,
                                 request=Req())
    first = next(gen)
    assert "streaming" in first["status"]
    stopper = threading.Timer(1.0, dash.generate.stop, kwargs={"request": Req()})
    stopper.start()
    frames = [first, *gen]
    final = frames[-1]
    assert "stopped" in final["status"]
    result = final["result"]
    cancelled = [r for r in result["rows"] if r["finish_reason"] == "cancelled"]
    assert cancelled and all(0 < r["tokens"] < 400 for r in cancelled)
    run = dash.ctx.store.get_run(result["run_id"])
    assert run.status == "cancelled"
    assert [len(s.token_ids) for s in run.streams] == [r["tokens"] for r in result["rows"]]
    assert not dash.ctx.active and not dash.ctx.model_lock.locked()


def test_closing_the_stream_stops_the_run_and_frees_the_model(dash):
    gen = dash.generate.generate(**form(max_new_tokens=400, coefs="4", prompt=LONG), browser_id=dash.token_a)
    next(gen)
    next(gen)
    gen.close()  # what Gradio does when the browser tab goes away
    assert not dash.ctx.model_lock.locked()
    runs = dash.ctx.store.list_runs(dash.sid_a)
    assert runs[0].status == "cancelled" and 0 < runs[0].tokens < 800
    # The next run works.
    assert "finished" in run_to_end(dash, max_new_tokens=4)[-1]["status"]


@pytest.mark.parametrize("over, message", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(vector=NO_VECTOR), "need a steering vector"),
    (dict(rows="confidence"), "cannot read row"),
    (dict(rows="bravery=4"), "no preset vector 'bravery'"),
    (dict(rows="/etc/passwd.gguf=4"), "no such vector file"),
    (dict(top_k=-1), "top-k must be >= 0"),
    (dict(probe_min_mass=2), "probe min mass"),
    (dict(cache="huge"), "unknown cache"),
    (dict(layers="15-40"), "layer 30 is out of range"),
    (dict(coefs="4, nan"), "not a finite number"),
    (dict(coefs="four"), "not a number"),
    (dict(scope="sideways"), "scope"),
    (dict(vector=FILE_VECTOR), "upload a vector file"),
    (dict(probe_choices="Yes"), "choices"),
    (dict(max_new_tokens=0), "max new tokens"),
    (dict(temperature=float("nan")), "temperature"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_logged(dash, over, message):
    with pytest.raises(gr.Error) as err:
        run_to_end(dash, **over)
    assert message in str(err.value.message).lower()
    assert dash.ctx.store.list_runs() == []


def test_a_mismatched_vector_file_is_refused(dash, tmp_path):
    bad = tmp_path / "wrong.npy"
    import numpy as np
    np.save(bad, np.ones((30, 64), dtype=np.float32))
    with pytest.raises(gr.Error, match="hidden"):
        dash.vectors.info(FILE_VECTOR, str(bad))
    with pytest.raises(gr.Error, match="hidden"):
        run_to_end(dash, vector=FILE_VECTOR, vector_file=str(bad))
    with pytest.raises(gr.Error, match="row 2 .*hidden size 64"):  # a row of its own with that file
        run_to_end(dash, coefs="4", rows="file=2", vector_file=str(bad))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(gr.Error):
        dash.vectors.info(FILE_VECTOR, str(garbage))


def test_vector_info_shows_separation_and_suggests_the_band(dash):
    info = dash.vectors.info("reconsideration", None)
    assert info["layers"] == "15-18"
    assert info["layer_info"].count("class='su-bar'") == 30 and "effect size" in info["layer_info"]
    assert dash.vectors.info(NO_VECTOR, None)["layers"] == ""


def test_compute_vector_from_pairs_then_steer_with_it(dash, tmp_path):
    pairs = "\n".join(json.dumps({"positive": f"Wait, let me re-check step {i}.", "negative": f"Step {i} is right."})
                      for i in range(6))
    out = compute(dash, pairs, None, "mean_diff", "10-20", progress=None)
    choice, path, html, band = out["vector"], out["vector_file"], out["layer_info"], out["layers"]
    assert choice["value"] == FILE_VECTOR
    vec = load_vector(path)
    assert vec.layers == list(range(10, 21)) and vec.metadata["pairs"] == "6"
    lo, hi = map(int, band.split("-"))
    assert 10 <= lo <= hi <= 20 and html.count("class='su-bar'") == 11
    result = run_to_end(dash, vector=FILE_VECTOR, vector_file=path, layers=band, coefs="6",
                        max_new_tokens=8)[-1]["result"]
    assert result["status"] == "finished" and result["layers"] == list(range(lo, hi + 1))
    with pytest.raises(gr.Error, match="pairs:1: not valid JSON"):
        compute(dash, "positive: a, negative: b", None, "mean_diff", "all", progress=None)
    with pytest.raises(gr.Error, match="at least 2 pairs"):
        compute(dash, pairs.splitlines()[0], None, "mean_diff", "all", progress=None)


def test_load_reports_a_dead_model_and_keeps_the_current_one(dash, bundled, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for bad in ("", "no-such-org/no-such-model-xyz", "/nonexistent/folder"):
        with pytest.raises(gr.Error):
            dash.model.load(bad, progress=None)
    assert dash.ctx.lm is bundled


def test_load_another_model_updates_the_form(dash, tiny_dirs, tmp_path):
    loaded = dash.model.load(str(tiny_dirs["qwen2"]), progress=None)
    info, vector = loaded["model_info"], loaded["vector"]
    assert str(tiny_dirs["qwen2"]) in info and f"{dash.ctx.lm.n_layers} layers" in info
    assert vector["choices"] == [NO_VECTOR, FILE_VECTOR] and vector["value"] == NO_VECTOR  # no presets for it
    with pytest.raises(gr.Error, match="no preset vector"):
        run_to_end(dash)
    with pytest.raises(gr.Error, match="layer 15 is out of range: the model has 4 layers"):
        run_to_end(dash, vector=FILE_VECTOR, vector_file=str(save_vector(random_vector(dash.ctx.lm, range(4)),
                                                                          tmp_path / "v.safetensors")))
    assert "finished" in run_to_end(dash, vector=NO_VECTOR, coefs="", max_new_tokens=4)[-1]["status"]


def test_open_run_replays_streams_and_chart_exactly(dash):
    live = run_to_end(dash)[-1]
    run_id = live["result"]["run_id"]
    full = dash.generate.snapshot(live["streams"]["run"])  # the live run's whole view, as the browser had it
    opened = dash.history.open_run(run_id, dash.token_a)
    streams, chart = opened["streams"], opened["chart"]
    assert streams["rows"] == full["streams"]["rows"]  # same tokens, colours, divergence marks
    assert chart["data"] == full["chart"]["data"] and chart["points"] == full["chart"]["points"]
    assert opened["result"]["rows"] == live["result"]["rows"]
    assert opened["prompt"] == PROMPT and opened["layers"] == "15-18" and opened["coefs"] == "4, 8"
    assert opened["vector"] == "reconsideration"  # the stored copy is the preset exactly
    again = run_to_end(dash, **{k: opened[k] for k in form()})[-1]  # every knob as the form got it back
    assert [r["text"] for r in again["result"]["rows"]] == [r["text"] for r in live["result"]["rows"]]
    with pytest.raises(gr.Error, match="no run"):
        dash.history.open_run("nope", dash.token_a)


def test_open_run_gives_back_rows_with_their_own_vectors(dash, tmp_path):
    """A mixed run reopened: the form names each row's vector (a preset, or the stored copy) and runs again."""
    own = save_vector(random_vector(dash.ctx.lm, range(12, 16), scale=8.0), tmp_path / "own.safetensors")
    live = run_to_end(dash, coefs="4", rows="confidence=-6@16-19\nfile=1@12-15", vector_file=str(own),
                      max_new_tokens=12)[-1]
    labels = [r["label"] for r in live["result"]["rows"]]
    assert labels == ["baseline", "reconsideration +4 @15-18", "confidence -6 @16-19", "own +1 @12-15"]
    opened = dash.history.open_run(live["result"]["run_id"], dash.token_a)
    assert opened["vector"] == "reconsideration" and opened["coefs"] == "4"
    first, second = opened["rows"].splitlines()
    assert first == "confidence=-6@16-19" and second.startswith("stored:") and second.endswith("=1@12-15")
    again = run_to_end(dash, **{**{k: opened[k] for k in form()}, "rows": opened["rows"]})[-1]
    assert [r["text"] for r in again["result"]["rows"]] == [r["text"] for r in live["result"]["rows"]]


def test_page_load_gives_a_session_and_opens_a_linked_run(dash):
    run_id = run_to_end(dash)[-1]["result"]["run_id"]

    class Req:
        query_params = {"run": run_id}

    out = dash.history.on_page_load(dash.token_a, Req())
    assert out["browser_id"] == dash.token_a and out["history"][0][0] == run_id
    assert out["streams"]["run"] != run_id and out["result"]["run_id"] == run_id

    class Bad:
        query_params = {"run": "missing"}

    out = dash.history.on_page_load("", Bad())
    assert out["browser_id"] and "Cannot open the linked run" in out["status"] and "streams" not in out
    assert dash.ctx.store.list_runs(out["browser_id"]) == []


def test_export_session_files(dash):
    run_to_end(dash, max_new_tokens=4)
    run_to_end(dash, max_new_tokens=4, coefs="2")
    (jsonl,) = dash.history.export_session(dash.token_a, "jsonl")["value"]
    assert len(open(jsonl).read().splitlines()) == 2
    assert len(dash.history.export_session(dash.token_a, "csv")["value"]) == 3
    with pytest.raises(gr.Error):
        dash.history.export_session("", "jsonl")


def test_history_text_is_shown_as_text(bundled):
    """Model text that looks like HTML goes to the browser as plain strings, never as markup."""
    record_text = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    view = RunView("k")
    record = {"model_id": "m", "prompt_ids": [1], "prompt_text": "p", "layers": [], "settings": {"scope": "all"},
              "probe_suffix_ids": [], "probe_choices": [],
              "streams": [{"row": 0, "label": "baseline", "coef": 0.0, "token_ids": [5, 6], "text": record_text,
                           "finish_reason": "eos"}], "probes": [], "timing": {}}
    for ev in record_events(record):
        view.apply(ev)
    assert json.loads(streams_value(view)["rows"][0]["t"]) == [record_text, ""]
    html = figure_html(figure(view))
    assert "<script>alert(2)" not in html


def test_vector_names_are_escaped_in_the_layer_table(dash, tmp_path):
    vec = load_vector(preset_vector_path("confidence", "smollm2-135m"))
    vec.name = "<b onmouseover=x>evil</b>"
    table = dash.vectors.layer_table(vec)
    assert "<b onmouseover" not in table and "&lt;b onmouseover" in table


def test_sweep_tab_handler_runs_a_small_sweep_and_logs_it(dash):
    out = dash.sweep.sweep(questions="yesno:2", sweep_coefs="0, 4", browser_id=dash.token_a, progress=None,
                           **form(max_new_tokens=8, probe_every=1))
    table, fig, files, status = out["sweep_table"], out["sweep_plot"], out["sweep_files"], out["sweep_status"]
    assert [row[0] for row in table] == ["baseline", "coef +4"] and all(row[1] == "2" for row in table)
    assert "finished" in status and len(dash.history.history(dash.token_a)) == 2  # one run per question
    assert {p.rsplit("/", 1)[1] for p in files} >= {"results.csv", "summary.csv", "figure.html"}
    assert [t.name for t in fig.data][:1] == ["accuracy"]
    # The Generate form is the template: its max new tokens and layers are the sweep's.
    run = dash.ctx.store.get_run(dash.history.history(dash.token_a)[0][0])
    assert run.settings["max_new_tokens"] == 8 and [s.layers for s in run.streams][1] == [15, 16, 17, 18]
    for over, message in [({"sweep_coefs": "0, 4", "vector": NO_VECTOR}, "need a steering vector"),
                          ({"questions": "yesno:500"}, "at most"),
                          ({"questions": "nope.jsonl"}, "no such questions file"),
                          ({"sweep_coefs": "x"}, "not a number"),
                          ({"sweep_coefs": "", "sweep_arms": ""}, "at least one arm"),
                          ({"sweep_arms": "budget:min=x"}, "budget"),
                          ({"sweep_arms": "baseline"}, "arms repeat: baseline")]:
        args = {"questions": "yesno:2", "sweep_coefs": "0", **form(max_new_tokens=8)}
        args.update(over)
        args.pop("prompt")
        with pytest.raises(gr.Error, match=message):
            dash.sweep.sweep(browser_id=dash.token_a, progress=None, **args)


def test_every_example_is_a_run_the_bundled_model_accepts(dash):
    """Shown whole (the bundled model has every preset they name) and planned without a message; the budget
    example runs baseline, a reconsideration row, budget:min and an at-end row side by side."""
    from steer_ui.app.generate_tab import EXAMPLES
    from steer_ui.engine.plan import plan_run

    assert dash.generate._examples() == [[ex[k] for k in EXAMPLES[0]] for ex in EXAMPLES]
    plans = [plan_run(dash.ctx.lm, dash.generate.settings(form(**ex))) for ex in EXAMPLES]
    rows = plans[-1].rows
    assert [(r.budget, r.scope) for r in rows] == [(None, None), (None, "generated"), ("budget:min=48", None),
                                                  (None, "at-end:8")]


def test_sweep_tab_runs_arms_with_paired_statistics_and_the_pareto_figure(dash):
    """Arms of their own beside the coefficients: a budget arm and a vector row, against the baseline."""
    out = dash.sweep.sweep(questions="yesno:2", sweep_coefs="", sweep_arms="baseline\nbudget:min=12\n"
                           "confidence=-4@16-19", browser_id=dash.token_a, progress=None, **form(max_new_tokens=16))
    table = {row[0]: row for row in out["sweep_table"]}
    assert list(table) == ["baseline", "budget:min=12", "confidence=-4@16-19"]
    p_value = summary_rows([])[0].index("McNemar p")
    assert table["baseline"][p_value] == "-" and float(table["budget:min=12"][p_value]) <= 1.0
    assert [t.name for t in out["sweep_pareto"].data] == list(table)
    assert list(out["sweep_plot"].data[0].x) == [-4.0, 0.0]  # the arms with a coefficient, in order
    assert "2 questions x 3 arms" in out["sweep_status"]
    assert any(p.endswith("summary.json") for p in out["sweep_files"])


def test_the_browser_session_key_survives_a_restart(tmp_path, monkeypatch):
    from steer_ui.app.layout import browser_secret

    monkeypatch.setenv("STEER_UI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STEER_UI_SECRET", raising=False)
    first = browser_secret()
    assert len(first) == 64 and browser_secret() == first
    assert oct((tmp_path / "cache" / "browser-secret").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("STEER_UI_SECRET", "from-the-environment")
    assert browser_secret() == "from-the-environment"
