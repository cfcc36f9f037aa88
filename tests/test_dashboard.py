"""The dashboard's handlers called directly, on the real bundled model and a real SQLite log."""

from __future__ import annotations

import copy
import json
import threading
import time

import gradio as gr
import pytest
from conftest import random_vector
from gradio.utils import diff
from gradio_client.utils import apply_diff
from helpers import collect

from steer_ui.app.dashboard import FILE_VECTOR, NO_VECTOR, UPDATES_PER_S, AppContext, Dashboard, figure_html
from steer_ui.engine.run_settings import ProbeSettings, RunSettings
from steer_ui.log.archive import record_events
from steer_ui.log.store import Store
from steer_ui.vectors.files import load_vector, save_vector
from steer_ui.vectors.presets import preset_vector_path
from steer_ui.views.run_view import RunView

PROMPT = "Is 91 a prime number? Answer Yes or No."
LONG = "Write a long story about a dragon who learns arithmetic."


@pytest.fixture()
def dash(bundled, tmp_path) -> Dashboard:
    return Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path / "files"))


@pytest.fixture(autouse=True)
def _files(tmp_path):
    (tmp_path / "files").mkdir()


def form(**over) -> dict:
    f = dict(prompt=PROMPT, system_prompt="", chat_template=True, vector="reconsideration", vector_file=None,
             layers="15-18", coefs="4, 8", scope="all", max_new_tokens=24, temperature=0.0, top_p=1.0, seed=0,
             probe_suffix="", probe_choices="Yes,No", probe_every=4)
    f.update(over)
    return f


def run_to_end(dash: Dashboard, **over) -> list[tuple]:
    return list(dash.generate(**form(**over), browser_id="browser-a"))


def merge(frames: list[tuple]) -> tuple[list[list[str]], list[list[float]]]:
    """What the browser components hold after these updates: (pieces per row, y values per trace).

    Mirrors the components' rule: an update's items start at index "from"; keep what is there, append
    the rest; a "from" past what is held is a gap (None).
    """
    pieces: list[list[str]] = []
    ys: list[list[float]] = []
    for streams, chart, *_ in frames:
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
    streams, figure, status, result, files, link, sid = frames[-1]
    pieces, ys = merge(frames)
    # The same run straight through the engine: the dashboard shows exactly what it produces.
    settings = RunSettings(PROMPT, vector=load_vector(preset_vector_path("reconsideration", "smollm2-135m")),
                           layers=(15, 16, 17, 18), coefs=(4.0, 8.0), max_new_tokens=24,
                           probe=ProbeSettings(None, ("Yes", "No"), 4))
    _, _, probes, done = collect(bundled, settings)
    assert [r["text"] for r in result["rows"]] == [r.text for r in done.rows]
    assert ["".join(p) for p in pieces] == [r.text for r in done.rows]
    for row in result["rows"]:
        mine = [p for p in probes if p.row == row["row"]]
        assert row["probe"]["step"] == [p.step for p in mine]
        assert row["probe"]["logodds"] == pytest.approx([p.logodds for p in mine], abs=1e-3)
    # One line per row plus its mass, with the points the probe produced.
    assert len(figure["data"]) == 2 * len(done.rows)
    assert ys[::2] == [pytest.approx([p.logodds for p in probes if p.row == r.row], abs=1e-3) for r in done.rows]
    # Every update carries the same static parts; its items start where the windowing says.
    full = dash.snapshot(streams["run"])
    assert streams["run"] != result["run_id"] and dash.snapshot(result["run_id"]) == {}  # not by run id
    assert [json.loads(r["t"]) for r in full["streams"]["rows"]] == pieces
    assert full["chart"]["from"] == [0] * len(ys)
    assert "finished" in status and sid == "browser-a"
    # The run is in the log under this browser's session, and its link and downloads point at it.
    stored = dash.ctx.store.get_run(result["run_id"], "browser-a")
    assert stored.status == "finished" and [s.text for s in stored.streams] == [r.text for r in done.rows]
    assert f"?run={result['run_id']}" in link
    names = sorted(p.rsplit("/", 1)[1] for p in files)
    assert names == sorted(f"steer-ui-{result['run_id']}{s}" for s in
                           ("-chart.html", ".jsonl", "_runs.csv", "_streams.csv", "_probes.csv"))
    assert json.loads(open([p for p in files if p.endswith(".jsonl")][0]).read())["id"] == result["run_id"]
    assert dash.history("browser-a")[0][0] == result["run_id"]
    assert dash.history("browser-b") == []


