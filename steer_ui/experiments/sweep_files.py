"""A sweep's folder: ``sweep.json`` (the settings a resume must match), ``results.csv`` (a line per
question, arm and sample, appended and synced after each unit) and, at the end, the summary and figures.

Only the process that runs the sweep (in process, or the driver of a Ray sweep) writes here; a row whose
(question, arm, sample) is already in results.csv is never written again, so a retried or repeated unit
is counted once.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from steer_ui import csv_cells
from steer_ui.errors import UserError
from steer_ui.experiments.arms import Arm, arm_of
from steer_ui.experiments.questions import Question
from steer_ui.experiments.sweep_report import CoefSummary, summarise, token_interval, write_figure, write_summary

FIELDS = ["question_id", "arm", "coef", "sample", "seed", "gold", "extracted", "how", "correct", "forced",
          "forced_correct", "cot_tokens", "think_tokens", "flips", "settled_at", "finish_reason", "final_logodds",
          "final_mass", "final_p_gold", "run_id", "text", "unit", "worker"]
Key = tuple[str, str, int]  # (question id, arm, sample)
OUTPUTS = ("results.csv", "summary.csv", "summary.txt", "summary.json", "figure.html", "figure.png", "pareto.html",
           "pareto.png", "sweep.json", "failed.jsonl", "workers.json")


@dataclass(frozen=True)
class SweepResult:
    out: Path
    summary: list[CoefSummary]
    files: list[Path]
    notes: list[str]
    ran: int  # engine runs this call (0 when everything was already there)
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # per arm: tokens' bootstrap CI


def key_of(row: dict) -> Key:
    return row["question_id"], arm_of(row), int(row["sample"])


class SweepFolder:
    """``open`` checks (or writes) sweep.json; ``append`` adds a unit's rows; ``finish`` summarises."""

    def __init__(self, path: Path):
        self.path = path
        self.results = path / "results.csv"
        self._written: set[Key] = {key_of(r) for r in self.rows()}

    @classmethod
    def open(cls, out: str | Path, fingerprint: dict, label: dict) -> SweepFolder:
        """The folder for the sweep whose settings are ``fingerprint`` (``SweepConfig.fingerprint``): a new
        one, or one that holds the same sweep (a resume); ``label`` goes into sweep.json beside them."""
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
        meta = path / "sweep.json"
        mine = fingerprint
        if meta.exists():
            try:
                theirs = json.loads(meta.read_text())["settings"]
            except (json.JSONDecodeError, KeyError):
                raise UserError(f"{meta} is damaged; use another --out folder") from None
            if theirs != mine:
                changed = sorted(k for k in mine if theirs.get(k) != mine[k])
                raise UserError(f"{path} holds a different sweep (differs in: {', '.join(changed)}); "
                                "use another --out folder to start a new one")
        else:
            meta.write_text(json.dumps({"settings": mine, **label}, indent=1))
        return cls(path)

    def done(self) -> set[Key]:
        return set(self._written)

    def rows(self) -> list[dict]:
        if not self.results.exists():
            return []
        with self.results.open(newline="", encoding="utf-8") as f:
            return [csv_cells.read_row(r) for r in csv.DictReader(f)]

    def append(self, rows: Iterable[dict]) -> int:
        """Rows under the file's own header (a folder a sweep began before a column existed resumes without
        it, never with shifted columns), each (question, arm, sample) once; returns how many were new."""
        fresh = [r for r in rows if key_of(r) not in self._written]
        if not fresh:
            return 0
        new = not self.results.exists()
        fields = FIELDS if new else self._header()
        with self.results.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(csv_cells.row(r) for r in fresh)
            f.flush()
            os.fsync(f.fileno())  # a finished question survives a crash right after
        self._written.update(key_of(r) for r in fresh)
        return len(fresh)

    def fail(self, unit_id: str, question_id: str, sample: int, why: str) -> None:
        """A unit that failed for a reason in its input: kept in failed.jsonl (a later run tries it again)."""
        with (self.path / "failed.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"unit": unit_id, "question_id": question_id, "sample": sample, "error": why}) + "\n")

    def _header(self) -> list[str]:
        with self.results.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None) or FIELDS

    def finish(self, arms: Sequence[Arm], questions: Sequence[Question], title: str, total: int, todo: int, ran: int,
               notes: Iterable[str] = ()) -> SweepResult:
        """summary.csv/.txt/.json and the figures from results.csv, and what to tell the user: ``total``
        question runs in the sweep, ``todo`` of them left at the start, ``ran`` of those run now."""
        rows = self.rows()
        summary = summarise(rows, arms, questions)
        write_summary(summary, self.path)
        intervals = {a.name: token_interval(rows, a.name) for a in arms}
        notes = [*write_figure(summary, self.path, title=title, intervals=intervals), *notes]
        files = [self.path / n for n in OUTPUTS if (self.path / n).exists()]
        if not todo:
            notes.append(f"every result was already in {self.results} ({total} question runs): ran nothing, and "
                         "wrote the summary and figure again")
        elif todo < total and ran == todo:
            notes.append(f"resumed: {total - todo} of {total} question runs were already in {self.results.name}; "
                         f"ran the other {ran}")
        if ran < todo:
            notes.append(f"stopped: {total - todo + ran} of {total} question runs done; run the same sweep into the "
                         "same folder to resume")
        return SweepResult(self.path, summary, files, notes, ran, intervals)
