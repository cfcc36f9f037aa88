"""Hosted mode (a shared server): caps, rate limit, model allow-list, private runs; steering per run."""

from __future__ import annotations

import json
import threading

import gradio as gr
import pytest
from helpers import collect, compute

from steer_ui.app.context import AppContext
from steer_ui.app.dashboard import Dashboard
from steer_ui.app.hosted import Limits, RateLimiter, rate_validator
from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.errors import UserError
from steer_ui.log.store import Store
from steer_ui.vectors.files import load_vector
from steer_ui.vectors.presets import preset_vector_path

PROMPT = "Is 7 a prime number?"


@pytest.fixture()
def hosted(bundled, tmp_path) -> Dashboard:
    limits = Limits(caps={"max_new_tokens": 16, "prompt_chars": 200}, steered_rows=2, pairs=3, sweep_questions=2,
                    runs_per_minute=3, allowed_models=("smollm2-135m",))
    return Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path,
                                limits=limits))


def gen(dash: Dashboard, browser: str | None = None, **over):
    args = dict(prompt=PROMPT, vector="confidence", layers="16-19", coefs="4", max_new_tokens=4)
    args.update(over)
    return list(dash.generate.generate(**args, browser_id=browser))


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("STEER_UI_MAX_NEW_TOKENS", "1024")
    monkeypatch.setenv("STEER_UI_ALLOWED_MODELS", "Qwen/Qwen3-0.6B, deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    limits = Limits.from_env()
    assert limits.cap("max_new_tokens") == 1024 and limits.allowed_models == ("Qwen/Qwen3-0.6B",
                                                                       "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    monkeypatch.setenv("STEER_UI_QUEUE_SIZE", "lots")
    with pytest.raises(UserError, match="STEER_UI_QUEUE_SIZE must be a whole number"):
        Limits.from_env()


@pytest.mark.parametrize("over, message", [
    ({"max_new_tokens": 17}, "limit of 16"),
    ({"prompt": "x" * 201}, "limit is 200"),
    ({"coefs": "1, 2, 3"}, "3 steered rows asked; this server's limit is 2"),
    ({"coefs": "1", "rows": "verbosity=2\nconfidence=3"}, "3 steered rows asked; this server's limit is 2"),
    ({"rows": "/etc/hosts.gguf=2"}, "no preset vector"),  # no server paths in hosted mode
    ({"probe_choices": ",".join(str(i) for i in range(9))}, "at most 8 choices"),
    ({"probe_choices": "Yes,No", "probe_gold": "7" * 65}, "gold answer must be 1 to 64 characters"),
    # Three 10-digit answers (SmolLM2 writes digits one by one): 55 fed tokens with every probe step.
    ({"probe_choices": ",".join(str(i) * 10 for i in range(1, 4))}, "add 55 positions to every reading; this "
     "server's limit is 32"),
])
def test_requests_over_a_cap_are_refused_naming_the_limit(hosted, over, message):
    with pytest.raises(gr.Error, match=message):
        gen(hosted, **over)
    assert hosted.ctx.store.list_runs() == []


def test_other_caps(hosted, tmp_path):
    pairs = "\n".join(json.dumps({"positive": f"p{i}", "negative": f"n{i}"}) for i in range(4))
    with pytest.raises(gr.Error, match="4 pairs; this server's limit is 3"):
        compute(hosted, pairs, None, "mean_diff", "all", progress=None)
    with pytest.raises(gr.Error, match="at most 2 are allowed here"):
        hosted.sweep.sweep("yesno:3", None, "0", vector="(none)", max_new_tokens=4, progress=None)
    with pytest.raises(gr.Error, match="this server only loads: smollm2-135m"):
        hosted.model.load("Qwen/Qwen3-0.6B", progress=None)
    big = tmp_path / "big.npy"
    big.write_bytes(b"\0" * (16 * 2**20 + 1))
    with pytest.raises(gr.Error, match="upload limit of 16 MB"):
        gen(hosted, vector="uploaded or computed file", vector_file=str(big))


def test_rate_limit_per_session(hosted):
    """The validator Gradio runs before a request takes a queue slot, keyed by the verified session."""
    check = rate_validator(hosted.ctx.rate, hosted.ctx.session_of)
    a, b = hosted.ctx.session_for(None)[1], hosted.ctx.session_for(None)[1]
    for _ in range(3):
        assert all(v["is_valid"] for v in check(prompt=PROMPT, coefs="", browser_id=a))
    refused = check(prompt=PROMPT, coefs="", browser_id=a)
    assert not refused[0]["is_valid"] and "rate limit: 3 runs a minute per session" in refused[0]["message"]
    assert len(refused) == 3 and all(v["is_valid"] for v in refused[1:])  # one per input of the event
    assert all(v["is_valid"] for v in check(prompt=PROMPT, coefs="", browser_id=b))  # another session is fine
    limiter = RateLimiter(2)
    limiter.admit("k", now=0)
    limiter.admit("k", now=1)
    with pytest.raises(UserError, match="try again in 59 s"):
        limiter.admit("k", now=1)
    limiter.admit("k", now=60.5)  # the first one has left the window


def test_a_browser_sees_only_its_own_runs(hosted):
    a, b = hosted.ctx.session_for(None)[1], hosted.ctx.session_for(None)[1]
    run_id = gen(hosted, browser=a)[-1]["result"]["run_id"]
    assert hosted.history.open_run(run_id, a)["result"]["run_id"] == run_id
    with pytest.raises(gr.Error, match="no run .* in this session"):
        hosted.history.open_run(run_id, b)

    class Link:
        query_params = {"run": run_id}

    out = hosted.history.on_page_load(b, Link())
    assert "Cannot open the linked run" in out["status"] and out["history"] == [] and out["browser_id"] == b
    assert hosted.history.history(b) == [] and hosted.history.export_session(b, "jsonl")["value"]
    (only_b,) = hosted.history.export_session(b, "jsonl")["value"]
    assert open(only_b).read() == ""


def test_a_client_over_the_rate_limit_is_refused_before_queueing(bundled, tmp_path):
    import socket

    from gradio_client import Client
    from gradio_client.exceptions import ValidationError

    from steer_ui.app.launch import launch_kwargs, queue_kwargs
    from steer_ui.app.layout import build

    limits = Limits(runs_per_minute=2)
    dash = Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path,
                                limits=limits))
    demo = build(dash)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue(**queue_kwargs(limits)).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                              quiet=True, **launch_kwargs(limits))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        for _ in range(2):
            client.predict(prompt=PROMPT, max_new_tokens=1, api_name="/generate")
        with pytest.raises(ValidationError, match="rate limit: 2 runs a minute"):
            client.predict(prompt=PROMPT, max_new_tokens=1, api_name="/generate")
        assert len(dash.ctx.store.list_runs()) == 2  # the refused request never ran
        other = dash.ctx.session_for(None)[1]  # another browser's session (its own quota)
        client.predict(prompt=PROMPT, max_new_tokens=1, browser_id=other, api_name="/generate")
    finally:
        demo.close()


