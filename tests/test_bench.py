"""The benchmark runs end to end in its short mode, so it cannot rot. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import collect

from steer_ui.engine.run_settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_mode_reports_every_case(tiny_dirs, tmp_path):
    """Every case, memory included, on a tiny model (the bundled one took 100 s of the suite's 25 minutes
    for the same code path; its numbers are the benchmark's own job, run by hand)."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "steer_ui.bench", "--quick", "--model", str(tiny_dirs["llama"]),
                        "--json", str(out)], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
                       check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert [c["case"] for c in report["cases"]] == ["1", "2", "3", "4", "5", "6"]
    for case in report["cases"]:
        assert case["tok_s_per_stream"] > 0 and len(case["seconds"]) == 1
        assert case["peak_mb"] > 0 and case["rss_mb"] is not None  # every case grows a KV cache
    # Which kernel each weight shape took is decided by timing, per machine: only its form is checked.
    assert isinstance(report["few_row_linears"], dict) and report["compiled"] is False
    assert all(isinstance(rows, list) for rows in report["few_row_linears"].values())
    assert [p["context"] for p in report["probe_cost"]] == [32, 128]
    assert report["ttft_s"] > 0
    assert "| 4 | as 3, probe every token |" in r.stdout and "| target | met | measured |" in r.stdout


def test_benchmark_with_compiled_steps_reports_their_warm_up(tiny_dirs, tmp_path):
    """The compiled path end to end (dynamo's aot_eager backend on a tiny model: the tracing without the
    minutes of code generation): the eager twin of case 4, the warm-up per shape and a warm restart."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "STEER_UI_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "steer_ui.bench", "--quick", "--model", str(tiny_dirs["llama"]),
                        "--compile", "--compile-backend", "aot_eager", "--no-memory", "--contended", "--json",
                        str(out)],
                       capture_output=True,
                       text=True, timeout=900, env=env, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["compiled"] is True
    assert [c["case"] for c in report["cases"]] == ["1", "2", "3", "4", "4e", "5", "6"]
    assert set(report["fast_path_warm_s"]) == {"1 row x 1024 positions", "4 rows x 1024 positions"}
    assert report["restart_first_token_s"] > 0
    assert "| 4e | as 4, eager |" in r.stdout and "4 >= 5x as 4, eager" in r.stdout
    assert "warm-up of the engine's compiled steps, 4 rows x 1024 positions" in r.stdout
    assert set(report["contended_tok_s"]) == {"alone", "beside", "beside_fixed"}
    assert "case 3 beside one other CPU-bound process:" in r.stdout


def test_peak_tensor_memory_counts_what_was_live_at_once():
    import torch

    from steer_ui.bench.memory import peak_tensor_mb

    def work() -> None:
        a = torch.ones(4, 2**18)  # 4 MB
        b = torch.ones(2, 2**18)  # 2 MB, while a is live
        del a, b
        c = torch.ones(5, 2**18)  # 5 MB alone
        del c

    assert 6.0 <= peak_tensor_mb(work) < 6.5


def test_ignore_eos_generates_exactly_max_new_tokens(bundled):
    s = RunSettings("Say only the word yes.", max_new_tokens=40, probe_every=0)
    natural = collect(bundled, s)[3].rows[0]
    assert natural.finish_reason == "eos" and len(natural.token_ids) < 40
    forced = collect(bundled, RunSettings("Say only the word yes.", max_new_tokens=40, ignore_eos=True,
                                          probe_every=0))[3].rows[0]
    assert forced.finish_reason == "length" and len(forced.token_ids) == 40
    assert forced.token_ids[:len(natural.token_ids)] == natural.token_ids