def test_first_divergence_is_the_first_differing_token(dash):
    result = run_to_end(dash)[-1][3]
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
    sent = [sum(len(json.dumps(diff(prev[i], new[i]))) for i in (0, 1)) for prev, new in zip(frames, frames[1:])]
    held = [len(json.dumps(f[0])) + len(json.dumps(f[1])) for f in frames]
    early, late = slice(9, len(frames) // 3), slice(-len(frames) // 3, -1)
    assert max(sent[late]) < 2 * max(sent[early]) + 500
    assert max(held[late]) < 2 * max(held[early]) + 500
    assert sum(len(json.loads(r["t"])) for r in frames[-2][0]["rows"]) < 64 * 2  # a window, not the run
    # What Gradio's client rebuilds from the diffs is exactly what the server yielded.
    rebuilt = copy.deepcopy(frames[0][:2])
    for prev, new in zip(frames, frames[1:]):
        rebuilt = [apply_diff(copy.deepcopy(rebuilt[i]), diff(prev[i], new[i])) for i in (0, 1)]
        assert rebuilt == list(new[:2])
    assert merge(frames) is not None and ["".join(p) for p in merge(frames)[0]] == [
        r["text"] for r in frames[-1][3]["rows"]]


def test_a_browser_that_missed_updates_sees_a_gap_and_the_snapshot_fills_it(dash):
    frames = run_to_end(dash, max_new_tokens=64, coefs="4")
    assert len(frames) > 20
    assert merge(frames[:5] + frames[-1:]) is None  # skipped more than the window repeats
    full = dash.snapshot(frames[-1][0]["run"])
    assert merge([(full["streams"], full["chart"])] + frames[-1:]) == merge(frames)
    assert dash.snapshot("unknown") == {}


def test_stop_ends_the_run_within_a_step_and_keeps_it(dash):
    class Req:
        session_hash = "tab-1"

    gen = dash.generate(**form(max_new_tokens=400, coefs="4", prompt=LONG), browser_id="browser-a", request=Req())
    first = next(gen)
    assert "streaming" in first[2]
    stopper = threading.Timer(1.0, dash.stop, kwargs={"request": Req()})
    stopper.start()
    frames = [first, *gen]
    final = frames[-1]
    assert "stopped" in final[2]
    result = final[3]
    cancelled = [r for r in result["rows"] if r["finish_reason"] == "cancelled"]
    assert cancelled and all(0 < r["tokens"] < 400 for r in cancelled)
    run = dash.ctx.store.get_run(result["run_id"])
    assert run.status == "cancelled"
    assert [len(s.token_ids) for s in run.streams] == [r["tokens"] for r in result["rows"]]
    assert not dash.ctx.active and not dash.ctx.model_lock.locked()


def test_closing_the_stream_stops_the_run_and_frees_the_model(dash):
    gen = dash.generate(**form(max_new_tokens=400, coefs="4", prompt=LONG), browser_id="browser-a")
    next(gen)
    next(gen)
    gen.close()  # what Gradio does when the browser tab goes away
    assert not dash.ctx.model_lock.locked()
    runs = dash.ctx.store.list_runs("browser-a")
    assert runs[0].status == "cancelled" and 0 < runs[0].tokens < 800
    # The next run works.
    assert "finished" in run_to_end(dash, max_new_tokens=4)[-1][2]


@pytest.mark.parametrize("over, message", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(vector=NO_VECTOR), "choose a steering vector"),
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
        dash.vector_info(FILE_VECTOR, str(bad))
    with pytest.raises(gr.Error, match="hidden"):
        run_to_end(dash, vector=FILE_VECTOR, vector_file=str(bad))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(gr.Error):
        dash.vector_info(FILE_VECTOR, str(garbage))


def test_vector_info_shows_separation_and_suggests_the_band(dash):
    html, band = dash.vector_info("reconsideration", None)
    assert band == "15-18"
    assert html.count("class='su-bar'") == 30 and "effect size" in html
    assert dash.vector_info(NO_VECTOR, None)[1] == ""


def test_compute_vector_from_pairs_then_steer_with_it(dash, tmp_path):
    pairs = "\n".join(json.dumps({"positive": f"Wait, let me re-check step {i}.", "negative": f"Step {i} is right."})
                      for i in range(6))
    choice, path, html, band = dash.compute(pairs, None, "mean_diff", "10-20", progress=None)
    assert choice["value"] == FILE_VECTOR
    vec = load_vector(path)
    assert vec.layers == list(range(10, 21)) and vec.metadata["pairs"] == "6"
    lo, hi = map(int, band.split("-"))
    assert 10 <= lo <= hi <= 20 and html.count("class='su-bar'") == 11
    result = run_to_end(dash, vector=FILE_VECTOR, vector_file=path, layers=band, coefs="6", max_new_tokens=8)[-1][3]
    assert result["status"] == "finished" and result["layers"] == list(range(lo, hi + 1))
    with pytest.raises(gr.Error, match="pairs:1: not valid JSON"):
        dash.compute("positive: a, negative: b", None, "mean_diff", "all", progress=None)
    with pytest.raises(gr.Error, match="at least 2 pairs"):
        dash.compute(pairs.splitlines()[0], None, "mean_diff", "all", progress=None)


def test_load_reports_a_dead_model_and_keeps_the_current_one(dash, bundled, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for bad in ("", "no-such-org/no-such-model-xyz", "/nonexistent/folder"):
        with pytest.raises(gr.Error):
            dash.load(bad, progress=None)
    assert dash.ctx.lm is bundled


def test_load_another_model_updates_the_form(dash, tiny_dirs, tmp_path):
    info, vector, suffix, layers, table = dash.load(str(tiny_dirs["qwen2"]), progress=None)
    assert str(tiny_dirs["qwen2"]) in info and f"{dash.ctx.lm.n_layers} layers" in info
    assert vector["choices"] == [NO_VECTOR, FILE_VECTOR] and vector["value"] == NO_VECTOR  # no presets for it
    with pytest.raises(gr.Error, match="no preset vector"):
        run_to_end(dash)
    with pytest.raises(gr.Error, match="layer 15 is out of range: the model has 4 layers"):
        run_to_end(dash, vector=FILE_VECTOR, vector_file=str(save_vector(random_vector(dash.ctx.lm, range(4)),
                                                                          tmp_path / "v.safetensors")))
    assert "finished" in run_to_end(dash, vector=NO_VECTOR, coefs="", max_new_tokens=4)[-1][2]


def test_open_run_replays_streams_and_chart_exactly(dash):
    live = run_to_end(dash)[-1]
    run_id = live[3]["run_id"]
    full = dash.snapshot(live[0]["run"])  # the live run's whole view, as the browser had it
    opened = dash.open_run(run_id, "browser-a")
    streams, figure = opened[0], opened[1]
    assert streams["rows"] == full["streams"]["rows"]  # same tokens, colours, divergence marks
    assert figure["data"] == full["chart"]["data"] and figure["points"] == full["chart"]["points"]
    assert opened[3]["rows"] == live[3]["rows"]
    assert opened[6] == PROMPT and opened[8] == "15,16,17,18" and opened[9] == "4, 8"
    assert opened[11] == FILE_VECTOR  # the stored copy of the vector, so Generate runs it again exactly
    again = run_to_end(dash, vector=opened[11], vector_file=opened[12], layers=opened[8], coefs=opened[9])[-1]
    assert [r["text"] for r in again[3]["rows"]] == [r["text"] for r in live[3]["rows"]]
    with pytest.raises(gr.Error, match="no run"):
        dash.open_run("nope", "browser-a")


def test_page_load_gives_a_session_and_opens_a_linked_run(dash):
    run_id = run_to_end(dash)[-1][3]["run_id"]

    class Req:
        query_params = {"run": run_id}

    out = dash.on_page_load("browser-a", Req())
    assert out[0] == "browser-a" and out[1][0][0] == run_id and out[2]["run"] != run_id and out[5]["run_id"] == run_id

    class Bad:
        query_params = {"run": "missing"}

    out = dash.on_page_load("", Bad())
    assert out[0] and "Cannot open the linked run" in out[4]
    assert dash.ctx.store.list_runs(out[0]) == []


def test_export_session_files(dash):
    run_to_end(dash, max_new_tokens=4)
    run_to_end(dash, max_new_tokens=4, coefs="2")
    (jsonl,) = dash.export_session("browser-a", "jsonl")["value"]
    assert len(open(jsonl).read().splitlines()) == 2
    assert len(dash.export_session("browser-a", "csv")["value"]) == 3
    with pytest.raises(gr.Error):
        dash.export_session("", "jsonl")


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
    assert json.loads(view.streams_value()["rows"][0]["t"]) == [record_text, ""]
    html = figure_html(view.figure())
    assert "<script>alert(2)" not in html


def test_vector_names_are_escaped_in_the_layer_table(dash, tmp_path):
    vec = load_vector(preset_vector_path("confidence", "smollm2-135m"))
    vec.name = "<b onmouseover=x>evil</b>"
    assert "<b onmouseover" not in dash.layer_table(vec) and "&lt;b onmouseover" in dash.layer_table(vec)


def test_sweep_tab_handler_runs_a_small_sweep_and_logs_it(dash):
    table, fig, files, status = dash.sweep("yesno:2", None, "0, 4", 8, "reconsideration", None, "15-18", "all",
                                           "browser-a", progress=None)
    assert [row[0] for row in table] == ["+0", "+4"] and all(row[1] == 2 for row in table)
    assert "finished" in status and len(dash.history("browser-a")) == 2  # one run per question, in History
    assert {p.rsplit("/", 1)[1] for p in files} >= {"results.csv", "summary.csv", "figure.html"}
    assert [t.name for t in fig.data][:1] == ["accuracy"]
    for args, message in [(("yesno:2", None, "0, 4", 8, NO_VECTOR, None, "", "all"), "need a steering vector"),
                          (("yesno:500", None, "0", 8, NO_VECTOR, None, "", "all"), "at most"),
                          (("nope.jsonl", None, "0", 8, NO_VECTOR, None, "", "all"), "no such questions file"),
                          (("yesno:2", None, "x", 8, NO_VECTOR, None, "", "all"), "not a number")]:
        with pytest.raises(gr.Error, match=message):
            dash.sweep(*args, "browser-a", progress=None)


def test_the_browser_session_key_survives_a_restart(tmp_path, monkeypatch):
    from steer_ui.app.layout import browser_secret

    monkeypatch.setenv("STEER_UI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STEER_UI_SECRET", raising=False)
    first = browser_secret()
    assert len(first) == 64 and browser_secret() == first
    assert oct((tmp_path / "cache" / "browser-secret").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("STEER_UI_SECRET", "from-env")
    assert browser_secret() == "from-env"
