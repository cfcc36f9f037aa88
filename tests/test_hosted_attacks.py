"""Attacks on the dashboard in hosted mode, each refused at its cause (the lower layers' share, vector files,
pair texts, question files, the log, is in ``test_hostile_inputs.py``).

Each test reproduces what an attacker did against ``python app.py --hosted`` on loopback: forged and
fresh session ids, endpoints without a rate limit, the session credential read from a shared export,
sweeps over the caps that Stop could not end, server paths typed as questions, layer ranges and fields
sized to exhaust memory, a zip bomb uploaded as a vector, a log that fails mid-run, leftover temp folders.
Where time or memory is the point it is measured (bounded: one call each).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from helpers import compute, refusal
from sqlalchemy import event

from steer_ui.app.context import AppContext
from steer_ui.app.dashboard import Dashboard
from steer_ui.app.hosted import Limits, RateLimiter, rate_validator
from steer_ui.app.sessions import SessionTokens
from steer_ui.errors import UserError

# Imported once up front (scipy comes with it): a refusal's cost is what a request spends, not a first import.
from steer_ui.experiments import sweep as _sweep  # noqa: F401
from steer_ui.log.store import Store
from steer_ui.vectors.files import load_vector
from steer_ui.vectors.presets import preset_vector_path

PROMPT = "Is 7 a prime number?"
MB = 2**20


@pytest.fixture()
def hosted(bundled, tmp_path) -> Dashboard:
    limits = Limits(caps={"max_new_tokens": 16, "prompt_chars": 200}, steered_rows=2, pairs=3, pair_chars=300,
                    sweep_questions=2, runs_per_minute=3)
    return Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path / "files",
                                limits=limits))


def token(dash: Dashboard) -> str:
    return dash.ctx.session_for(None)[1]


def gen(dash: Dashboard, browser: str | None = None, **over) -> list[dict]:
    args = dict(prompt=PROMPT, vector="confidence", layers="16-19", coefs="4", max_new_tokens=4, probe_every=2)
    args.update(over)
    return list(dash.generate.generate(**args, browser_id=browser))


@pytest.fixture()
def forwards(bundled):
    """How many forwards the model has run since the test began (a counting hook on the real model)."""
    calls = []
    handle = bundled.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


def said(err: BaseException | None) -> str:
    """What the visitor is shown: a gr.Error's message."""
    return getattr(err, "message", str(err))


def address(host: str) -> SimpleNamespace:
    return SimpleNamespace(client=SimpleNamespace(host=host))


# --- identity and quota ----------------------------------------------------------------------------------
def test_a_session_is_issued_by_the_server_and_cannot_be_forged_or_oversized(hosted):
    sid, tok = hosted.ctx.session_for(None)
    assert hosted.ctx.session_of(tok) == sid and len(sid) == 12
    assert hosted.ctx.session_of(f"{sid}.{'0' * 32}") is None  # the id with a made-up signature
    assert hosted.ctx.session_of(sid) is None  # the id alone, as a log or an old export shows it
    assert hosted.ctx.session_of(SessionTokens(b"another server").issue()[1]) is None
    for junk in ("x" * 2_000_000, {"__class__": "x"}, ["a"], 7, None):
        new_sid, new_tok = hosted.ctx.session_for(junk)  # a new session, never the value sent
        assert new_sid != sid and hosted.ctx.session_of(new_tok) == new_sid
    # The generate endpoint hands the browser its token; a forged one is replaced by a real one.
    final = gen(hosted, browser=f"{sid}.{'f' * 32}")[-1]
    assert hosted.ctx.session_of(final["browser_id"]) not in (None, sid)
    with hosted.ctx.store.engine.connect() as conn:
        ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM sessions")]
    assert ids == [hosted.ctx.session_of(final["browser_id"])]  # only the session that ran has a row


def test_the_session_secret_never_reaches_the_page(bundled, tmp_path):
    import httpx
    from conftest import serve_dashboard

    demo, url, dash = serve_dashboard(bundled, tmp_path, Limits())
    try:
        secret = dash.ctx.tokens._secret.decode()
        config = httpx.get(f"{url}config", timeout=30).text
        page = httpx.get(url, timeout=30).text
        assert secret not in config and secret not in page
    finally:
        demo.close()


