"""The dashboard as it runs on a ZeroGPU Space: the real ``spaces`` package, only its device API faked.

Run by ``test_zerogpu.py`` in a fresh interpreter (``spaces`` patches torch when it is imported on a
ZeroGPU Space, and that must not leak into other tests): ``python tests/zerogpu_check.py OUTDIR``.
What is emulated: the device API that books a GPU (a local HTTP server that always says yes) and
spaces' torch layer, which patches CUDA and moves the weights onto the booked GPU (this machine has
no CUDA: it gets the no-op layer spaces itself uses when torch is missing). Everything else is the
real thing: ``spaces.GPU`` forks a worker, pickles the arguments there and the events back, and the
app is served by Gradio and driven with gradio_client. Writes what it saw to OUTDIR/seen.json.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

warnings.filterwarnings("ignore")
calls: list[tuple[str, dict[str, str]]] = []


class DeviceAPI(BaseHTTPRequestHandler):
    """ZeroGPU's scheduler: every request gets the one fake GPU at once."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        calls.append((url.path, {k: v[0] for k, v in parse_qs(url.query).items()}))
        body = b""
        if url.path == "/schedule":
            booked = sum(1 for path, _ in calls if path == "/schedule")
            body = json.dumps({"idle": booked > 1, "nvidiaIndex": 0, "nvidiaUUID": "GPU-fake",
                               "allowToken": f"token-{booked}"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def main(out: Path) -> dict:
    api = ThreadingHTTPServer(("127.0.0.1", 0), DeviceAPI)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    (out / "cgroup").write_text("0::/fake-space\n")
    os.environ.update(SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL=f"http://127.0.0.1:{api.server_port}",
                      ZEROGPU_PROC_SELF_CGROUP_PATH=str(out / "cgroup"))
    # spaces' torch layer patches CUDA calls and moves weights onto the booked GPU; a CPU build of
    # torch has no CUDA to patch. Its stand-in is what spaces itself uses when torch is missing.
    def nothing(*args, **kwargs):
        return None

    sys.modules["spaces.zero.torch"] = types.SimpleNamespace(
        enter_mode=nothing, patch=nothing, unpatch=nothing, init=nothing, move=nothing,
        pack=lambda *a, **k: 0, size=lambda *a, **k: 0, is_in_bad_fork=lambda *a, **k: False)
    import spaces  # noqa: F401 - the real package, in ZeroGPU mode

    sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
    from conftest import serve_dashboard
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from helpers import collect

    from steer_ui.engine import worker as gpu
    from steer_ui.engine.run_settings import RunSettings, steered
    from steer_ui.model.loading import load_model
    from steer_ui.vectors.files import load_vector
    from steer_ui.vectors.presets import preset_vector_path

    seen: dict = {"active": gpu.ACTIVE, "main_pid": os.getpid()}
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    gpu.attach(lm)
    demo, url, dash = serve_dashboard(lm, out)
    client = Client(url, verbose=False, headers={"X-IP-Token": "visitor-a"})
    prompt = "Is 7 larger than 5? Answer Yes or No."

    # 1. A run decoded in the worker, logged here, equals the same run decoded in this process.
    result = client.predict(prompt=prompt, vector="confidence", layers="16-19", coefs="6", max_new_tokens=12,
                            api_name="/generate")[3]
    vector = load_vector(preset_vector_path("confidence", "smollm2-135m"))
    settings = RunSettings(prompt, rows=steered(vector, (6.0,), (16, 17, 18, 19)), max_new_tokens=12)
    _, _, probes, done = collect(lm, settings)
    seen["texts_match"] = [r["text"] for r in result["rows"]] == [r.text for r in done.rows]
    seen["logodds_gap"] = max(abs(a - p.logodds) for row in result["rows"]
                              for a, p in zip(row["probe"]["logodds"], [p for p in probes if p.row == row["row"]]))
    stored = dash.ctx.store.get_run(result["run_id"])
    seen["stored"] = {"status": stored.status, "tokens": [len(s.token_ids) for s in stored.streams]}

    # 2. A mistake is refused here, before a GPU is booked.
    booked = sum(1 for path, _ in calls if path == "/schedule")
    try:
        client.predict(prompt=prompt, vector="confidence", layers="0-99", coefs="2", api_name="/generate")
        seen["bad_layers"] = "accepted"
    except AppError as err:
        seen["bad_layers"] = str(err)
    seen["booked_for_bad_layers"] = sum(1 for path, _ in calls if path == "/schedule") - booked

    # 3. Stop (a closed tab, to the server) mid-run: the worker stops at its next step, the run is saved.
    job = client.submit(prompt=prompt, coefs="", max_new_tokens=1500, ignore_eos=True, api_name="/generate")
    deadline = time.monotonic() + 120
    while len(job.outputs()) < 3 and time.monotonic() < deadline:  # a few frames streamed
        time.sleep(0.2)
    started = time.monotonic()
    job.cancel()
    while dash.ctx.model_lock.locked() and time.monotonic() - started < 60:
        time.sleep(0.05)
    seen["stop_freed_s"] = round(time.monotonic() - started, 2)
    runs = dash.ctx.store.list_runs(limit=1)
    stopped = dash.ctx.store.get_run(runs[0].id)
    seen["stopped_run"] = {"status": stopped.status, "tokens": len(stopped.streams[0].token_ids),
                           "finish": stopped.streams[0].finish_reason, "steps": stopped.steps}

    # 4. The next run after a Stop works (the worker is reused), and so does computing a vector there.
    again = client.predict(prompt=prompt, max_new_tokens=4, api_name="/generate")[3]
    seen["after_stop"] = again["status"]
    pairs = "\n".join(json.dumps({"positive": f"I am sure {i}.", "negative": f"I am unsure {i}."}) for i in range(4))
    vector_out = client.predict(pairs_text=pairs, pairs_file=None, method="mean_diff", layers="10-12",
                                api_name="/compute_vector")
    seen["computed_band"] = vector_out[-1]
    try:
        client.predict(model="HuggingFaceTB/SmolLM2-360M-Instruct", api_name="/load_model")
        seen["switch_model"] = "accepted"
    except AppError as err:
        seen["switch_model"] = str(err)
    seen["worker_pids"] = sorted({int(q["pid"]) for path, q in calls if path == "/allow"})
    seen["schedule_tokens"] = [q.get("token") for path, q in calls if path == "/schedule"]
    seen["durations"] = [int(q["durationSeconds"]) for path, q in calls if path == "/schedule"]
    seen["failed_releases"] = sum(1 for path, q in calls if path == "/release" and q.get("fail") == "true")
    seen["startup_reported"] = any(path == "/startup-report" for path, _ in calls)
    demo.close()
    return seen


if __name__ == "__main__":
    import multiprocessing

    (Path(sys.argv[1]) / "seen.json").write_text(json.dumps(main(Path(sys.argv[1]))))
    for worker in multiprocessing.active_children():  # ZeroGPU's workers live as long as the app
        worker.kill()
    os._exit(0)  # Gradio's threads would keep a normal exit waiting
