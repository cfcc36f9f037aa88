"""The session log on real SQLite files: recording, cancel, kill, migration, export/import, replay."""

from __future__ import annotations

import base64
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
from steer_ui.engine.run_settings import RunSettings, SteeredRow, steered
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.log.archive import export, import_jsonl, record_events, replay_settings
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


def same_directions(a, b) -> bool:
    return a.layers == b.layers and all(torch.equal(a.directions[k], b.directions[k]) for k in a.layers)


def legacy_vector_bytes(vector) -> bytes:
    """A vector's stored copy as versions before ``SteeringVector.to_bytes`` wrote it."""
    from safetensors.torch import save

    tensors = {f"direction.{k}": v.contiguous() for k, v in vector.directions.items()}
    return save(tensors, metadata={**vector.metadata, "model_hint": vector.model_hint, "name": vector.name})


def legacy_settings(prompt, layers=None, coefs=(), scope="all", vector_name=None, max_new_tokens=128,
                    temperature=0.0, seed=0, probe_suffix=None, probe_every=4) -> dict:
    """``RunSettings.to_dict()`` as versions before per-row vectors wrote it (nested sampling and probe)."""
    return {"prompt": prompt, "system": None, "raw": False, "vector_name": vector_name,
            "layers": list(layers) if layers is not None else None, "coefs": list(coefs), "scope": scope,
            "max_new_tokens": max_new_tokens, "ignore_eos": False, "cache": "dynamic",
            "sampling": {"temperature": temperature, "top_p": 1.0, "top_k": 0, "seed": seed},
            "probe": {"suffix": probe_suffix, "choices": ["Yes", "No"], "every": probe_every, "min_mass": 0.1}}


def stream_steering(run) -> list[tuple]:
    return [(st.row, st.vector_hash, st.layers, st.scope) for st in run.streams]


def test_a_run_is_recorded_completely(bundled, vec, tmp_path):
    store = Store(str(tmp_path / "log.sqlite"))
    s = RunSettings(PROMPT, rows=steered(vec, (2.0, -2.0)), max_new_tokens=20, probe_every=3)
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
    assert [r["coef"] for r in stored.settings["rows"]] == [2.0, -2.0]
    h = vec.content_hash()
    assert [r["vector_hash"] for r in stored.settings["rows"]] == [h, h]
    # Each steered stream names its own vector, layers (the vector's, as none were chosen) and scope.
    assert stream_steering(stored) == [(0, None, None, None), (1, h, [12, 13, 14, 15], "all"),
                                       (2, h, [12, 13, 14, 15], "all")]
    assert stored.layers == [12, 13, 14, 15]
    assert list(store.run_vectors(stored)) == [h] and same_directions(store.vector(h), vec)
    assert sqlite3.connect(tmp_path / "log.sqlite").execute("pragma journal_mode").fetchone()[0] == "wal"


def test_cancelled_and_abandoned_runs_keep_what_they_produced(bundled, tmp_path):
    store = Store(str(tmp_path / "log.sqlite"))
    cancel = threading.Event()
    s = RunSettings(PROMPT, max_new_tokens=60, probe_every=2)
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
        deadline = time.monotonic() + 120  # a bound for a busy machine, not a timing
        running = []
        while time.monotonic() < deadline and not (running and running[0].tokens > 0):
            time.sleep(0.1)
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