def test_fresh_session_ids_per_call_do_not_multiply_the_quota(hosted):
    check = rate_validator(hosted.ctx.rate, hosted.ctx.session_of)
    admitted = [check(prompt=PROMPT, browser_id=secrets.token_hex(16), request=address("10.0.0.9"))[0]["is_valid"]
                for _ in range(10)]
    assert admitted == [True] * 3 + [False] * 7  # unverified ids all count as the address's one session
    refused = check(prompt=PROMPT, browser_id="forged", request=address("10.0.0.9"))[0]
    assert "3 runs a minute per session" in refused["message"]
    assert check(prompt=PROMPT, browser_id=token(hosted), request=address("10.0.0.9"))[0]["is_valid"]


def test_many_real_sessions_from_one_address_are_capped(hosted):
    limiter = RateLimiter(per_minute=3)  # 9 a minute per client address
    sessions = [hosted.ctx.session_for(None)[0] for _ in range(10)]
    for sid in sessions[:9]:
        limiter.admit(sid, "10.0.0.7", now=1.0)
    with pytest.raises(UserError, match="rate limit: 9 runs a minute per client address"):
        limiter.admit(sessions[9], "10.0.0.7", now=1.0)
    limiter.admit(sessions[9], "10.0.0.8", now=1.0)  # another address is fine


def test_idle_rate_limit_keys_are_dropped():
    limiter = RateLimiter(per_minute=3)
    for i in range(2000):
        limiter.admit(f"s{i}", f"10.0.{i // 250}.{i % 250}", now=i * 0.01)
    assert len(limiter) == 4000  # a session key and an address key each
    limiter.admit("late", "10.9.9.9", now=200.0)
    assert len(limiter) == 2


def test_every_model_work_endpoint_is_rate_limited_before_it_runs(bundled, tmp_path):
    """The attack: compute_vector and load_model took eight and three calls in a row; open_run none."""
    from conftest import serve_dashboard
    from gradio_client import Client
    from gradio_client.exceptions import ValidationError

    demo, url, dash = serve_dashboard(bundled, tmp_path, Limits(runs_per_minute=1))
    try:
        client = Client(url, verbose=False, download_files=False)
        pairs = "\n".join(json.dumps({"positive": f"Wait, let me check {i}.", "negative": f"Done {i}."})
                          for i in range(2))
        compute = {"pairs_text": pairs, "pairs_file": None, "method": "mean_diff", "layers": "16-19"}
        client.predict(**compute, api_name="/compute_vector")
        calls = {"/compute_vector": compute,
                 "/load_model": {"model": "smollm2-135m"}, "/open_run": {"run_id": "abc"},
                 "/sweep": {"questions": "yesno:1", "sweep_coefs": "0"}, "/generate": {"prompt": PROMPT}}
        for api_name, kwargs in calls.items():
            with pytest.raises(ValidationError, match="rate limit: 1 runs a minute"):
                client.predict(**kwargs, browser_id="made-up", api_name=api_name)
        assert dash.ctx.store.list_runs() == []
    finally:
        demo.close()


# --- the credential is never in what is shared -----------------------------------------------------------
def test_downloads_and_exports_never_carry_the_session_credential(hosted):
    sid, tok = hosted.ctx.session_for(None)
    final = gen(hosted, browser=tok)[-1]
    exported = hosted.history.export_session(tok, "jsonl")["value"] + hosted.history.export_session(tok, "csv")["value"]
    shared = [*final["downloads"], *exported]
    assert len(shared) == 4 + 1 + 3
    for path in shared:
        text = Path(path).read_text()
        assert final["result"]["run_id"] in text and sid not in text and tok not in text, path
    assert hosted.history.history(sid) == []  # an id read from anywhere opens nothing


