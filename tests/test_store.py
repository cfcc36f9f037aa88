"""The session log on real SQLite files: recording, cancel, kill, migration, export/import, replay."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import random_vector

from steer_ui.engine.decode import run
from steer_ui.engine.events import DoneEvent, ProbeEvent, TokenEvent
from steer_ui.engine.run_settings import ProbeSettings, RunSettings, Sampling
from steer_ui.errors import UserError
from steer_ui.log.archive import export, import_jsonl, replay_settings
from steer_ui.log.recorder import RunRecorder
from steer_ui.log.store import Store

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Is 21 a prime number? Answer yes or no."


def record(store, lm, settings, session=None, cancel=None, stop_after=None):
    session = session or store.new_session("cli")
    rec = RunRecorder(store, session, lm, settings, flush_tokens=8, flush_s=0.2)
    events = []
    for ev in run(lm, settings, cancel):
        events.append(ev)
        rec(ev)
        if stop_after is not None and isinstance(ev, TokenEvent) and ev.step == stop_after:
            break
    rec.close()
    assert rec.error is None
    return rec.run_id, events


@pytest.fixture(scope="module")
def vec(bundled):
    return random_vector(bundled, range(12, 16), scale=4.0)


def test_a_run_is_recorded_completely(bundled, vec, tmp_path):
    store = Store(str(tmp_path / "log.sqlite"))
    s = RunSettings(PROMPT, vector=vec, coefs=(2.0, -2.0), max_new_tokens=20, probe=ProbeSettings(every=3))
    run_id, events = record(store, bundled, s)
    done = events[-1]
    stored = store.get_run(run_id)
    assert stored.status == "finished" and stored.steps == done.timing.steps
    assert [(r.row, r.token_ids, r.text, r.finish_reason) for r in stored.streams] == \
        [(r.row, r.token_ids, r.text, r.finish_reason) for r in done.rows]
    probes = [e for e in events if isinstance(e, ProbeEvent)]
    points = store.probe_points(run_id)
    assert [(p.row, p.step, p.logodds, p.mass) for p in points] == \
        sorted((p.row, p.step, p.logodds, p.mass) for p in probes)
    assert stored.settings["coefs"] == [2.0, -2.0] and stored.vector_hash == vec.content_hash()
    assert sqlite3.connect(tmp_path / "log.sqlite").execute("pragma journal_mode").fetchone()[0] == "wal"


def test_cancelled_and_abandoned_runs_keep_what_they_produced(bundled, tmp_path):
    store = Store(str(tmp_path / "log.sqlite"))
    cancel = threading.Event()
    s = RunSettings(PROMPT, max_new_tokens=60, probe=ProbeSettings(every=2))
    session = store.new_session("cli")
    rec = RunRecorder(store, session, bundled, s, flush_s=0.2)
    for ev in run(bundled, s, cancel):
        rec(ev)
        if isinstance(ev, TokenEvent) and ev.step == 4:
            cancel.set()
    rec.close()
    stored = store.get_run(rec.run_id)
    assert stored.status == "cancelled" and len(stored.streams[0].token_ids) == 5

    run_id, events = record(store, bundled, s, session=session, stop_after=6)  # consumer walks away
    stored = store.get_run(run_id)
    assert stored.status == "cancelled"
    assert stored.streams[0].token_ids == [e.token_id for e in events if isinstance(e, TokenEvent)]


def test_error_is_recorded(bundled, tmp_path):
    store = Store(str(tmp_path / "log.sqlite"))
    s = RunSettings(PROMPT, max_new_tokens=8)
    rec = RunRecorder(store, store.new_session("cli"), bundled, s)
    events = run(bundled, s)
    rec(next(events))
    rec(next(events))
    rec.fail("RuntimeError: out of memory")
    rec.close()
    stored = store.get_run(rec.run_id)
    assert stored.status == "error" and "out of memory" in stored.error


def test_sigkill_mid_run_leaves_a_clean_database(bundled, tmp_path):
    db = tmp_path / "log.sqlite"
    store = Store(str(db))
    earlier, _ = record(store, bundled, RunSettings(PROMPT, max_new_tokens=6))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "steer_ui", "generate", "--db", str(db), "--prompt",
                             "Write a long story about a prime number.", "--max-new-tokens", "2000", "--jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        for _ in range(80):  # wait for the first flushed batch (every 64 tokens or 1 s)
            line = proc.stdout.readline().decode()
            if '"step": 70' in line:
                break
        time.sleep(1.5)
        running = [r for r in store.list_runs() if r.status == "running"]
        assert len(running) == 1 and running[0].tokens > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    reopened = Store(str(db))
    assert sqlite3.connect(db).execute("pragma integrity_check").fetchone()[0] == "ok"
    by_id = {r.id: r for r in reopened.list_runs()}
    assert by_id[earlier].status == "finished"
    killed = by_id[running[0].id]
    assert killed.status == "interrupted" and killed.tokens >= running[0].tokens


def test_database_from_older_version_upgrades_in_place(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    db = tmp_path / "old.sqlite"
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "steer_ui" / "migrations"))
    with create_engine(f"sqlite:///{db}").begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    con = sqlite3.connect(db)
    assert "owner" not in [c[1] for c in con.execute("pragma table_info(runs)")]
    con.execute("insert into sessions values ('s1', 'cli', '', '2026-01-01', '2026-01-01')")
    for rid, status in (("old-done", "finished"), ("old-live", "running")):
        con.execute("insert into runs (id, session_id, created, status, model_id, model_source, dtype, device, "
                    "settings, prompt_text, prompt_ids, layers, probe_suffix_ids, probe_choices) values "
                    f"('{rid}', 's1', '2026-01-01', '{status}', 'm', '', 'float32', 'cpu', "
                    """'{"prompt": "old", "coefs": []}', 'old', '[1]', '[]', '[]', '[]')""")
    con.execute("insert into streams (run_id, row, label, coef, token_ids, text) values "
                "('old-done', 0, 'baseline', 0, '[5, 6]', 'hi')")
    con.commit()
    con.close()
    store = Store(str(db))
    con = sqlite3.connect(db)
    assert con.execute("select version_num from alembic_version").fetchone()[0] == "0002"
    assert "owner" in [c[1] for c in con.execute("pragma table_info(runs)")]
    assert store.get_run("old-done").streams[0].token_ids == [5, 6]
    assert store.get_run("old-live").status == "interrupted"


def test_export_import_round_trip(bundled, vec, tmp_path):
    a = Store(str(tmp_path / "a.sqlite"))
    s = RunSettings(PROMPT, vector=vec, coefs=(3.0,), max_new_tokens=10, probe=ProbeSettings(every=5))
    record(a, bundled, s)
    record(a, bundled, RunSettings(PROMPT, max_new_tokens=5, sampling=Sampling(temperature=0.8, seed=3)))
    export(a, tmp_path / "a.jsonl", "jsonl")
    b = Store(str(tmp_path / "b.sqlite"))
    assert import_jsonl(b, tmp_path / "a.jsonl") == (2, 0)
    assert import_jsonl(b, tmp_path / "a.jsonl") == (0, 2)
    export(b, tmp_path / "b.jsonl", "jsonl")
    first = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    again = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert first == again and len(first) == 2 and first[0]["vector"]["hash"] == vec.content_hash()
    paths = export(b, tmp_path / "flat.csv", "csv")
    assert [p.name for p in paths] == ["flat_runs.csv", "flat_streams.csv", "flat_probes.csv"]
    assert len(paths[1].read_text().strip().splitlines()) == 1 + 2 + 1  # header + 2 rows + 1 row
    n_probes = sum(len(r["probes"]) for r in first)
    assert len(paths[2].read_text().strip().splitlines()) == 1 + n_probes


def test_two_runs_logging_at_once_lose_nothing(bundled, tmp_path):
    db = str(tmp_path / "log.sqlite")
    events = list(run(bundled, RunSettings(PROMPT, max_new_tokens=40, probe=ProbeSettings(every=1))))
    stores = [Store(db), Store(db)]  # two engines, two connection pools: as two processes would
    recorders = [RunRecorder(st, st.new_session("cli"), bundled, RunSettings(PROMPT), flush_tokens=2, flush_s=0.01)
                 for st in stores]

    def feed(rec):
        for ev in events:
            rec(ev)
        rec.close()

    threads = [threading.Thread(target=feed, args=(r,)) for r in recorders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = events[-1]
    assert isinstance(done, DoneEvent)
    for rec in recorders:
        assert rec.error is None
        stored = Store(db).get_run(rec.run_id)
        assert stored.status == "finished" and stored.streams[0].token_ids == done.rows[0].token_ids
        assert len(Store(db).probe_points(rec.run_id)) == sum(isinstance(e, ProbeEvent) for e in events)


def test_replay_reproduces_a_greedy_run(bundled, vec, tmp_path):
    store = Store(str(tmp_path / "log.sqlite"))
    s = RunSettings(PROMPT, vector=vec, layers=(12, 13), coefs=(0.0, 3.0), max_new_tokens=16,
                    probe=ProbeSettings(suffix=" Final answer:", every=4))
    run_id, events = record(store, bundled, s)
    model_id, again = replay_settings(store, run_id)
    assert model_id == "smollm2-135m" and again.to_dict() == s.to_dict()
    assert all(torch.equal(again.vector.directions[k], vec.directions[k]) for k in vec.layers)
    replayed = list(run(bundled, again))[-1]
    assert [r.token_ids for r in replayed.rows] == [r.token_ids for r in events[-1].rows]


def test_a_browser_session_sees_only_its_runs(bundled, tmp_path):
    store = Store(str(tmp_path / "log.sqlite"))
    mine, theirs = store.new_session("browser"), store.new_session("browser")
    s = RunSettings(PROMPT, max_new_tokens=3)
    my_run, _ = record(store, bundled, s, session=mine)
    their_run, _ = record(store, bundled, s, session=theirs)
    assert [r.id for r in store.list_runs(mine)] == [my_run]
    with pytest.raises(UserError, match="no run .* in this session"):
        store.get_run(their_run, session_id=mine)
    export(store, tmp_path / "mine.jsonl", "jsonl", session_id=mine)
    assert [json.loads(x)["id"] for x in (tmp_path / "mine.jsonl").read_text().splitlines()] == [my_run]


def test_store_bad_input(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        Store(str(tmp_path))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cannot open database"):
        Store(str(junk))
    store = Store(str(tmp_path / "ok.sqlite"))
    with pytest.raises(UserError, match="unknown format"):
        export(store, tmp_path / "x.txt", "xml")
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match="record 1 is not a steer-ui run export"):
        import_jsonl(store, tmp_path / "bad.jsonl")
    assert store.list_runs() == []  # nothing half-imported
    with pytest.raises(UserError, match="no run 'nope'"):
        replay_settings(store, "nope")
