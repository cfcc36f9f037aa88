"""Deployment files agree with the app: no Docker engine runs here, so the Dockerfile is checked as text."""

from __future__ import annotations

import shlex
from pathlib import Path

from steer_ui.app.launch import build_parser

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def env() -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def test_dockerfile_runs_the_dashboard_on_the_port_it_exposes_and_checks():
    ins = instructions()
    cmd = [rest for word, rest in ins if word == "CMD"][-1]
    assert cmd == '["python", "app.py"]' and (ROOT / "app.py").is_file()
    exposed = [rest for word, rest in ins if word == "EXPOSE"]
    e = env()
    assert exposed == ["7860"] and e["GRADIO_SERVER_PORT"] == "7860" and e["GRADIO_SERVER_NAME"] == "0.0.0.0"
    health = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert len(health) == 1 and "127.0.0.1:7860/" in health[0] and "curl" not in health[0]
    # The app reads the port and host the image sets.
    import os
    old = {k: os.environ.get(k) for k in ("GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME")}
    try:
        os.environ.update(GRADIO_SERVER_PORT=e["GRADIO_SERVER_PORT"], GRADIO_SERVER_NAME=e["GRADIO_SERVER_NAME"])
        args = build_parser().parse_args([])
        assert (args.port, args.host) == (7860, "0.0.0.0")
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_dockerfile_user_volume_and_sources():
    ins = instructions()
    assert ("USER", "app") in ins and any("--uid 1000" in rest for word, rest in ins if word == "RUN")
    assert ("VOLUME", "/data") in ins
    e = env()
    assert e["STEER_UI_DB"].startswith("/data/") and e["HF_HOME"].startswith("/data/")
    assert not e["STEER_UI_CACHE"].startswith("/data")  # baked into the image, not hidden by the volume
    for word, rest in ins:
        if word == "COPY":
            for src in [p for p in rest.split() if not p.startswith("--")][:-1]:
                assert (ROOT / src).exists(), src
    assert any(w == "ARG" and r.startswith("TORCH_INDEX=") for w, r in ins)


def test_the_image_installs_what_setup_installs():
    """The lock, as scripts/setup.sh installs it: hashes checked, nothing resolved, torch at its pin."""
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for step in ("--no-deps --require-hashes -r requirements.lock", "grep -E '^torch==' requirements.txt",
                 "--no-deps --no-build-isolation"):
        assert step in runs and step.replace("requirements.lock", '"$lock"') in setup, step


def test_auth_parsing():
    import pytest

    from steer_ui.app.launch import parse_auth
    from steer_ui.errors import UserError

    assert parse_auth("ana:pw1, bo:p:w2") == [("ana", "pw1"), ("bo", "p:w2")]
    assert parse_auth("") is None and parse_auth(None) is None
    for bad in ("ana", "ana:", ":pw", "ana:pw,"):
        with pytest.raises(UserError, match="user:password"):
            parse_auth(bad)


def test_a_password_protected_app_refuses_clients_without_it(bundled, tmp_path):
    import socket

    import pytest
    from gradio_client import Client

    from steer_ui.app.context import AppContext
    from steer_ui.app.dashboard import Dashboard
    from steer_ui.app.launch import launch_kwargs, parse_auth
    from steer_ui.app.layout import build
    from steer_ui.log.store import Store

    demo = build(Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        auth=parse_auth("ana:secret"), **launch_kwargs())
    url = f"http://127.0.0.1:{port}/"
    try:
        with pytest.raises(Exception):
            Client(url, verbose=False).predict(api_name="/stop")
        with pytest.raises(Exception):
            Client(url, auth=("ana", "wrong"), verbose=False)
        assert Client(url, auth=("ana", "secret"), verbose=False).predict(api_name="/stop") in (None, ())
        # Gradio leaves these two routes without its login check: steer-ui's middleware adds it.
        import httpx

        body = {"session_hash": "x", "fn_index": 0, "event_id": "y"}
        assert httpx.post(f"{url}gradio_api/cancel", json=body).status_code == 401
        assert httpx.get(f"{url}gradio_api/heartbeat/x", timeout=5).status_code == 401
        with httpx.Client() as signed_in:
            assert signed_in.post(f"{url}login", data={"username": "ana", "password": "secret"}).status_code == 200
            assert signed_in.post(f"{url}gradio_api/cancel", json=body).status_code != 401
    finally:
        demo.close()


def test_spaces_front_matter_matches_the_app():
    import gradio

    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    meta = dict(line.split(": ", 1) for line in text.split("---\n")[1].splitlines() if ": " in line)
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    assert meta["sdk_version"] == gradio.__version__
    assert f"gradio=={meta['sdk_version']}" in (ROOT / "requirements.txt").read_text()