# --- sweeps ----------------------------------------------------------------------------------------------
def sweep(dash: Dashboard, questions: str = "yesno:1", coefs: str = "0", browser: str | None = None, **form):
    form = {"vector": "confidence", "layers": "16-19", "max_new_tokens": 4, **form}
    return dash.sweep.sweep(questions, None, coefs, browser_id=browser, progress=None, **form)


@pytest.mark.parametrize("over, message", [
    ({"coefs": "-4, 4, 8"}, "3 steered arms; this server's limit is 2 steered rows"),
    ({"coefs": "4", "sweep_arms": "budget:min=8\nconfidence=4"}, "3 steered arms; this server's limit is 2"),
    ({"sweep_arms": "budget:min=8\n" * 100_000}, "the arms field is 1,300,000 characters; this server's limit"),
    ({"max_new_tokens": 1024}, "above this server's limit of 16"),
    ({"questions": "yesno:3000000"}, "yesno:3000000 asks for 3,000,000 questions; at most 2 are allowed here"),
    ({"layers": "0-30000000"}, "layer 30000000 is out of range"),
])
def test_a_sweep_over_the_caps_is_refused_at_once(hosted, over, message, forwards):
    raised, cpu_s, peak = refusal(sweep, hosted, **over)
    assert isinstance(raised, gr.Error) and message in said(raised)
    assert cpu_s < 1.0 and peak < 100 * MB and not forwards
    assert hosted.ctx.store.list_runs() == []


@pytest.mark.parametrize("spec", ["{path}", "/etc/passwd", "../log.sqlite", "~/.bashrc"])
def test_the_questions_box_reads_no_file_of_the_server(hosted, tmp_path, spec):
    """The attack: a server-side JSONL ran (its text in the attacker's History); /etc/passwd answered with
    a parse error naming line 1."""
    path = tmp_path / "server-side.jsonl"
    path.write_text(json.dumps({"question": "secret question?", "answer": "yes"}) + "\n")
    with pytest.raises(gr.Error, match="paths on this server are not read") as err:
        sweep(hosted, spec.format(path=path))
    assert "line" not in str(err.value) and str(tmp_path) not in str(err.value)
    assert hosted.ctx.store.list_runs() == []


def test_an_uploaded_questions_file_is_named_by_its_own_name(hosted, tmp_path):
    upload = tmp_path / "gradio-cache" / "0123abcd" / "mine.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_text("".join(json.dumps({"question": f"q{i}?", "answer": "yes"}) + "\n" for i in range(3)))
    with pytest.raises(gr.Error) as err:
        hosted.sweep.sweep("", str(upload), "0", vector="confidence", max_new_tokens=4, progress=None)
    assert said(err.value) == "mine.jsonl: more than 2 questions; at most 2 are allowed here"


def test_stop_ends_a_sweep_within_a_step(bundled, tmp_path):
    dash = Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path / "f"))
    page = SimpleNamespace(session_hash="tab-1")
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(dash.sweep.sweep(
        "yesno:8", None, "0, 4", vector="confidence", layers="16-19", max_new_tokens=48, request=page,
        progress=None)))
    worker.start()
    deadline = time.monotonic() + 120
    while not dash.ctx.store.list_runs() and time.monotonic() < deadline:  # the first run has started
        time.sleep(0.05)
    dash.sweep.stop(page)
    worker.join(300)  # a hang guard on a busy machine, not a timing
    assert not worker.is_alive() and "stopped" in out["sweep_status"]
    runs = dash.ctx.store.list_runs()
    assert 1 <= len(runs) < 8 and "cancelled" in {r.status for r in runs}
    assert not dash.ctx.model_lock.locked() and not dash.ctx.sweeps


# --- sizes checked before work or memory -----------------------------------------------------------------
@pytest.mark.parametrize("over, message", [
    ({"layers": "0-30000000"}, "layer 30000000 is out of range"),
    ({"layers": "0-1000000000000"}, "cannot read layers '0-1000000000000'"),
    ({"layers": "1," * 100_000}, "the layers field is 200,000 characters; this server's limit is 4,096"),
    ({"rows": "confidence=1;" * 200_000}, "the rows field is 2,600,000 characters"),
    ({"coefs": "1," * 1_000_000}, "the coefs field is 2,000,000 characters"),
    ({"rows": "file=1;" * 3, "vector": None}, "3 steered rows asked; this server's limit is 2"),
    ({"probe_choices": "a,b,c,d,e,f,g,h,i"}, "the probe reads at most 8 choices"),
])
def test_oversized_fields_are_refused_before_work(hosted, over, message, forwards):
    raised, cpu_s, peak = refusal(gen, hosted, **over)
    assert isinstance(raised, gr.Error) and message in said(raised), raised
    assert cpu_s < 1.0 and peak < 100 * MB and not forwards


