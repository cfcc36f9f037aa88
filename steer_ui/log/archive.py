"""The session log in files and back: export (JSONL, CSV), import, the settings to replay a run, and a
logged run as the engine's event stream again (to show it as it was streamed)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from steer_ui import csv_cells
from steer_ui.engine.detokenize import Detokenizer
from steer_ui.engine.events import (ChoiceInfo, DoneEvent, Dynamics, Event, InterveneEvent, ProbeEvent, RowInfo,
                                    RowResult, StartEvent, Timing, TokenEvent)
from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError
from steer_ui.jsonl import loads
from steer_ui.log.store import Store

FORMATS = ("jsonl", "csv")


def pseudonym(session_id: str) -> str:
    """A stable stand-in for a session id that cannot be turned back into it."""
    return "s" + hashlib.sha256(session_id.encode()).hexdigest()[:15]


def replay_settings(store: Store, run_id: str, session_id: str | None = None) -> tuple[str, RunSettings]:
    """(model id, settings) that reproduce run ``run_id``, with the stored copies of its vectors."""
    run = store.get_run(run_id, session_id)
    return run.model_id, RunSettings.from_dict(run.settings, store.run_vectors(run))


def run_record(store: Store, run) -> dict:
    return store.run_record(run)


def record_events(record: dict, tokenizer=None) -> Iterator[Event]:
    """A logged run (``run_record``) as the engine's event stream, to show it again as it was streamed.

    With the run's tokenizer each token gets its own text; without it (another model is loaded) a
    row's text arrives whole with its first token.
    """
    streams = sorted(record["streams"], key=lambda s: s["row"])
    settings = record["settings"]
    yield StartEvent(
        model=record["model_id"], prompt_ids=record["prompt_ids"], prompt_text=record["prompt_text"],
        rows=[_row_info(s, record) for s in streams], layers=record["layers"],
        scope=next((s["scope"] for s in streams if s.get("scope")), "all"), probe_suffix_ids=record["probe_suffix_ids"],
        probe_choices=[ChoiceInfo(c["label"], c["token_ids"], c.get("variants", [[i] for i in c["token_ids"]]))
                       for c in record["probe_choices"]],
        probe_every=settings.get("probe_every", settings.get("probe", {}).get("every", 0)),
        probe_gold=settings.get("probe_gold"),
    )
    pieces = {s["row"]: _pieces(s, tokenizer) for s in streams}
    probes: dict[int, list[dict]] = {}
    for p in record["probes"]:
        probes.setdefault(p["step"], []).append(p)
    longest = max((len(s["token_ids"]) for s in streams), default=0)
    notes = {(s["row"], n["step"]): n for s in streams for n in s.get("interventions") or []}
    forced = {s["row"]: set(s.get("forced") or ()) for s in streams}
    for step in range(longest + 1):
        # The engine reads the probe after ``step`` tokens, before the token at index ``step``.
        for p in sorted(probes.get(step, []), key=lambda p: p["row"]):
            yield ProbeEvent(p["row"], step, p["logodds"], p["mass"], p["logprobs"], p["reliable"],
                             p.get("think_closed", False), p.get("final", False))
        for s in streams:
            if (note := notes.get((s["row"], step))) is not None:
                yield InterveneEvent(s["row"], step, note["kind"], note["text"])
            if step < len(s["token_ids"]):
                urges = s.get("stop_logprobs") or []
                yield TokenEvent(s["row"], step, s["token_ids"][step], pieces[s["row"]][step],
                                 step in forced[s["row"]], urges[step] if step < len(urges) else None)
    t = record.get("timing") or {}
    yield DoneEvent(
        rows=[RowResult(s["row"], s["label"], s["coef"], s["token_ids"], s["text"], s["finish_reason"] or "cancelled",
                        s.get("think_tokens"), len(s.get("interventions") or ()),
                        Dynamics(**s["dynamics"]) if s.get("dynamics") else None) for s in streams],
        timing=Timing(t.get("load_s") or 0.0, t.get("prefill_s") or 0.0, t.get("decode_s") or 0.0,
                      t.get("steps") or 0),
    )


def _row_info(stream: dict, record: dict) -> RowInfo:
    names = {v["hash"]: v["name"] for v in record.get("vectors", [])}
    return RowInfo(stream["row"], stream["label"], stream["coef"], names.get(stream.get("vector_hash")),
                   list(stream.get("layers") or []), stream.get("scope"), stream.get("budget"))


def _pieces(stream: dict, tokenizer) -> list[str]:
    ids = stream["token_ids"]
    if tokenizer is None:
        return [stream["text"]] + [""] * (len(ids) - 1) if ids else []
    detok = Detokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids]
    joined = "".join(pieces)
    if joined == stream["text"]:
        return pieces
    if pieces and stream["text"].startswith(joined):  # bytes the engine flushed at the end
        pieces[-1] += stream["text"][len(joined):]
        return pieces
    # The stored text does not come from these ids with this tokenizer: show what was logged.
    return [stream["text"]] + [""] * (len(ids) - 1)


def iter_records(store: Store, session_id: str | None = None, run_id: str | None = None) -> Iterator[dict]:
    if run_id is not None:
        yield store.run_record(store.get_run(run_id, session_id))
        return
    for rid in store.run_ids(session_id):
        yield store.run_record(store.get_run(rid))


def export(store: Store, out: str | Path, fmt: str, session_id: str | None = None, run_id: str | None = None,
           pseudonymous: bool = False) -> list[Path]:
    """Write the chosen runs; JSONL is one object per run, CSV is three flat tables. Returns the files.

    ``pseudonymous``: each session id replaced by a one-way pseudonym (exports a server hands out; runs
    of one session still share theirs, and an import groups them by it)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"no such folder: {out.parent}")
    records = list(iter_records(store, session_id, run_id))
    if pseudonymous:
        records = [{**r, "session_id": pseudonym(r["session_id"])} for r in records]
    if fmt == "jsonl":
        _atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return [out]
    return _export_csv(records, out)


def _run_row(r: dict) -> dict:
    """A run's line in the runs table; settings from before per-row vectors are read too."""
    s, steered = r["settings"], [st for st in r["streams"] if st["row"] > 0]
    legacy = "rows" not in s
    names = {v["hash"]: v["name"] for v in r.get("vectors", [])}
    return {"run_id": r["id"], "session_id": r["session_id"], "created": r["created"], "status": r["status"],
            "model_id": r["model_id"], "prompt": s["prompt"], "coefs": json.dumps([st["coef"] for st in steered]),
            "vectors": json.dumps([names.get(st.get("vector_hash"), "") for st in steered]),
            "layers": json.dumps(r["layers"]), "scopes": json.dumps([st.get("scope") for st in steered]),
            "temperature": s["sampling"]["temperature"] if legacy else s["temperature"],
            "seed": s["sampling"]["seed"] if legacy else s["seed"],
            "probe_suffix": (s["probe"]["suffix"] if legacy else s["probe_suffix"]) or "",
            "steps": r["timing"]["steps"], "decode_s": r["timing"]["decode_s"]}


def _export_csv(records: list[dict], out: Path) -> list[Path]:
    stem = out.with_suffix("")
    tables = {
        "runs": [_run_row(r) for r in records],
        "streams": [{"run_id": r["id"], **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in s.items()
                                          if k != "token_ids"},
                     "n_tokens": len(s["token_ids"]), "token_ids": json.dumps(s["token_ids"])}
                    for r in records for s in r["streams"]],
        "probes": [{"run_id": r["id"], **{k: v for k, v in p.items() if k != "logprobs"},
                    **{f"logp_{label}": v for label, v in p["logprobs"].items()}}
                   for r in records for p in r["probes"]],
    }
    paths = []
    for name, rows in tables.items():
        path = Path(f"{stem}_{name}.csv")
        fields = list(dict.fromkeys(k for row in rows for k in row)) or ["run_id"]
        with _atomic(path) as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(csv_cells.row(r) for r in rows)
        paths.append(path)
    return paths


class _atomic:
    """A text file written under a temporary name and renamed into place on success."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path.parent)
        self.f = os.fdopen(fd, "w", encoding="utf-8", newline="")
        return self.f

    def __exit__(self, exc_type, *rest) -> None:
        self.f.close()
        if exc_type is None:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


def _atomic_write(path: Path, text: str) -> None:
    with _atomic(path) as f:
        f.write(text)


def import_jsonl(store: Store, path: str | Path) -> tuple[int, int]:
    """Load an export back. Returns (imported, skipped because a run with that id exists)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no such file: {p}")
    records = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            records.append(loads(line, f"{p}:{number}"))
    imported = skipped = 0
    for number, r in enumerate(records, 1):
        try:
            if store.import_record(r):
                imported += 1
            else:
                skipped += 1
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{p}: record {number} is not a steer-ui run export "
                            f"({type(err).__name__}: {err})") from None
    return imported, skipped