def test_database_from_older_version_upgrades_in_place(bundled, vec, tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    db = tmp_path / "old.sqlite"
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "steer_ui" / "log" / "migrations"))

    def upgrade_to(revision: str) -> None:
        with create_engine(f"sqlite:///{db}").begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def columns(con, table: str) -> list[str]:
        return [c[1] for c in con.execute(f"pragma table_info({table})")]

    # Revision 0001: runs without an owner.
    upgrade_to("0001")
    con = sqlite3.connect(db)
    assert "owner" not in columns(con, "runs")
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

    # Revision 0002: a steered run as it was logged then, one vector for every steered row in runs.vector_hash,
    # its layers in runs.layers and its scope in the settings. Its tokens are what these settings produce.
    upgrade_to("0002")
    now = RunSettings(PROMPT, rows=steered(vec, (3.0, -3.0), layers=(12, 13), scope="generated"),
                      max_new_tokens=12)
    events = list(run(bundled, now))
    start, done = events[0], events[-1]
    h = vec.content_hash()
    con = sqlite3.connect(db)
    assert "owner" in columns(con, "runs") and "vector_hash" in columns(con, "runs")
    assert "vector_hash" not in columns(con, "streams")
    con.execute("insert into vectors (hash, name, model_hint, data) values (?, ?, ?, ?)",
                (h, vec.name, vec.model_hint, legacy_vector_bytes(vec)))
    con.execute("insert into runs (id, session_id, created, finished, status, owner, model_id, model_source, dtype, "
                "device, settings, prompt_text, prompt_ids, vector_hash, layers, probe_suffix_ids, probe_choices, "
                "steps) values ('old-steered', 's1', '2026-01-02 00:00:00', '2026-01-02 00:00:05', 'finished', "
                "NULL, ?, '', 'float32', 'cpu', ?, ?, ?, ?, ?, ?, ?, ?)",
                (bundled.model_id, json.dumps(legacy_settings(PROMPT, (12, 13), (3.0, -3.0), "generated", vec.name,
                                                              max_new_tokens=12)),
                 start.prompt_text, json.dumps(start.prompt_ids), h, json.dumps(start.layers),
                 json.dumps(start.probe_suffix_ids),
                 json.dumps([{"label": c.label, "token_ids": c.token_ids} for c in start.probe_choices]),
                 done.timing.steps))
    for r in done.rows:
        con.execute("insert into streams (run_id, row, label, coef, token_ids, text, finish_reason) values "
                    "('old-steered', ?, ?, ?, ?, ?, ?)",
                    (r.row, r.label, r.coef, json.dumps(r.token_ids), r.text, r.finish_reason))
    probes = [e for e in events if isinstance(e, ProbeEvent)]
    assert probes
    for p in probes:
        con.execute("insert into probe_points (run_id, row, step, logodds, mass, logprobs, reliable, think_closed) "
                    "values ('old-steered', ?, ?, ?, ?, ?, ?, ?)",
                    (p.row, p.step, p.logodds, p.mass, json.dumps(p.logprobs), p.reliable, p.think_closed))
    con.commit()
    con.close()

    store = Store(str(db))  # migrates to the newest revision
    con = sqlite3.connect(db)
    assert con.execute("select version_num from alembic_version").fetchone()[0] == "0005"
    assert "final" in columns(con, "probe_points")
    assert "owner" in columns(con, "runs") and "vector_hash" not in columns(con, "runs")
    assert {"vector_hash", "layers", "scope"} <= set(columns(con, "streams"))
    assert con.execute("pragma foreign_key_check").fetchall() == []
    assert store.get_run("old-done").streams[0].token_ids == [5, 6]
    assert stream_steering(store.get_run("old-done")) == [(0, None, None, None)]
    assert store.get_run("old-live").status == "interrupted"
    # 0003 gave each steered stream the run's vector, layers and scope; the baseline stays unsteered.
    old = store.get_run("old-steered")
    # Nothing is lost on the way (copying the runs table must not cascade to its streams and probe points).
    assert old.status == "finished" and [st.token_ids for st in old.streams] == [r.token_ids for r in done.rows]
    assert [(p.row, p.step, p.logodds) for p in store.probe_points("old-steered")] == \
        sorted((p.row, p.step, p.logodds) for p in probes)
    assert stream_steering(old) == [(0, None, None, None), (1, h, [12, 13], "generated"),
                                    (2, h, [12, 13], "generated")]
    assert [r.coefs for r in store.list_runs() if r.id == "old-steered"] == [[3.0, -3.0]]
    # ... and replays: legacy settings and the legacy stored copy give the same run, token for token.
    model_id, again = replay_settings(store, "old-steered")
    assert model_id == bundled.model_id and again.to_dict() == now.to_dict()
    assert same_directions(again.rows[0].vector, vec) and again.rows[1].scope == Scope("generated")
    replayed = list(run(bundled, again))[-1]
    assert [r.token_ids for r in replayed.rows] == [r.token_ids for r in done.rows]