def test_compute_vector_refuses_long_texts_and_huge_layers_before_reading_states(hosted, tmp_path, monkeypatch,
                                                                                 forwards):
    from steer_ui.vectors import contrastive

    def forbidden(*args, **kwargs):
        raise AssertionError("hidden states were read")
    monkeypatch.setattr(contrastive, "last_token_states", forbidden)
    long_text = "Wait, let me check that again. " * 1300  # the attack: 8 pairs of ~8k tokens
    typed = "\n".join(json.dumps({"positive": long_text, "negative": "short"}) for _ in range(3))
    file = tmp_path / "gradio" / "pairs.jsonl"
    file.parent.mkdir()
    file.write_text(typed)
    cases = [((typed, None, "mean_diff", "all"), "the pairs text is 121,013 characters; this server's limit is 1,992"),
             ((json.dumps({"positive": "x" * 400, "negative": "y"}), None, "mean_diff", "all"),
              "pairs:1: the positive text is 400 characters; the limit is 300 characters per text"),
             (("", str(file), "mean_diff", "all"), "pairs.jsonl:1: the positive text is 40,300 characters"),
             ((json.dumps({"positive": "a", "negative": "b"}), None, "mean_diff", "0-30000000"),
              "layer 30000000 is out of range"),
             ((json.dumps({"positive": "a", "negative": "b"}), None, "mean_diff", "1," * 100_000),
              "the layers to compute field is 200,000 characters")]
    for args, message in cases:
        raised, cpu_s, peak = refusal(lambda: compute(hosted, *args, progress=None))
        assert isinstance(raised, gr.Error) and message in said(raised), raised
        assert str(file.parent) not in str(raised) and cpu_s < 1.0 and peak < 100 * MB and not forwards


def _npz_bomb(path: Path, inflated_mb: int) -> None:
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (inflated_mb * MB // 4,)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("direction.16.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(4 * MB)
            for _ in range(inflated_mb // 4):
                f.write(chunk)


def test_a_vector_zip_bomb_upload_is_refused_from_its_header(hosted, tmp_path, forwards):
    """The attack: a 255 KB .npz took the server's memory up by 948 MB before it was refused."""
    bomb = tmp_path / "upload-dir" / "vector.npz"
    bomb.parent.mkdir()
    _npz_bomb(bomb, 256)
    assert bomb.stat().st_size < MB
    raised, cpu_s, peak = refusal(gen, hosted, vector="uploaded or computed file", vector_file=str(bomb))
    assert isinstance(raised, gr.Error) and said(raised).startswith("vector.npz: unpacks to"), raised
    assert str(bomb.parent) not in str(raised) and cpu_s < 1.0 and peak < 100 * MB and not forwards


# --- integrity -------------------------------------------------------------------------------------------
def test_a_forged_copy_of_a_preset_does_not_replace_it_in_anyone_s_history(hosted, tmp_path):
    """The attack: the preset's tensors uploaded with forged metadata; the next visitor's run of the preset
    came back from History as the forged file."""
    from steer_ui.vectors.files import save_vector

    forged = load_vector(preset_vector_path("confidence", "smollm2-135m"))
    forged.metadata = {**forged.metadata, "suggested_band": "0-1", "padding": "x" * 1000}
    upload = save_vector(forged, tmp_path / "confidence.safetensors")
    attacker, victim = token(hosted), token(hosted)
    gen(hosted, attacker, vector="uploaded or computed file", vector_file=str(upload))
    run_id = gen(hosted, victim)[-1]["result"]["run_id"]
    opened = hosted.history.open_run(run_id, victim)
    assert opened["vector"] == "confidence"
    reopened = hosted.vectors.preset("confidence")
    assert "padding" not in reopened.metadata


# --- disk ------------------------------------------------------------------------------------------------
def test_reopening_a_run_reuses_its_downloads(hosted):
    tok = token(hosted)
    run_id = gen(hosted, tok)[-1]["result"]["run_id"]
    files = hosted.ctx.files

    def tree() -> list[Path]:
        return sorted(p for p in files.rglob("*") if p.is_file())

    hosted.history.open_run(run_id, tok)
    before = tree()
    for _ in range(5):
        hosted.history.open_run(run_id, tok)
    assert tree() == before and not any(p.suffix == ".html" for p in before)  # the chart page only on demand
    page = hosted.generate.chart_download(run_id, tok)["downloads"][0]
    assert Path(page).suffix == ".html" and len(tree()) == len(before) + 1
    with pytest.raises(gr.Error, match="no run .* in this session"):
        hosted.generate.chart_download(run_id, token(hosted))


def test_gradio_s_cache_is_cleaned_in_every_mode(bundled, tmp_path):
    from steer_ui.app.layout import build

    local = Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path))
    assert build(local).delete_cache == (3600, 7200)


