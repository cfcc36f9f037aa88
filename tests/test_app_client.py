"""The app over HTTP, as scripts use it: gradio_client against the dashboard served on 127.0.0.1."""

from __future__ import annotations

import warnings

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from helpers import collect

from steer_ui.engine.run_settings import RunSettings, steered
from steer_ui.vectors.files import load_vector
from steer_ui.vectors.presets import preset_vector_path

warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")

PROMPT = "Is 7 larger than 5? Answer Yes or No."


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server[0], verbose=False)


def test_api_names_every_parameter(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/generate", "/stop", "/load_model", "/compute_vector", "/open_run"} <= set(api)
    names = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert names[:8] == ["prompt", "system_prompt", "chat_template", "vector", "vector_file", "layers", "coefs",
                         "scope"]
    assert not [n for n in names if n.startswith(("parameter_", "param_"))]
    # Every knob is a parameter, by its own name (the knobs are declared once: steer_ui/engine/knobs.py).
    from steer_ui.engine.knobs import KNOBS

    assert {k.name for k in KNOBS} | {"vector_file", "browser_id"} == set(names)
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["/generate"]["parameters"]}
    assert defaults["max_new_tokens"] == 128 and defaults["top_k"] == 0 and defaults["probe_min_mass"] == 0.1
    required = [p["parameter_name"] for p in api["/generate"]["parameters"] if not p["parameter_has_default"]]
    assert required == ["prompt"]


def test_generate_returns_texts_and_probe_series(client, bundled, app_server):
    job = client.submit(prompt=PROMPT, vector="confidence", layers="16-19", coefs="6, -6", max_new_tokens=16,
                        api_name="/generate")
    outputs = job.result()
    result = outputs[3]
    vector = load_vector(preset_vector_path("confidence", "smollm2-135m"))
    settings = RunSettings(PROMPT, rows=steered(vector, (6.0, -6.0), (16, 17, 18, 19)), max_new_tokens=16)
    _, _, probes, done = collect(bundled, settings)
    assert [r["text"] for r in result["rows"]] == [r.text for r in done.rows]
    assert [r["label"] for r in result["rows"]] == ["baseline", "coef +6", "coef -6"]
    for row in result["rows"]:
        assert row["probe"]["logodds"] == pytest.approx([p.logodds for p in probes if p.row == row["row"]],
                                                        abs=1e-3)
    assert result["status"] == "finished"
    assert len(outputs[4]) == 4  # JSONL and three CSVs, downloaded by the client (the chart page on demand)
    assert app_server[1].ctx.store.get_run(result["run_id"]).status == "finished"


def test_errors_reach_the_client_as_one_message(client):
    with pytest.raises(AppError, match="the prompt is empty"):
        client.predict(prompt="  ", api_name="/generate")
    with pytest.raises(AppError, match="out of range"):
        client.predict(prompt=PROMPT, vector="confidence", layers="0-99", coefs="2", api_name="/generate")
    with pytest.raises(AppError, match="cannot load model|unreachable|no such"):
        client.predict(model="/no/such/model", api_name="/load_model")
    with pytest.raises(AppError, match="no run"):
        client.predict(run_id="nope", browser_id="", api_name="/open_run")


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model"], "no such model path"),
    (["--db", "{garbage}"], "cannot open database"),
])
def test_app_launcher_bad_arguments_are_one_line_and_exit_2(args, message, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    garbage = tmp_path / "not-a-database.sqlite"
    garbage.write_text("this is not SQLite\n" * 100)
    args = [a.format(garbage=garbage) for a in args]
    proc = subprocess.run([sys.executable, "app.py", *args, "--port", "0"], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr
