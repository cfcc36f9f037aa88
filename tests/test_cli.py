"""The CLI as scripts use it: a real subprocess, the JSONL contract, the readable view, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steer_ui.vectors.files import save_vector
from steer_ui.vectors.vector import SteeringVector

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "steer_ui", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(1)
    dirs = {layer: torch.randn(576, generator=g) / 6 for layer in range(8, 16)}
    path = tmp_path_factory.mktemp("vec") / "random.gguf"
    save_vector(SteeringVector(dirs, model_hint="llama"), path)
    return path


def test_jsonl_contract(vector_file):
    r = cli("generate", "--prompt", "Is 7 prime?", "--vector", str(vector_file), "--layers", "10-13",
            "--coef", "2", "--coef", "-2", "--max-new-tokens", "8", "--probe-every", "4", "--jsonl")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]  # stdout holds JSON and nothing else
    start, done = events[0], events[-1]
    assert start["event"] == "start" and done["event"] == "done"
    assert [row["label"] for row in start["rows"]] == ["baseline", "coef +2", "coef -2"]
    assert start["layers"] == [10, 11, 12, 13]
    # Each row says how it is steered: its vector (by name), layers and scope; the baseline by nothing.
    assert start["rows"] == [
        {"row": 0, "label": "baseline", "coef": 0.0, "vector": None, "layers": [], "scope": None},
        {"row": 1, "label": "coef +2", "coef": 2.0, "vector": "random.gguf", "layers": [10, 11, 12, 13],
         "scope": "all"},
        {"row": 2, "label": "coef -2", "coef": -2.0, "vector": "random.gguf", "layers": [10, 11, 12, 13],
         "scope": "all"}]
    assert [c["label"] for c in start["probe"]["choices"]] == ["Yes", "No"] and start["probe"]["every"] == 4
    assert start["prompt_ids"] and start["probe"]["suffix_ids"]
    tokens = [e for e in events if e["event"] == "token"]
    probes = [e for e in events if e["event"] == "probe"]
    for row in done["rows"]:
        mine = [t for t in tokens if t["row"] == row["row"]]
        assert [t["step"] for t in mine] == list(range(len(mine)))
        assert [t["token_id"] for t in mine] == row["token_ids"]
        assert row["finish_reason"] in ("eos", "length")
        # The urge to stop where each token was chosen (end-of-sequence: this model has no thinking block).
        assert all(t["stop_logprob"] <= 0 and "forced" not in t for t in mine)
        assert set(row["dynamics"]) == {"flips", "settled_at", "after_settle", "readings"}
        assert row["think_tokens"] == len(row["token_ids"]) and row["interventions"] == 0
        steps = [p["step"] for p in probes if p["row"] == row["row"]]
        assert steps[0] == 0 and all(s % 4 == 0 for s in steps)
    p = probes[0]
    assert set(p) >= {"logodds", "mass", "logprobs", "reliable"}
    assert p["logodds"] == pytest.approx(p["logprobs"]["Yes"] - p["logprobs"]["No"])
    assert set(done["timing"]) == {"load_s", "prefill_s", "decode_s", "steps", "compiled", "eager_because"}


def test_readable_side_by_side(vector_file):
    r = cli("generate", "--prompt", "Is 7 prime?", "--vector", str(vector_file), "--coef", "3",
            "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    head = r.stdout.splitlines()[0]
    assert "baseline" in head and "coef +3" in head and " | " in head
    assert "probe log-odds" in r.stdout
    assert ("departs from the baseline" in r.stdout) or ("identical to the baseline" in r.stdout)
    assert "steps/s" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--prompt", "  "], "the prompt is empty"),
    (["--prompt", "x", "--vector", "{vec}", "--coef", "nan"], "not a finite number"),
    (["--prompt", "x", "--vector", "{vec}", "--coef", "1", "--layers", "40-41"], "layer 40 is out of range"),
    (["--prompt", "x", "--vector", "{vec}", "--coef", "1", "--layers", "2"], "layer 2 is not in the vector"),
    (["--prompt", "x", "--vector", "missing.gguf", "--coef", "1"], "no such vector file"),
    (["--prompt", "x", "--vector", "{small}", "--coef", "1"], "hidden size 8 but the model has 576"),
    (["--prompt", "x", "--coef", "1"], "need a steering vector"),
    (["--prompt", "x", "--scope", "sideways"], "unknown scope"),
    (["--prompt", "x", "--scope", "think", "--vector", "{vec}", "--coef", "1"], "needs a model with a thinking"),
    (["--prompt", "x", "--probe-choices", "Yes"], "two or more"),
    (["--prompt", "x", "--model", "./no/such/dir"], "no such model path"),
    (["--prompt", "x", "--model", "some-org/not-a-model"], "hub is unreachable"),
    # Rows with their own vectors: each mistake is one line too.
    (["--prompt", "x", "--row", "bravery=2"], "unknown preset vector 'bravery' for smollm2-135m"),
    (["--prompt", "x", "--row", "confidence"], "cannot read row 'confidence': write VECTOR=COEF"),
    (["--prompt", "x", "--row", "confidence=1,2"], "needs exactly one coefficient"),
    (["--prompt", "x", "--row", "confidence=nan"], "not a finite number"),
    (["--prompt", "x", "--row", "{tmp}/missing.gguf=1"], "no such vector file"),
    (["--prompt", "x", "--vector", "{vec}", "--coef", "1", "--row", "{small}=1"],
     "row 2 (small +1): vector small.gguf has hidden size 8 but the model has 576"),
    (["--prompt", "x", "--row", "confidence=1@40-41"], "layer 40 is out of range"),
])
def test_bad_input_is_one_line_and_nonzero(vector_file, tmp_path, args, message):
    small = tmp_path / "small.gguf"
    save_vector(SteeringVector({0: torch.ones(8)}, model_hint="llama"), small)
    args = [a.format(vec=vector_file, small=small, tmp=tmp_path) for a in args]
    r = cli("generate", *args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if not line.startswith("loading ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_rows_with_their_own_vectors(tmp_path):
    from steer_ui.log.store import Store
    from steer_ui.vectors.presets import resolve_vector

    db = tmp_path / "log.sqlite"
    r = cli("generate", "--db", str(db), "--prompt", "Is 9 prime?", "--vector", "reconsideration", "--layers", "15-18",
            "--coef", "4", "--row", "confidence=-6@16-19", "--max-new-tokens", "6", "--jsonl")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    start, done = events[0], events[-1]
    assert start["rows"] == [
        {"row": 0, "label": "baseline", "coef": 0.0, "vector": None, "layers": [], "scope": None},
        {"row": 1, "label": "reconsideration +4 @15-18", "coef": 4.0, "vector": "reconsideration",
         "layers": [15, 16, 17, 18], "scope": "all"},
        {"row": 2, "label": "confidence -6 @16-19", "coef": -6.0, "vector": "confidence",
         "layers": [16, 17, 18, 19], "scope": "all"}]
    assert start["layers"] == [15, 16, 17, 18, 19]
    assert [row["label"] for row in done["rows"]] == [row["label"] for row in start["rows"]]
    assert all(row["token_ids"] for row in done["rows"])
    # The log keeps each row's own vector, layers and scope.
    run_id = r.stderr.split("logged as run ")[1].split()[0]
    recon, conf = (resolve_vector(n, "smollm2-135m").content_hash() for n in ("reconsideration", "confidence"))
    assert [(st.row, st.vector_hash, st.layers, st.scope) for st in Store(str(db)).get_run(run_id).streams] == \
        [(0, None, None, None), (1, recon, [15, 16, 17, 18], "all"), (2, conf, [16, 17, 18, 19], "all")]


def test_row_options_become_settings(capsys):
    from steer_ui.cli import build_parser
    from steer_ui.cli.run_commands import settings_from_args
    from steer_ui.engine.scope import Scope

    def settings(*args: str):
        return settings_from_args(build_parser().parse_args(["generate", "--prompt", "x", *args]))

    s = settings("--vector", "reconsideration", "--layers", "15-18", "--coef", "4", "--coef", "-2", "--scope",
                 "generated", "--row", "confidence=-6@16-19", "--row", "verbosity=2")
    assert [(r.vector.name, r.coef, r.layers, r.scope) for r in s.rows] == [
        ("reconsideration", 4.0, (15, 16, 17, 18), Scope("generated")),
        ("reconsideration", -2.0, (15, 16, 17, 18), Scope("generated")),
        ("confidence", -6.0, (16, 17, 18, 19), Scope("generated")),  # its own layers, the run's scope
        ("verbosity", 2.0, (15, 16, 17, 18), Scope("generated"))]  # no layers of its own: the run's
    assert s.rows[0].vector is s.rows[1].vector
    s = settings("--row", "confidence=-6")  # a row alone, on the vector's own layers
    assert [(r.vector.name, r.coef, r.layers) for r in s.rows] == [("confidence", -6.0, None)]
    assert capsys.readouterr().err == ""
    assert settings("--layers", "3").rows == ()
    assert capsys.readouterr().err.startswith("note: --layers given without --coef or --row")


def test_a_vector_without_coefficients_runs_the_baseline_with_a_note():
    r = cli("generate", "--prompt", "Is 7 prime?", "--vector", "reconsideration", "--layers", "15-18",
            "--max-new-tokens", "3", "--jsonl")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "--vector and --layers given without --coef or --row" in notes[0], r.stderr
    assert "only the baseline runs" in notes[0] and "error" not in r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["label"] for row in events[0]["rows"]] == ["baseline"] and events[0]["layers"] == []
    assert events[-1]["event"] == "done" and len(events[-1]["rows"]) == 1


def test_vector_command_writes_a_usable_file(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"positive": f"I am absolutely certain that {n} is the answer.",
             "negative": f"I am not sure, maybe {n} could be the answer?"} for n in range(6)]
    pairs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "certain.gguf"
    r = cli("vector", "--pairs", str(pairs), "--method", "mean_diff", "--layers", "10-13", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "pair-acc" in r.stdout and "suggested band" in r.stdout and "wrote" in r.stderr
    r = cli("inspect-vector", str(out), "--model", "smollm2-135m")
    assert r.returncode == 0, r.stderr
    assert "4 layers (10-13)" in r.stdout and "promotes / suppresses" in r.stdout
    r = cli("generate", "--prompt", "Is 7 prime?", "--vector", str(out), "--coef", "8", "--max-new-tokens", "4",
            "--jsonl")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["layers"] == [10, 11, 12, 13]


@pytest.mark.parametrize("args,message", [
    (["vector", "--preset", "bravery", "--out", "{tmp}/x.gguf"], "unknown preset 'bravery'"),
    (["vector", "--preset", "confidence", "--out", "{tmp}/x.pt"], "--out must end in .gguf or .safetensors"),
    (["vector", "--preset", "confidence", "--method", "pca", "--out", "{tmp}/x.gguf"], "unknown method"),
    (["vector", "--preset", "confidence", "--layers", "28-35", "--out", "{tmp}/x.gguf"], "layer 30 is out of range"),
    (["vector", "--pairs", "{tmp}/none.jsonl", "--out", "{tmp}/x.gguf"], "no such pairs file"),
    (["inspect-vector", "{tmp}/none.gguf"], "no such vector file"),
    (["inspect-vector", "{small}", "--model", "smollm2-135m"], "hidden size 8 but the model has 576"),
])
def test_vector_commands_bad_input(tmp_path, args, message):
    small = tmp_path / "small.gguf"
    save_vector(SteeringVector({0: torch.ones(8)}, model_hint="llama"), small)
    r = cli(*[a.format(tmp=tmp_path, small=small) for a in args])
    lines = [line for line in r.stderr.splitlines() if not line.startswith("loading ")]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".tmp-*"))


def test_session_log_commands(tmp_path):
    db, other = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    r = cli("generate", "--db", str(db), "--prompt", "Is 9 prime?", "--vector", "confidence", "--layers", "16-19",
            "--coef", "-3", "--row", "budget:min=8", "--max-new-tokens", "8", "--jsonl")
    assert r.returncode == 0 and "logged as run" in r.stderr
    first = [json.loads(x) for x in r.stdout.splitlines()][-1]
    run_id = r.stderr.split("logged as run ")[1].split()[0]
    listing = cli("runs", "--db", str(db))
    assert listing.returncode == 0 and run_id in listing.stdout and "finished" in listing.stdout
    # Each run's vector (a budget row by its budget), coefficients, layers (the vector rows') and tokens per
    # row: each row's when they differ, baseline first, never their sum.
    line = next(x for x in listing.stdout.splitlines() if x.startswith(run_id)).split()
    counts = [len(row["token_ids"]) for row in first["rows"]]
    tokens = str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))
    assert line[4:9] == [tokens, "confidence,", "budget:min=8", "-3", "16-19"], line
    assert cli("export", "--db", str(db), "--run", run_id, "--out", str(tmp_path / "one.jsonl")).returncode == 0
    r = cli("import", str(tmp_path / "one.jsonl"), "--db", str(other))
    assert r.returncode == 0 and "imported 1 runs" in r.stderr
    r = cli("replay", run_id, "--db", str(other), "--jsonl")
    assert r.returncode == 0, r.stderr
    again = [json.loads(x) for x in r.stdout.splitlines()][-1]
    assert [row["token_ids"] for row in again["rows"]] == [row["token_ids"] for row in first["rows"]]
    assert len(cli("runs", "--db", str(other)).stdout.strip().splitlines()) == 3  # header, import, replay


@pytest.mark.parametrize("args,message", [
    (["runs", "--db", "{tmp}"], "is a folder"),
    (["export", "--db", "{tmp}/a.sqlite", "--format", "xml", "--out", "{tmp}/x"], "unknown format"),
    (["export", "--db", "{tmp}/a.sqlite", "--run", "nope", "--out", "{tmp}/x.jsonl"], "no run 'nope'"),
    (["import", "{tmp}/missing.jsonl", "--db", "{tmp}/a.sqlite"], "no such file"),
    (["replay", "nope", "--db", "{tmp}/a.sqlite"], "no run 'nope'"),
    (["generate", "--prompt", "x", "--db", "{tmp}/junk.sqlite"], "cannot open database"),
])
def test_session_log_bad_input(tmp_path, args, message):
    (tmp_path / "junk.sqlite").write_bytes(b"not sqlite" * 200)
    r = cli(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "x.jsonl").exists()
