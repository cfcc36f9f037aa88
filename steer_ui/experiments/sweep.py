"""Sweeps: every question on every arm (``experiments.arms``: coefficients, budgets, vectors) and sample, scored.

One engine run per question and sample carries every pending arm as a row (the baseline arm is row 0),
so a sweep costs about one batched generation per question. The summary and figures are
``experiments.sweep_report``'s, computed from ``results.csv``. Results
are appended to ``results.csv`` after each run; running the same sweep into the same folder again
skips what is there (resume after an interruption). ``sweep.json`` records the settings, so a
different sweep cannot be appended to the wrong folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from steer_ui import csv_cells
from steer_ui.engine import worker
from steer_ui.engine.events import DoneEvent, ProbeEvent
from steer_ui.engine.knobs import default
from steer_ui.engine.probe import build_tree, choice_of
from steer_ui.engine.run_settings import MAX_CHOICE_CHARS, RunSettings
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.experiments.arms import Arm, arm_of, arms_from_coefs, check_arms
from steer_ui.experiments.grading import is_correct, read_answer
from steer_ui.experiments.questions import Question
from steer_ui.experiments.sweep_report import CoefSummary, summarise, token_interval, write_figure, write_summary
from steer_ui.log.recorder import RunRecorder
from steer_ui.log.store import Store
from steer_ui.model.loading import LoadedModel
from steer_ui.vectors.vector import SteeringVector

FIELDS = ["question_id", "arm", "coef", "sample", "seed", "gold", "extracted", "how", "correct", "forced",
          "forced_correct", "cot_tokens", "think_tokens", "flips", "settled_at", "finish_reason", "final_logodds",
          "final_mass", "final_p_gold", "run_id", "text"]
Progress = Callable[[int, int], None]  # (runs done, runs total)
HoldModel = Callable[[], AbstractContextManager]  # entered around each decode (a server's model lock)


@dataclass(frozen=True)
class SweepConfig:
    """Every question at every coefficient of one vector (and every sample), each run as ``template``
    says (system prompt, decoding, probe: the same knobs as a single run) with the question as its prompt.
    A coefficient of 0 is the baseline row; sample k uses the template's seed + k."""

    questions: list[Question]
    coefs: tuple[float, ...]
    template: RunSettings = field(default_factory=lambda: RunSettings(prompt=""))
    vector: SteeringVector | None = None
    layers: tuple[int, ...] | None = None
    scope: Scope = field(default_factory=Scope)
    samples: int = 1
    label: dict = field(default_factory=dict)  # what to record in sweep.json besides the settings (sources)
    extra_arms: tuple[Arm, ...] = ()  # --arm: baseline or any row spec, after the --coefs arms

    @property
    def arms(self) -> list[Arm]:
        return arms_from_coefs(self.coefs, self.vector, self.layers, self.scope) + list(self.extra_arms)

    def validate(self) -> None:
        if not self.coefs and not self.extra_arms:
            raise UserError("give at least one arm: --coefs '-4,0,4', or --arm baseline --arm budget:min=200")
        if len(set(self.coefs)) != len(self.coefs):
            raise UserError("coefficients repeat")
        if any(not math.isfinite(c) for c in self.coefs):
            raise UserError("a coefficient is not a finite number")
        if any(c != 0 for c in self.coefs) and self.vector is None:
            raise UserError("nonzero coefficients need a steering vector")
        check_arms(self.arms)
        if self.samples < 1:
            raise UserError(f"samples must be >= 1, got {self.samples}")
        if self.samples > 1 and self.template.temperature <= 0:
            raise UserError("several samples need sampling: pass --temperature > 0 (greedy runs are identical)")
        if self.template.rows:
            raise UserError("a sweep steers one vector over its coefficients; rows with their own vectors are "
                            "for single runs")
        replace(self.template, prompt="?").validate()

    def run_settings(self, question: Question, sample: int, arms: Sequence[Arm],
                     read_gold: bool = True) -> RunSettings:
        """The run for ``question``'s ``sample`` with a row for each arm besides the baseline (row 0). The
        probe reads Yes/No for a yes/no question and P(gold) for any other; ``read_gold=False`` (a gold
        answer the probe cannot read in this model: too long) turns the probe off for that question."""
        t = self.template
        rows = tuple(a.row for a in arms if a.row is not None)
        if question.kind == "yesno":  # the forced answer is read as Yes against No, whatever the template's
            return replace(t, prompt=question.prompt(), rows=rows, seed=t.seed + sample, probe_gold=None,
                           probe_choices=default("probe_choices"))
        return replace(t, prompt=question.prompt(), rows=rows, seed=t.seed + sample,
                       probe_gold=question.answer if read_gold else None, probe_choices=default("probe_choices"),
                       probe_every=t.probe_every if read_gold else 0)

    def fingerprint(self) -> dict:
        """What must match for a resume to append to existing results."""
        template = {k: v for k, v in self.template.to_dict().items() if k not in ("prompt", "rows", "probe_gold")}
        return {
            "questions": [q.id for q in self.questions], "coefs": list(self.coefs),
            "vector": self.vector.content_hash() if self.vector is not None else None,
            "layers": list(self.layers) if self.layers is not None else None, "scope": str(self.scope),
            "samples": self.samples, "template": template,
            # Only sweeps with --arm say so: a --coefs sweep begun before arms existed still resumes.
            **({"arms": [[a.name, a.row.vector.content_hash() if a.row.vector else None] if a.row else [a.name, None]
                         for a in self.extra_arms]} if self.extra_arms else {}),
        }


