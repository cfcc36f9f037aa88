"""Reading the session log back: export (JSONL, CSV), import, and the settings to replay a run."""

from __future__ import annotations

import base64
import csv
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from safetensors.torch import load as safetensors_load
from sqlalchemy import select

from steer_ui.engine.detokenize import Detokenizer
from steer_ui.errors import UserError
from steer_ui.engine.events import (ChoiceInfo, DoneEvent, Event, ProbeEvent, RowInfo, RowResult, StartEvent, Timing,
                             TokenEvent)
from steer_ui.engine.run_settings import RunSettings
from steer_ui.log.store import ProbeRow, RunRow, SessionRow, Store, StreamRow, VectorRow, utcnow
from steer_ui.vectors.vector import SteeringVector

FORMATS = ("jsonl", "csv")


def stored_vector(store: Store, vector_hash: str) -> SteeringVector:
    data = store.vector_bytes(vector_hash)
    tensors = safetensors_load(data)
    # safetensors' own API reads metadata only from a file; the header is 8 bytes of length, then JSON.
    header_len = int.from_bytes(data[:8], "little")
    meta = dict(json.loads(data[8:8 + header_len]).get("__metadata__") or {})
    directions = {int(k.split(".")[1]): v for k, v in tensors.items()}
    return SteeringVector(directions, meta.pop("model_hint", ""), meta.pop("name", ""), meta)


def replay_settings(store: Store, run_id: str, session_id: str | None = None) -> tuple[str, RunSettings]:
    """(model id, settings) that reproduce run ``run_id``, its stored vector copy included."""
    run = store.get_run(run_id, session_id)
    vector = stored_vector(store, run.vector_hash) if run.vector_hash else None
    return run.model_id, RunSettings.from_dict(run.settings, vector)


def run_record(store: Store, run: RunRow) -> dict:
    """One run as plain JSON: settings, the vector copy, streams and the probe series."""
    vector = None
    if run.vector_hash:
        with store.Session() as s:
            v = s.get(VectorRow, run.vector_hash)
            vector = {"hash": v.hash, "name": v.name, "model_hint": v.model_hint,
                      "safetensors_b64": base64.b64encode(v.data).decode()}
    return {
        "id": run.id, "session_id": run.session_id, "created": _iso(run.created), "finished": _iso(run.finished),
        "status": run.status, "error": run.error, "model_id": run.model_id, "model_source": run.model_source,
        "dtype": run.dtype, "device": run.device, "settings": run.settings, "prompt_text": run.prompt_text,
        "prompt_ids": run.prompt_ids, "layers": run.layers, "probe_suffix_ids": run.probe_suffix_ids,
        "probe_choices": run.probe_choices,
        "timing": {"load_s": run.load_s, "prefill_s": run.prefill_s, "decode_s": run.decode_s, "steps": run.steps},
        "vector": vector,
        "streams": [{"row": s.row, "label": s.label, "coef": s.coef, "token_ids": s.token_ids, "text": s.text,
                     "finish_reason": s.finish_reason} for s in run.streams],
        "probes": [{"row": p.row, "step": p.step, "logodds": p.logodds, "mass": p.mass, "logprobs": p.logprobs,
                    "reliable": p.reliable, "think_closed": p.think_closed} for p in store.probe_points(run.id)],
    }


def record_events(record: dict, tokenizer=None) -> Iterator[Event]:
    """A logged run (``run_record``) as the engine's event stream, to show it again as it was streamed.

    With the run's tokenizer each token gets its own text; without it (another model is loaded) a
    row's text arrives whole with its first token.
    """
    streams = sorted(record["streams"], key=lambda s: s["row"])
    settings = record["settings"]
    yield StartEvent(
        model=record["model_id"], prompt_ids=record["prompt_ids"], prompt_text=record["prompt_text"],
        rows=[RowInfo(s["row"], s["label"], s["coef"]) for s in streams], layers=record["layers"],
        scope=settings.get("scope", "all"), probe_suffix_ids=record["probe_suffix_ids"],
        probe_choices=[ChoiceInfo(c["label"], c["token_ids"]) for c in record["probe_choices"]],
        probe_every=settings.get("probe", {}).get("every", 0),
    )
    pieces = {s["row"]: _pieces(s, tokenizer) for s in streams}
    probes: dict[int, list[dict]] = {}
    for p in record["probes"]:
        probes.setdefault(p["step"], []).append(p)
    longest = max((len(s["token_ids"]) for s in streams), default=0)
    for step in range(longest + 1):
        # The engine reads the probe after ``step`` tokens, before the token at index ``step``.
        for p in sorted(probes.get(step, []), key=lambda p: p["row"]):
            yield ProbeEvent(p["row"], step, p["logodds"], p["mass"], p["logprobs"], p["reliable"],
                             p.get("think_closed", False))
        for s in streams:
            if step < len(s["token_ids"]):
                yield TokenEvent(s["row"], step, s["token_ids"][step], pieces[s["row"]][step])
    t = record.get("timing") or {}
    yield DoneEvent(
        rows=[RowResult(s["row"], s["label"], s["coef"], s["token_ids"], s["text"], s["finish_reason"] or "cancelled")
              for s in streams],
        timing=Timing(t.get("load_s") or 0.0, t.get("prefill_s") or 0.0, t.get("decode_s") or 0.0,
                      t.get("steps") or 0),
    )


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


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def iter_records(store: Store, session_id: str | None = None, run_id: str | None = None) -> Iterator[dict]:
    if run_id is not None:
        yield run_record(store, store.get_run(run_id, session_id))
        return
    with store.Session() as s:
        q = select(RunRow.id).order_by(RunRow.created)
        if session_id is not None:
            q = q.where(RunRow.session_id == session_id)
        ids = list(s.scalars(q))
    for rid in ids:
        yield run_record(store, store.get_run(rid))


