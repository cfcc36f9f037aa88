"""Sweeps on Ray (experiments.cluster), on this machine's CPUs: the same rows as in process, a worker
SIGKILLed mid-unit costing nothing, Ctrl-C then resume from the command line, GPU placement on a two-node
cluster of logical GPUs, and the message without Ray. The first test runs the CLI, which starts and stops
its own Ray instance; the rest share one local instance (ray.init(num_cpus=2))."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest

from steer_ui.engine.run_settings import RunSettings
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.experiments.arms import arms_from_specs
from steer_ui.experiments.questions import load_questions
from steer_ui.experiments.sweep import SweepConfig, run_sweep
from steer_ui.vectors.presets import resolve_vector

ray = pytest.importorskip("ray")
from steer_ui.experiments.cluster import Cluster, run_sweep_on_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ["baseline", "budget:min=12", "reconsideration=4@15-18"]


def config(n: int = 3) -> SweepConfig:
    arms = arms_from_specs(ARMS, lambda name: resolve_vector(name, "smollm2-135m"), None, Scope())
    return SweepConfig(questions=load_questions(f"yesno:{n}"), coefs=(), extra_arms=tuple(arms),
                       template=RunSettings("", max_new_tokens=16, probe_every=4))


def rows(folder: Path) -> list[dict]:
    with (folder / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def by_key(folder: Path) -> dict[tuple, dict]:
    got = rows(folder)
    keys = [(r["question_id"], r["arm"], r["sample"]) for r in got]
    assert len(keys) == len(set(keys)), Counter(keys).most_common(1)  # every row exactly once
    return {k: r for k, r in zip(keys, got)}


def same_results(a: dict, b: dict) -> None:
    """The same text, grade, length, dynamics and unit per question and arm; the final reading within float
    rounding (a worker splitting 2 cores decodes with 1 thread, this process with 2: logits agree to ~3e-5)."""
    assert a.keys() == b.keys()
    for key in a:
        for column in ("text", "correct", "cot_tokens", "flips", "unit"):
            assert a[key][column] == b[key][column], (key, column)
        assert float(a[key]["final_logodds"]) == pytest.approx(float(b[key]["final_logodds"]), abs=2e-3)


def ray_processes() -> list[str]:
    names = []
    for p in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if p.info["name"] in ("raylet", "gcs_server") or line.startswith("ray::"):
            names.append(p.info["name"])
    return names


def test_ctrl_c_stops_the_cli_sweep_and_the_next_run_resumes(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) mid-sweep: exit 130, the finished
    questions kept, the Ray instance it started gone; the same command again runs only the rest."""
    assert not ray.is_initialized() and not ray_processes()
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "steer_ui", "sweep", "--questions", "yesno:4", "--arm", "baseline",
           "--max-new-tokens", "16", "--out", str(out), "--ray", "--workers", "2", "--no-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "1/4 runs" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    text = "".join(seen) + err
    assert proc.returncode == 130, text
    assert "sweep on a local Ray instance: 2 workers (cpu, cpu), 1 CPU each" in text
    assert "stopped:" in text and "Traceback" not in text
    kept = len(by_key(out))
    assert 1 <= kept < 4
    assert not ray_processes()  # no stray raylet, GCS or workers
    again = subprocess.run([*cmd, "--jsonl"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resumed: {kept} of 4 question runs were already in results.csv" in again.stderr
    events = [json.loads(line) for line in again.stdout.splitlines()]  # --jsonl: progress, then the summary
    assert [e["done"] for e in events[:-1]] == list(range(kept + 1, 5)) and all(e["workers"] for e in events[:-1])
    assert events[-1]["event"] == "summary" and [a["arm"] for a in events[-1]["arms"]] == ["baseline"]
    assert len(by_key(out)) == 4 and not ray_processes()
    workers = json.loads((out / "workers.json").read_text())
    assert len(workers) == 2 and sum(w["units"] for w in workers.values()) == 4 - kept


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(bundled, tmp_path_factory) -> dict:
    """The in-process sweep's rows, the reference for every Ray run here."""
    out = tmp_path_factory.mktemp("in-process")
    run_sweep(bundled, config(), out)
    return by_key(out)


def test_two_workers_one_killed_mid_unit_give_the_in_process_rows_once_written_by_the_driver(
        in_process, local_ray, tmp_path):
    """Two workers; after the first unit, the worker running the next one is SIGKILLed: Ray restarts it and
    the unit runs again. Every row once, as in process; results and the session log written by the driver."""
    from steer_ui.log.archive import record_events, run_record
    from steer_ui.log.store import Store

    store = Store(str(tmp_path / "log.sqlite"))
    started, events, killed = [], [], []

    def kill_one(event: dict) -> None:
        events.append(event)
        for p in psutil.process_iter(["cmdline"]):
            if not killed and " ".join(p.info["cmdline"] or []).startswith("ray::SweepWorker.run"):
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)

    result = run_sweep_on_ray(config(), tmp_path / "ray", "smollm2-135m", Cluster(workers=2), store=store,
                              on_start=started.append, on_unit=kill_one)
    assert killed, "no worker was running a unit after the first finished"
    got = by_key(tmp_path / "ray")
    same_results(got, in_process)
    assert not (tmp_path / "ray" / "failed.jsonl").exists()
    assert started == ["on a local Ray instance: 2 workers (cpu, cpu), 1 CPU each"]
    assert [e["done"] for e in events] == [1, 2, 3] and all(e["line"] for e in events)
    workers = json.loads((tmp_path / "ray" / "workers.json").read_text())  # the restarted worker is a new one
    assert sum(w["units"] for w in workers.values()) == 3 and {r["worker"] for r in got.values()} <= set(workers)
    assert [s.arm for s in result.summary] == ARMS and result.summary[1].vs_baseline is not None
    # The session log, written by the driver from the workers' events: each run once, replaying as it ran.
    runs = store.list_runs()
    assert len(runs) == 3 and {r.id for r in runs} == {r["run_id"] for r in got.values()}
    for q in config().questions:
        run_id = got[(q.id, "baseline", "0")]["run_id"]
        done = list(record_events(run_record(store, store.get_run(run_id))))[-1]
        assert [x.text for x in done.rows] == [got[(q.id, arm, "0")]["text"] for arm in ARMS]


def test_the_dashboard_refuses_ray_in_hosted_mode(capsys):
    from steer_ui.app.launch import main

    assert main(["--hosted", "--ray"]) == 2
    assert "error: --ray is for a dashboard of your own" in capsys.readouterr().err


def test_the_sweep_tab_on_two_nodes_with_a_gpu_each_one_worker_per_gpu_and_a_bad_unit_failing_alone(
        bundled, tmp_path):
    """The dashboard's Sweep tab on a cluster (``app.py --ray ADDRESS``) of two nodes with a logical GPU each
    (Ray's GPU count is a scheduling label): the default worker count is one per GPU, each holding one; the
    run is logged into the browser's History; a question longer than the model's context fails alone, once,
    into failed.jsonl with its one-line message, and the status says so."""
    from ray.cluster_utils import Cluster as TwoNodes

    from steer_ui.app.context import AppContext
    from steer_ui.app.dashboard import Dashboard
    from steer_ui.log.store import Store

    if ray.is_initialized():
        ray.shutdown()
    nodes = TwoNodes(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    nodes.add_node(num_cpus=1, num_gpus=1)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "short", "question": "Is 7 prime?", "answer": "Yes"}) + "\n" +
                         json.dumps({"id": "too-long", "question": "word " * 9000 + "?", "answer": "Yes"}) + "\n")
    dash = Dashboard(AppContext(lm=bundled, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path / "files",
                                cluster=Cluster(address=nodes.address)))
    sid, token = dash.ctx.session_for(None)
    try:
        out = dash.sweep.sweep(questions=str(questions), sweep_coefs="", sweep_arms="baseline\nbudget:min=12",
                               browser_id=token, progress=None, prompt="", vector="(none)", layers="", scope="all",
                               max_new_tokens=12, probe_every=4)
    finally:
        ray.shutdown()
        nodes.shutdown()
    assert "finished**: 2 questions x 2 arms" in out["sweep_status"] and "1 units failed" in out["sweep_status"]
    assert [row[0] for row in out["sweep_table"]] == ["baseline", "budget:min=12"]
    folder = Path(out["sweep_files"][0]).parent
    workers = json.loads((folder / "workers.json").read_text())
    assert sorted(w["gpus"] for w in workers.values()) == [["0"], ["0"]]  # one logical GPU on each node
    assert [r["question_id"] for r in rows(folder)] == ["short", "short"]
    failed = [json.loads(line) for line in (folder / "failed.jsonl").read_text().splitlines()]
    assert [f["question_id"] for f in failed] == ["too-long"]
    assert failed[0]["error"].startswith("prompt (") and "Traceback" not in failed[0]["error"]
    assert len(dash.history.history(token)) == 1  # the worker's run, logged by the driver in this session


def test_without_ray_one_message_names_the_install(monkeypatch, tmp_path, capsys):
    from steer_ui.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError, match=r"pip install 'steer-ui\[ray\]'"):
        run_sweep_on_ray(config(1), tmp_path / "x", "smollm2-135m")
    rc = main(["sweep", "--questions", "yesno:1", "--arm", "baseline", "--out", str(tmp_path / "y"), "--ray",
               "--no-log"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: sweeps on a cluster need Ray: pip install 'steer-ui[ray]'" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