def test_the_download_folder_is_removed_at_exit():
    code = "from steer_ui.app.context import temp_folder; f = temp_folder(); (f / 'x.csv').write_text('1'); print(f)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("steer-ui-") and not folder.exists()


# --- failures visible ------------------------------------------------------------------------------------
def test_a_log_that_fails_mid_run_is_reported_not_called_finished(hosted, caplog):
    """The attack: the log became unwritable mid-run; the screen said finished, the run stayed 'running'
    with 4 of 160 tokens, and nothing was reported anywhere."""
    store = hosted.ctx.store
    frames = hosted.generate.generate(prompt=PROMPT, vector="confidence", layers="16-19", coefs="4",
                                      max_new_tokens=16, probe_every=0, browser_id=token(hosted))
    next(frames)
    event.listen(store.engine, "connect", lambda conn, _: conn.execute("PRAGMA query_only=1"))
    store.engine.dispose()  # every connection from now on refuses writes, as a read-only file would
    with caplog.at_level("ERROR"):
        final = list(frames)[-1]
    assert "the run was not saved to the session log (UserError: cannot write the session log" in final["status"]
    assert final["result"]["status"] == "error"
    assert any("not saved to the session log" in r.getMessage() for r in caplog.records)
    with pytest.raises(gr.Error) as err:  # before a run: one clear message
        gen(hosted, final["browser_id"])
    assert said(err.value) == "cannot write the session log: attempt to write a readonly database"
    page = hosted.history.on_page_load(None)
    assert "cannot write the session log" in page["status"]


def test_errors_show_no_database_url_or_server_path(hosted, tmp_path):
    with pytest.raises(gr.Error) as err:
        hosted.history.open_run("nope", token(hosted))
    assert said(err.value) == "no run 'nope' in this session"
    assert str(tmp_path) not in str(err.value)
    bad = tmp_path / "uploads" / "broken.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(gr.Error) as err:
        gen(hosted, vector="uploaded or computed file", vector_file=str(bad))
    assert said(err.value).startswith("broken.safetensors: ") and str(tmp_path) not in str(err.value)


def test_the_session_secret_is_kept_private_across_restarts(tmp_path, monkeypatch):
    from steer_ui.app.sessions import SECRET_ENV, server_secret

    monkeypatch.delenv(SECRET_ENV, raising=False)
    first = server_secret(tmp_path)
    assert server_secret(tmp_path) == first and len(first) == 64
    assert (tmp_path / "session-secret").stat().st_mode & 0o777 == 0o600
    sid, token = SessionTokens(first).issue()
    assert SessionTokens(server_secret(tmp_path)).verify(token) == sid  # a restart keeps the sessions
    monkeypatch.setenv(SECRET_ENV, "shared by the replicas")
    assert server_secret(tmp_path) == b"shared by the replicas"
