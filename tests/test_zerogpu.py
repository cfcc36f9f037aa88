"""ZeroGPU: the real ``spaces`` package runs the decode in a forked worker; only tokens come back.

The check runs in its own interpreter (``zerogpu_check.py``), because ``spaces`` switches to ZeroGPU
mode at import. There, only the GPU booking API and the CUDA attach are stand-ins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("spaces", reason="the spaces package (requirements-dev.txt) is not installed")


def test_dashboard_on_zerogpu_decodes_in_a_worker_and_logs_here(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPACES_", "ZEROGPU_"))}
    log = tmp_path / "log.txt"
    with log.open("w") as out:  # a file, not a pipe: a stray worker holding a pipe would hang the wait
        proc = subprocess.run([sys.executable, str(Path(__file__).parent / "zerogpu_check.py"), str(tmp_path)],
                              env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, log.read_text()[-4000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["active"]
    # Decoded in forked workers (one per GPU function, reused across runs), never in the app process.
    assert len(seen["worker_pids"]) == 2 and seen["main_pid"] not in seen["worker_pids"]
    # Same tokens and readings as decoding in this process; the log written here.
    assert seen["texts_match"] and seen["logodds_gap"] < 1e-3
    assert seen["stored"] == {"status": "finished", "tokens": [2, 12]}
    # Mistakes are refused before a GPU is booked; model switching is refused with the reason.
    assert seen["bad_layers"] == "layer 30 is out of range: the model has 30 layers (0-29)"
    assert seen["booked_for_bad_layers"] == 0
    assert "fixed at startup" in seen["switch_model"]
    # A closed tab stops the worker's decode at its next step: the engine's own done event says cancelled.
    assert seen["stopped_run"]["status"] == "cancelled" and seen["stopped_run"]["finish"] == "cancelled"
    assert seen["stopped_run"]["steps"] is not None and seen["stopped_run"]["tokens"] < 1500
    assert seen["after_stop"] == "finished" and seen["computed_band"] == "10-12"
    # Each GPU booking carries the visitor's token (the request reached the engine thread) and a duration.
    assert seen["schedule_tokens"] == ["visitor-a"] * 4
    assert seen["durations"][0] == 20 and seen["durations"][1] == 110
    assert seen["failed_releases"] == 0 and seen["startup_reported"]