def test_two_clients_steering_at_once_each_get_their_solo_result(app_server, bundled):
    """Steering is per run: two users with different vectors at the same moment get what they get alone."""
    from gradio_client import Client

    url = app_server[0]
    jobs = {"confidence": ("16-19", (16, 17, 18, 19)), "verbosity": ("16-19", (16, 17, 18, 19))}
    results: dict[str, dict] = {}

    def call(name: str) -> None:
        out = Client(url, verbose=False).predict(prompt=PROMPT, vector=name, layers=jobs[name][0], coefs="6",
                                                 max_new_tokens=12, api_name="/generate")
        results[name] = out[3]  # the documented return order: streams, chart, status, result, ...

    threads = [threading.Thread(target=call, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for name, (_, layers) in jobs.items():
        vector = load_vector(preset_vector_path(name, "smollm2-135m"))
        solo = collect(bundled, RunSettings(PROMPT, rows=steered(vector, (6.0,), layers), max_new_tokens=12))[3]
        assert [r["text"] for r in results[name]["rows"]] == [r.text for r in solo.rows]
    assert results["confidence"]["rows"][1]["text"] != results["verbosity"]["rows"][1]["text"]


def test_hosted_launch_settings():
    from steer_ui.app.launch import build_parser, launch_kwargs, queue_kwargs

    limits = Limits(upload_mb=8, queue_size=5)
    assert launch_kwargs(limits)["max_file_size"] == "8mb" and "max_file_size" not in launch_kwargs(None)
    assert queue_kwargs(limits)["max_size"] == 5 and "max_size" not in queue_kwargs(None)
    assert build_parser().parse_args(["--hosted"]).hosted and not build_parser().parse_args([]).hosted


def test_out_of_memory_ends_the_run_with_a_message_and_the_next_run_works(hosted, monkeypatch):
    import torch

    model = hosted.ctx.lm.model
    real = model.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    final = gen(hosted, max_new_tokens=8)[-1]
    assert "out of memory" in final["status"] and "try fewer tokens" in final["status"]
    assert final["result"]["status"] == "error"
    run = hosted.ctx.store.get_run(final["result"]["run_id"])
    assert run.status == "error" and "OutOfMemoryError" in run.error
    assert not hosted.ctx.model_lock.locked() and not hosted.ctx.active
    monkeypatch.setattr(model, "forward", real)
    assert "finished" in gen(hosted, max_new_tokens=4)[-1]["status"]


def test_soak_fifty_generations_keep_memory_and_files_flat(app_server):
    """50 short runs through the served app: open file descriptors and memory stay flat."""
    import gc
    import os

    import psutil
    from gradio_client import Client

    client = Client(app_server[0], verbose=False, download_files=False)
    proc = psutil.Process()

    def one() -> None:
        out = client.predict(prompt=PROMPT, vector="confidence", layers="16-19", coefs="4", max_new_tokens=1,
                             probe_every=0, api_name="/generate")
        assert out[3]["status"] == "finished"

    for _ in range(10):  # warm up: caches, thread pools, lazily imported modules
        one()
    gc.collect()
    fds, rss = proc.num_fds(), proc.memory_info().rss
    for _ in range(40):
        one()
    gc.collect()
    assert proc.num_fds() - fds <= 5
    assert proc.memory_info().rss - rss < 150 * 2**20
    assert len([p for p in app_server[1].ctx.files.iterdir() if p.is_dir()]) <= 40  # pruned
    assert os.path.isdir(app_server[1].ctx.files)