def test_export_import_round_trip(bundled, vec, tmp_path):
    a = Store(str(tmp_path / "a.sqlite"))
    s = RunSettings(PROMPT, rows=steered(vec, (3.0,)), max_new_tokens=10, probe_every=5)
    record(a, bundled, s)
    record(a, bundled, RunSettings(PROMPT, max_new_tokens=5, temperature=0.8, seed=3))
    export(a, tmp_path / "a.jsonl", "jsonl")
    b = Store(str(tmp_path / "b.sqlite"))
    assert import_jsonl(b, tmp_path / "a.jsonl") == (2, 0)
    assert import_jsonl(b, tmp_path / "a.jsonl") == (0, 2)
    export(b, tmp_path / "b.jsonl", "jsonl")
    first = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    again = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert first == again and len(first) == 2
    assert [v["hash"] for v in first[0]["vectors"]] == [vec.content_hash()] and first[1]["vectors"] == []
    assert [st["vector_hash"] for st in first[0]["streams"]] == [None, vec.content_hash()]
    assert first[1]["settings"]["temperature"] == 0.8 and first[1]["settings"]["seed"] == 3
    paths = export(b, tmp_path / "flat.csv", "csv")
    assert [p.name for p in paths] == ["flat_runs.csv", "flat_streams.csv", "flat_probes.csv"]
    assert len(paths[1].read_text().strip().splitlines()) == 1 + 2 + 1  # header + 2 rows + 1 row
    n_probes = sum(len(r["probes"]) for r in first)
    assert len(paths[2].read_text().strip().splitlines()) == 1 + n_probes


def test_rows_with_their_own_vectors_are_recorded_replayed_and_exported(bundled, vec, tmp_path):
    other = random_vector(bundled, range(14, 18), scale=4.0, seed=1)
    other.name = "other"
    s = RunSettings(PROMPT, rows=steered(vec, (3.0,), layers=(12, 13))
                    + (SteeredRow(other, -3.0, (15, 16), Scope.parse("generated")),),
                    max_new_tokens=12, probe_every=4)
    a = Store(str(tmp_path / "a.sqlite"))
    run_id, events = record(a, bundled, s)
    done = events[-1]
    assert [r.label for r in done.rows] == ["baseline", "random +3 @12-13 (all)", "other -3 @15-16 (generated)"]
    ha, hb = vec.content_hash(), other.content_hash()
    assert ha != hb
    stored = a.get_run(run_id)
    assert stream_steering(stored) == [(0, None, None, None), (1, ha, [12, 13], "all"),
                                       (2, hb, [15, 16], "generated")]
    assert stored.layers == [12, 13, 15, 16]
    vectors = a.run_vectors(stored)
    assert list(vectors) == [ha, hb]
    assert same_directions(vectors[ha], vec) and same_directions(vectors[hb], other)
    # Replay: each row gets its own stored vector back, and the greedy tokens are the same.
    _, again = replay_settings(a, run_id)
    assert again.to_dict() == s.to_dict()
    assert same_directions(again.rows[0].vector, vec) and same_directions(again.rows[1].vector, other)
    replayed = list(run(bundled, again))[-1]
    assert [r.token_ids for r in replayed.rows] == [r.token_ids for r in done.rows]
    # Export and import keep both vectors and each stream's own steering.
    export(a, tmp_path / "a.jsonl", "jsonl")
    [rec] = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [v["hash"] for v in rec["vectors"]] == [ha, hb]
    assert [v["name"] for v in rec["vectors"]] == ["random", "other"]
    assert [(st["vector_hash"], st["layers"], st["scope"]) for st in rec["streams"]] == \
        [(None, None, None), (ha, [12, 13], "all"), (hb, [15, 16], "generated")]
    shown = next(record_events(rec)).rows  # a logged run shown again names each row's vector
    assert [(r.vector, r.layers, r.scope) for r in shown] == \
        [(None, [], None), ("random", [12, 13], "all"), ("other", [15, 16], "generated")]
    b = Store(str(tmp_path / "b.sqlite"))
    assert import_jsonl(b, tmp_path / "a.jsonl") == (1, 0)
    assert stream_steering(b.get_run(run_id)) == stream_steering(stored)
    assert same_directions(b.vector(ha), vec) and same_directions(b.vector(hb), other)
    _, imported = replay_settings(b, run_id)
    assert imported.to_dict() == s.to_dict()
    export(b, tmp_path / "b.jsonl", "jsonl")
    assert [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()] == [rec]
    paths = export(b, tmp_path / "flat.csv", "csv")
    assert len(paths[1].read_text().strip().splitlines()) == 1 + 3