def export(store: Store, out: str | Path, fmt: str, session_id: str | None = None,
           run_id: str | None = None) -> list[Path]:
    """Write the chosen runs; JSONL is one object per run, CSV is three flat tables. Returns the files."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"no such folder: {out.parent}")
    records = list(iter_records(store, session_id, run_id))
    if fmt == "jsonl":
        _atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return [out]
    return _export_csv(records, out)


def _export_csv(records: list[dict], out: Path) -> list[Path]:
    stem = out.with_suffix("")
    tables = {
        "runs": [{"run_id": r["id"], "session_id": r["session_id"], "created": r["created"], "status": r["status"],
                  "model_id": r["model_id"], "prompt": r["settings"]["prompt"],
                  "coefs": json.dumps(r["settings"]["coefs"]), "layers": json.dumps(r["layers"]),
                  "scope": r["settings"]["scope"], "temperature": r["settings"]["sampling"]["temperature"],
                  "seed": r["settings"]["sampling"]["seed"], "vector": (r["vector"] or {}).get("name", ""),
                  "probe_suffix": r["settings"]["probe"]["suffix"] or "", "steps": r["timing"]["steps"],
                  "decode_s": r["timing"]["decode_s"]} for r in records],
        "streams": [{"run_id": r["id"], **{k: v for k, v in s.items() if k != "token_ids"},
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
            writer.writerows(rows)
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
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{p}:{number}: not valid JSON ({err.msg})") from None
    imported = skipped = 0
    for number, r in enumerate(records, 1):
        try:
            if _import_one(store, r):
                imported += 1
            else:
                skipped += 1
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{p}: record {number} is not a steer-ui run export "
                            f"({type(err).__name__}: {err})") from None
    return imported, skipped


def _import_one(store: Store, r: dict) -> bool:
    with store.Session.begin() as s:
        if s.get(RunRow, r["id"]) is not None:
            return False
        if s.get(SessionRow, r["session_id"]) is None:
            now = utcnow()
            s.add(SessionRow(id=r["session_id"], kind="import", label="imported", created=now, last_seen=now))
        v = r.get("vector")
        if v and s.get(VectorRow, v["hash"]) is None:
            s.add(VectorRow(hash=v["hash"], name=v["name"], model_hint=v["model_hint"],
                            data=base64.b64decode(v["safetensors_b64"])))
        s.flush()  # session and vector rows before the run that references them
        t = r.get("timing") or {}
        s.add(RunRow(
            id=r["id"], session_id=r["session_id"], created=datetime.fromisoformat(r["created"]),
            finished=datetime.fromisoformat(r["finished"]) if r.get("finished") else None, status=r["status"],
            error=r.get("error"), owner=None, model_id=r["model_id"], model_source=r.get("model_source", ""),
            dtype=r["dtype"], device=r["device"], settings=r["settings"], prompt_text=r["prompt_text"],
            prompt_ids=r["prompt_ids"], vector_hash=v["hash"] if v else None, layers=r["layers"],
            probe_suffix_ids=r["probe_suffix_ids"], probe_choices=r["probe_choices"], load_s=t.get("load_s"),
            prefill_s=t.get("prefill_s"), decode_s=t.get("decode_s"), steps=t.get("steps"),
        ))
        s.flush()
        s.add_all(StreamRow(run_id=r["id"], **st) for st in r["streams"])
        s.add_all(ProbeRow(run_id=r["id"], **pr) for pr in r["probes"])
    return True