@dataclass(frozen=True)
class SweepResult:
    out: Path
    summary: list[CoefSummary]
    files: list[Path]
    notes: list[str]
    ran: int  # engine runs this call (0 when everything was already there)
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # per arm: tokens' bootstrap CI


def run_sweep(lm: LoadedModel, cfg: SweepConfig, out: str | Path, store: Store | None = None,
              progress: Progress | None = None, session_id: str | None = None, cancel=None,
              probe_positions: int | None = None, hold_model: HoldModel = nullcontext) -> SweepResult:
    """Run what ``out/results.csv`` does not have yet, then write the summary and the figure.

    ``probe_positions`` (a server's cap): a gold answer whose forms would add more positions to every
    reading than that is not probed. ``hold_model`` (a server's model lock) is held for each question's
    decode only: grading (math-verify in a child process, up to 5 s an answer) leaves the model to
    others, and other visitors' runs go between questions.

    Setting ``cancel`` (a threading.Event) stops the running question within a step; its partial run is
    logged as cancelled and not counted, and the questions done so far are summarised (a later call on
    the same folder resumes)."""
    cfg.validate()
    out = _prepare(Path(out).expanduser(), cfg)
    results = out / "results.csv"
    arms = cfg.arms
    done = {(r["question_id"], arm_of(r), int(r["sample"])) for r in _read(results)}
    todo = [(q, s) for q in cfg.questions for s in range(cfg.samples)
            if any((q.id, a.name, s) not in done for a in arms)]
    session = (session_id or store.new_session("sweep", str(out)[:200])) if store is not None else None
    total = len(cfg.questions) * cfg.samples
    if progress is not None:
        progress(total - len(todo), total)
    ran = 0
    for i, (q, sample) in enumerate(todo):
        if cancel is not None and cancel.is_set():
            break
        pending = [a for a in arms if (q.id, a.name, sample) not in done]
        rows = _one_run(lm, cfg, q, sample, pending, store, session, cancel, probe_positions, hold_model)
        if rows is None:  # stopped in the middle of this question
            break
        _append(results, rows)
        ran += 1
        if progress is not None:
            progress(total - len(todo) + i + 1, total)
    rows = _read(results)
    summary = summarise(rows, arms, cfg.questions)
    write_summary(summary, out)
    intervals = {a.name: token_interval(rows, a.name) for a in cfg.arms}
    notes = write_figure(summary, out, title=cfg.label.get("title", ""), intervals=intervals)
    files = [out / n for n in ("results.csv", "summary.csv", "summary.txt", "summary.json", "figure.html",
                               "figure.png", "pareto.html", "pareto.png", "sweep.json") if (out / n).exists()]
    if not todo:
        notes.append(f"every result was already in {results} ({total} question runs): ran nothing, and wrote "
                     "the summary and figure again")
    elif len(todo) < total and ran == len(todo):
        notes.append(f"resumed: {total - len(todo)} of {total} question runs were already in {results.name}; "
                     f"ran the other {ran}")
    if ran < len(todo):
        notes.append(f"stopped: {total - len(todo) + ran} of {total} question runs done; run the same sweep "
                     "into the same folder to resume")
    return SweepResult(out, summary, files, notes, ran, intervals)