def test_an_old_export_with_one_vector_still_imports_and_replays(bundled, vec, tmp_path):
    """Records exported before rows carried their own vectors: one "vector", legacy settings, bare streams."""
    a = Store(str(tmp_path / "a.sqlite"))
    s = RunSettings(PROMPT, rows=steered(vec, (3.0, -2.0), layers=(13, 14), scope="generated"), max_new_tokens=10,
                    probe_suffix=" Final answer:", probe_every=5)
    steered_id, events = record(a, bundled, s)
    plain = RunSettings(PROMPT, max_new_tokens=4, temperature=0.8, seed=3)
    plain_id, _ = record(a, bundled, plain)

    def legacy(record: dict, settings: dict, vector) -> dict:
        keep = ("id", "session_id", "created", "finished", "status", "error", "model_id", "model_source", "dtype",
                "device", "prompt_text", "prompt_ids", "layers", "probe_suffix_ids", "probe_choices", "timing",
                "probes")
        return {**{k: record[k] for k in keep}, "settings": settings,
                "vector": {"hash": vector.content_hash(), "name": vector.name, "model_hint": vector.model_hint,
                           "safetensors_b64": base64.b64encode(legacy_vector_bytes(vector)).decode()}
                if vector is not None else None,
                "streams": [{k: st[k] for k in ("row", "label", "coef", "token_ids", "text", "finish_reason")}
                            for st in record["streams"]]}

    old = [legacy(a.run_record(a.get_run(steered_id)),
                  legacy_settings(PROMPT, (13, 14), (3.0, -2.0), "generated", vec.name, max_new_tokens=10,
                                  probe_suffix=" Final answer:", probe_every=5), vec),
           legacy(a.run_record(a.get_run(plain_id)),
                  legacy_settings(PROMPT, max_new_tokens=4, temperature=0.8, seed=3), None)]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    b = Store(str(tmp_path / "b.sqlite"))
    assert import_jsonl(b, path) == (2, 0)
    assert import_jsonl(b, path) == (0, 2)
    h = vec.content_hash()
    assert stream_steering(b.get_run(steered_id)) == [(0, None, None, None), (1, h, [13, 14], "generated"),
                                                      (2, h, [13, 14], "generated")]
    assert stream_steering(b.get_run(plain_id)) == [(0, None, None, None)]
    assert same_directions(b.vector(h), vec)
    # The legacy settings read back as the same run: it replays token for token.
    _, again = replay_settings(b, steered_id)
    assert again.to_dict() == s.to_dict()
    replayed = list(run(bundled, again))[-1]
    assert [r.token_ids for r in replayed.rows] == [r.token_ids for r in events[-1].rows]
    _, again_plain = replay_settings(b, plain_id)
    assert again_plain.to_dict() == plain.to_dict()
    # Exported again, they come out in today's shape.
    export(b, tmp_path / "new.jsonl", "jsonl")
    new = {r["id"]: r for r in map(json.loads, (tmp_path / "new.jsonl").read_text().splitlines())}
    assert "vector" not in new[steered_id] and [v["hash"] for v in new[steered_id]["vectors"]] == [h]
    assert new[plain_id]["vectors"] == []
    assert [p["step"] for p in new[steered_id]["probes"]] == [p["step"] for p in old[0]["probes"]]
    paths = export(b, tmp_path / "flat.csv", "csv")  # the runs table reads legacy settings too
    runs_csv = paths[0].read_text()
    assert len(runs_csv.strip().splitlines()) == 1 + 2 and "Final answer:" in runs_csv


def test_two_runs_logging_at_once_lose_nothing(bundled, tmp_path):
    db = str(tmp_path / "log.sqlite")
    events = list(run(bundled, RunSettings(PROMPT, max_new_tokens=40, probe_every=1)))
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
    s = RunSettings(PROMPT, rows=steered(vec, (0.0, 3.0), layers=(12, 13)), max_new_tokens=16,
                    probe_suffix=" Final answer:", probe_every=4)
    run_id, events = record(store, bundled, s)
    model_id, again = replay_settings(store, run_id)
    assert model_id == "smollm2-135m" and again.to_dict() == s.to_dict()
    assert all(same_directions(r.vector, vec) for r in again.rows)
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
