"""Sweeps: every question on every arm (``experiments.arms``: coefficients, budgets, vectors) and sample, scored.

One engine run per question and sample carries every pending arm as a row (the baseline arm is row 0),
so a sweep costs about one batched generation per question. The summary and figures are
``experiments.sweep_report``'s, computed from ``results.csv``. Results
are appended to ``results.csv`` after each run; running the same sweep into the same folder again
skips what is there (resume after an interruption). ``sweep.json`` records the settings, so a
different sweep cannot be appended to the wrong folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from steer_ui.engine import worker
from steer_ui.engine.events import DoneEvent, Event, ProbeEvent
from steer_ui.engine.knobs import default
from steer_ui.engine.probe import build_tree, choice_of
from steer_ui.engine.run_settings import MAX_CHOICE_CHARS, RunSettings
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.experiments.arms import Arm, arms_from_coefs, check_arms
from steer_ui.experiments.grading import is_correct, read_answer
from steer_ui.experiments.questions import Question
from steer_ui.experiments.sweep_files import FIELDS, SweepFolder, SweepResult  # noqa: F401 - re-exported
from steer_ui.log.recorder import RunRecorder
from steer_ui.log.store import Store
from steer_ui.model.loading import LoadedModel
from steer_ui.vectors.vector import SteeringVector

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
        settings = replace(t, prompt=question.prompt(), rows=rows, seed=t.seed + sample,
                           probe_gold=question.answer, probe_choices=default("probe_choices"))
        return settings if read_gold else without_gold(settings)

    def units(self, done: set[tuple[str, str, int]], model: str) -> list[Unit]:
        """What is left to run: each (question, sample) with the arms ``done`` (results.csv's keys) lacks."""
        units = []
        for q in self.questions:
            for s in range(self.samples):
                pending = [a for a in self.arms if (q.id, a.name, s) not in done]
                if pending:
                    units.append(Unit(q, s, pending, unit_id(model, self.run_settings(q, s, pending), q, s, pending)))
        return units

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
class Unit:
    """One engine run of a sweep: a question's sample with all its pending arms as rows of one batch."""

    question: Question
    sample: int
    arms: list[Arm]
    id: str  # deterministic: the same unit has the same id in every run of the sweep, on any machine


def unit_id(model: str, settings: RunSettings, question: Question, sample: int, arms: Sequence[Arm]) -> str:
    """A hash of what decides the unit's result: the model, the settings (vectors by content hash), the
    question, the sample and the arms' names."""
    key = {"model": model, "settings": settings.to_dict(), "question": [question.id, question.question,
           question.answer], "sample": sample, "arms": [a.name for a in arms]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def without_gold(settings: RunSettings) -> RunSettings:
    """A gold answer the probe cannot read in this model (too long, or past a server's cap): no probe."""
    return replace(settings, probe_gold=None, probe_every=0)


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
    the same folder resumes). ``experiments.cluster.run_sweep_on_ray`` runs the same units on Ray workers."""
    cfg.validate()
    folder = SweepFolder.open(out, cfg.fingerprint(), cfg.label)
    todo = cfg.units(folder.done(), lm.model_id)
    session = (session_id or store.new_session("sweep", str(folder.path)[:200])) if store is not None else None
    total = len(cfg.questions) * cfg.samples
    if progress is not None:
        progress(total - len(todo), total)
    ran = 0
    for i, unit in enumerate(todo):
        if cancel is not None and cancel.is_set():
            break
        rows = _one_run(lm, cfg, unit, store, session, cancel, probe_positions, hold_model)
        if rows is None:  # stopped in the middle of this question
            break
        folder.append(rows)
        ran += 1
        if progress is not None:
            progress(total - len(todo) + i + 1, total)
    return folder.finish(cfg.arms, cfg.questions, cfg.label.get("title", ""), total, len(todo), ran)


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


def _one_run(lm: LoadedModel, cfg: SweepConfig, unit: Unit, store: Store | None, session: str | None, cancel=None,
             probe_positions: int | None = None, hold_model: HoldModel = nullcontext) -> list[dict] | None:
    q = unit.question
    readable = q.kind == "yesno" or gold_readable(lm, q.answer, probe_positions)
    settings = cfg.run_settings(q, unit.sample, unit.arms, readable)
    recorder = RunRecorder(store, session, lm, settings) if store is not None else None
    events = []
    try:
        with hold_model():  # the decode only: grading below runs without the model
            for event in worker.stream(lm, settings, cancel):
                if recorder is not None:
                    recorder(event)
                events.append(event)
    except Exception as err:  # Ctrl-C is not an error: close() below saves the run as cancelled
        if recorder is not None:
            recorder.fail(f"{type(err).__name__}: {err}")
        raise
    finally:
        if recorder is not None:
            recorder.close()
    rows = score(unit, settings.seed, events, lm.profile.think_close)
    if rows is None:
        return None
    return [{**r, "run_id": recorder.run_id if recorder is not None else "", "worker": "local"} for r in rows]


def score(unit: Unit, seed: int, events: Sequence[Event], think_close: str | None) -> list[dict] | None:
    """results.csv's rows for a unit's run (``events``, ending in its done event), one per arm, graded;
    None when the run was cancelled. ``run_id`` and ``worker`` are the caller's to fill."""
    q = unit.question
    last: dict[int, ProbeEvent] = {e.row: e for e in events if isinstance(e, ProbeEvent)}
    done = next(e for e in reversed(events) if isinstance(e, DoneEvent))
    if any(r.finish_reason == "cancelled" for r in done.rows):
        return None
    steering = iter(done.rows[1:])
    out = []
    for arm in unit.arms:
        r = next(steering) if arm.row is not None else done.rows[0]
        got = read_answer(r.text, q.kind, think_close)
        probe = last.get(r.row)
        # The forced answer: what the probe says right after the chain of thought, when it is reliable.
        forced = ("Yes" if probe.logodds > 0 else "No") if probe and probe.reliable and probe.step == len(
            r.token_ids) else None
        out.append({
            "question_id": q.id, "arm": arm.name, "coef": arm.coef if arm.coef is not None else "",
            "sample": unit.sample, "seed": seed, "gold": q.answer,
            "extracted": got.value if got.value is not None else "", "how": got.how,
            "correct": int(is_correct(got.value, q)), "forced": forced or "",
            "forced_correct": int(is_correct(forced, q)) if q.kind == "yesno" else "",
            "cot_tokens": len(r.token_ids), "think_tokens": r.think_tokens if r.think_tokens is not None else "",
            "flips": r.dynamics.flips if r.dynamics else "", "settled_at": r.dynamics.settled_at if r.dynamics else "",
            "finish_reason": r.finish_reason,
            "final_logodds": round(probe.logodds, 4) if probe else "",
            "final_mass": round(probe.mass, 4) if probe else "",
            "final_p_gold": _p_gold(probe, q), "text": r.text, "unit": unit.id,
        })
    return out


def _p_gold(probe: ProbeEvent | None, q: Question) -> float | str:
    """The probability of the gold answer where the row ended ("" when the probe did not read it)."""
    if probe is None:
        return ""
    label = ("Yes" if q.answer.strip().lower() in ("yes", "true") else "No") if q.kind == "yesno" else q.answer
    lp = probe.logprobs.get(label)
    return round(math.exp(lp), 4) if lp is not None else ""