def _prepare(out: Path, cfg: SweepConfig) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    meta = out / "sweep.json"
    mine = cfg.fingerprint()
    if meta.exists():
        try:
            theirs = json.loads(meta.read_text())["settings"]
        except (json.JSONDecodeError, KeyError):
            raise UserError(f"{meta} is damaged; use another --out folder") from None
        if theirs != mine:
            changed = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise UserError(f"{out} holds a different sweep (differs in: {', '.join(changed)}); "
                            "use another --out folder to start a new one")
    else:
        meta.write_text(json.dumps({"settings": mine, **cfg.label}, indent=1))
    return out


def gold_readable(lm: LoadedModel, answer: str, max_positions: int | None = None) -> bool:
    """Whether the probe can read ``answer`` as its gold answer in this model (length and tokens), adding
    at most ``max_positions`` positions to a reading (a server's cap; None: the probe's own)."""
    if len(answer) > MAX_CHOICE_CHARS:
        return False
    try:
        tree = build_tree((choice_of(lm.tokenizer, answer, "gold answer"),))
    except UserError:
        return False
    return max_positions is None or tree.size <= max_positions


def _one_run(lm: LoadedModel, cfg: SweepConfig, q: Question, sample: int, pending: list[Arm],
             store: Store | None, session: str | None, cancel=None,
             probe_positions: int | None = None, hold_model: HoldModel = nullcontext) -> list[dict] | None:
    readable = q.kind == "yesno" or gold_readable(lm, q.answer, probe_positions)
    settings = cfg.run_settings(q, sample, pending, readable)
    recorder = RunRecorder(store, session, lm, settings) if store is not None else None
    last: dict[int, ProbeEvent] = {}
    done: DoneEvent | None = None
    try:
        with hold_model():  # the decode only: grading below runs without the model
            for event in worker.stream(lm, settings, cancel):
                if recorder is not None:
                    recorder(event)
                if isinstance(event, ProbeEvent):
                    last[event.row] = event
                elif isinstance(event, DoneEvent):
                    done = event
    except Exception as err:  # Ctrl-C is not an error: close() below saves the run as cancelled
        if recorder is not None:
            recorder.fail(f"{type(err).__name__}: {err}")
        raise
    finally:
        if recorder is not None:
            recorder.close()
    assert done is not None
    if any(r.finish_reason == "cancelled" for r in done.rows):
        return None
    steering = iter(done.rows[1:])
    out = []
    for arm in pending:
        r = next(steering) if arm.row is not None else done.rows[0]
        got = read_answer(r.text, q.kind, lm.profile.think_close)
        probe = last.get(r.row)
        # The forced answer: what the probe says right after the chain of thought, when it is reliable.
        forced = ("Yes" if probe.logodds > 0 else "No") if probe and probe.reliable and probe.step == len(
            r.token_ids) else None
        out.append({
            "question_id": q.id, "arm": arm.name, "coef": arm.coef if arm.coef is not None else "",
            "sample": sample, "seed": settings.seed, "gold": q.answer,
            "extracted": got.value if got.value is not None else "", "how": got.how,
            "correct": int(is_correct(got.value, q)), "forced": forced or "",
            "forced_correct": int(is_correct(forced, q)) if q.kind == "yesno" else "",
            "cot_tokens": len(r.token_ids), "think_tokens": r.think_tokens if r.think_tokens is not None else "",
            "flips": r.dynamics.flips if r.dynamics else "", "settled_at": r.dynamics.settled_at if r.dynamics else "",
            "finish_reason": r.finish_reason,
            "final_logodds": round(probe.logodds, 4) if probe else "",
            "final_mass": round(probe.mass, 4) if probe else "",
            "final_p_gold": _p_gold(probe, q),
            "run_id": recorder.run_id if recorder is not None else "", "text": r.text,
        })
    return out


def _p_gold(probe: ProbeEvent | None, q: Question) -> float | str:
    """The probability of the gold answer where the row ended ("" when the probe did not read it)."""
    if probe is None:
        return ""
    label = ("Yes" if q.answer.strip().lower() in ("yes", "true") else "No") if q.kind == "yesno" else q.answer
    lp = probe.logprobs.get(label)
    return round(math.exp(lp), 4) if lp is not None else ""


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [csv_cells.read_row(r) for r in csv.DictReader(f)]


def _append(path: Path, rows: list[dict]) -> None:
    """Rows under the file's own header: a folder a sweep began before a column existed (final_p_gold)
    resumes without it, never with shifted columns."""
    new = not path.exists()
    fields = FIELDS if new else _header(path)
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(csv_cells.row(r) for r in rows)
        f.flush()
        os.fsync(f.fileno())  # a finished question survives a crash right after


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), None) or FIELDS
