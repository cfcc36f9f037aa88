"""Where did the reasoning go wrong: the probe curve read at step boundaries of a chain of thought.

A step ends at a newline. Its reading is the row's own probe point at the step's last token (exact
with ``--probe-every 1``, which costs nothing extra in this engine), else the latest point before it,
so steered rows are read under their own steering, as they were streamed. A step is flagged when the
log-odds changes sign (``flip``) or falls by more than ``drop`` (``drop``): candidates for the first
wrong step. The answer *emerges* at the first step whose reading is reliable and beyond ``commit``.

Two estimates of a step's value (how likely the solution is to end correct from there, GLoRe's
question): a run probed with a gold answer gives P(gold) at every step for free (the forced answer's
probability), and rollouts (optional, costly: K sampled continuations per step) count how many end
correct. P(gold) *collapses* at the first step where it falls below ``collapse`` times its peak so far
(by at least 0.1); with both estimates, ``agreement`` says how well the cheap one tracks the costly one.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, replace

from steer_ui.engine.decode import run as engine_run
from steer_ui.engine.events import DoneEvent
from steer_ui.engine.run_settings import RunSettings, SteeredRow
from steer_ui.errors import UserError
from steer_ui.experiments.grading import is_correct, read_answer
from steer_ui.experiments.questions import Question
from steer_ui.model.loading import LoadedModel


@dataclass(frozen=True)
class Step:
    index: int
    start: int  # first token of the step
    end: int  # one past its last token: the probe reading after ``end`` tokens belongs to it
    text: str
    reading_step: int | None  # the probe step used (== end when exact)
    logodds: float | None
    mass: float | None
    reliable: bool
    flag: str | None  # flip | drop | None
    value: float | None = None  # rollouts: the share of continuations from here that end correct
    p_gold: float | None = None  # the probe's probability of the gold answer at the step's reading


@dataclass(frozen=True)
class Analysis:
    steps: list[Step]
    first_flag: int | None  # index of the first flagged step
    emergence: int | None  # index of the step where the probe first commits
    commit: float
    drop: float
    collapse: int | None = None  # index of the step where P(gold) collapses


@dataclass(frozen=True)
class Agreement:
    """How well P(gold) tracks the rollout value over a row's steps."""

    n: int  # steps with both
    pearson: float | None  # None when either is constant (or fewer than 3 steps)
    mean_abs_diff: float


def split_steps(pieces: list[str]) -> list[tuple[int, int]]:
    """Token ranges [start, end) of the steps: a step ends with a token that contains a newline."""
    ranges, start = [], 0
    for i, piece in enumerate(pieces):
        if "\n" in piece:
            if "".join(pieces[start:i + 1]).strip():
                ranges.append((start, i + 1))
                start = i + 1
            else:  # blank lines join the next step
                continue
    if start < len(pieces) and "".join(pieces[start:]).strip():
        ranges.append((start, len(pieces)))
    return ranges


def analyze(pieces: list[str], probe_steps: list[int], logodds: list[float], mass: list[float],
            reliable: list[bool], commit: float = 2.0, drop: float = 2.0, p_gold: list[float] | None = None,
            collapse: float = 0.5) -> Analysis:
    """Steps, their readings and flags, from a row's tokens and its probe series (sorted by step);
    ``p_gold``: the gold answer's probability at each reading, when the run's probe read it."""
    steps: list[Step] = []
    prev: float | None = None
    for index, (start, end) in enumerate(split_steps(pieces)):
        at = bisect.bisect_right(probe_steps, end) - 1
        lo = logodds[at] if at >= 0 else None
        ok = reliable[at] if at >= 0 else False
        flag = None
        if lo is not None and prev is not None and ok:
            if (lo > 0) != (prev > 0) and abs(lo - prev) > 1e-9:
                flag = "flip"
            elif prev - lo > drop:
                flag = "drop"
        steps.append(Step(index, start, end, "".join(pieces[start:end]), probe_steps[at] if at >= 0 else None, lo,
                          mass[at] if at >= 0 else None, ok, flag,
                          p_gold=p_gold[at] if p_gold is not None and at >= 0 else None))
        if lo is not None and ok:
            prev = lo
    first_flag = next((s.index for s in steps if s.flag), None)
    emergence = next((s.index for s in steps if s.reliable and s.logodds is not None and abs(s.logodds) >= commit),
                     None)
    return Analysis(steps, first_flag, emergence, commit, drop, _collapse(steps, collapse))


def _collapse(steps: list[Step], ratio: float) -> int | None:
    """The first step where P(gold) falls below ``ratio`` times its peak so far, by 0.1 or more."""
    peak = None
    for s in steps:
        if s.p_gold is None:
            continue
        if peak is not None and s.p_gold < ratio * peak and peak - s.p_gold >= 0.1:
            return s.index
        peak = s.p_gold if peak is None else max(peak, s.p_gold)
    return None


def agreement(analysis: Analysis) -> Agreement | None:
    """P(gold) against the rollout value over the steps that have both (None when none do)."""
    pairs = [(s.p_gold, s.value) for s in analysis.steps if s.p_gold is not None and s.value is not None]
    if not pairs:
        return None
    xs, ys = zip(*pairs)
    mean_abs = sum(abs(x - y) for x, y in pairs) / len(pairs)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx = sum((x - mx) ** 2 for x in xs) ** 0.5
    sy = sum((y - my) ** 2 for y in ys) ** 0.5
    r = sum((x - mx) * (y - my) for x, y in pairs) / (sx * sy) if len(pairs) >= 3 and sx > 0 and sy > 0 else None
    return Agreement(len(pairs), r, mean_abs)


def rollout_values(lm: LoadedModel, prompt_text: str, analysis: Analysis, question: Question, k: int,
                   max_new_tokens: int, settings: RunSettings, row: SteeredRow | None,
                   progress: Callable[[int, int], None] | None = None) -> Analysis:
    """Each step's value: of ``k`` sampled continuations from the text up to its end, the share correct.

    The continuation runs under the row's own steering (``row``: its vector, coefficient, layers and
    scope; None for the baseline), as the only steered row.
    """
    why = no_rollouts(row)
    if why is not None:
        raise UserError(why)
    steps = []
    prefix = ""
    for i, step in enumerate(analysis.steps):
        prefix += step.text
        correct = 0
        for sample in range(k):
            rs = RunSettings(prompt=prompt_text + prefix, chat_template=False, rows=(row,) if row else (),
                             max_new_tokens=max_new_tokens, temperature=max(settings.temperature, 0.7), top_p=1.0,
                             top_k=0, seed=1000 + sample, probe_every=0)
            done = next(e for e in engine_run(lm, rs) if isinstance(e, DoneEvent))
            text = prefix + done.rows[-1].text
            correct += is_correct(read_answer(text, question.kind, lm.profile.think_close).value, question)
        steps.append(Step(**{**step.__dict__, "value": correct / k}))
        if progress is not None:
            progress(i + 1, len(analysis.steps))
    return replace(analysis, steps=steps)


def no_rollouts(row: SteeredRow | None) -> str | None:
    """Why a row's continuations cannot be sampled from its text alone (None: they can). A budget (and an
    at-end row, which follows another row's budget) acts on the row's whole history, the thinking tokens
    it used and the insertions it made; a continuation restarted from text would count them from zero."""
    if row is None:
        return None
    if row.budget is not None or row.scope.kind == "at-end":
        what = f"its budget ({row.budget})" if row.budget is not None else f"its scope ({row.scope})"
        return (f"rollouts continue a row from its text under its own steering, and {what} depends on the row's "
                "whole history (thinking tokens used, insertions made), which its text does not carry")
    return None


def report(analysis: Analysis, label: str) -> str:
    gold = any(s.p_gold is not None for s in analysis.steps)
    collapse = f" | P(gold) collapses at step: {_or_dash(analysis.collapse)}" if gold else ""
    lines = [f"{label}: {len(analysis.steps)} steps | first flagged step: {_or_dash(analysis.first_flag)} | "
             f"answer emerges at step: {_or_dash(analysis.emergence)} (|log-odds| >= {analysis.commit:g}){collapse}",
             f"{'step':>4} {'tokens':>11} {'log-odds':>8} {'mass':>5} {'flag':>5} {'P(gold)':>7} {'value':>5}  text"]
    for s in analysis.steps:
        lo = f"{s.logodds:+.2f}" + ("" if s.reliable else "?") if s.logodds is not None else "-"
        mass = f"{s.mass:.2f}" if s.mass is not None else "-"
        p_gold = f"{s.p_gold:.3f}" if s.p_gold is not None else ""
        value = f"{s.value:.2f}" if s.value is not None else ""
        text = s.text.strip().replace("\n", " ")
        lines.append(f"{s.index:>4} {s.start:>5}-{s.end:<5} {lo:>8} {mass:>5} {s.flag or '':>5} {p_gold:>7} "
                     f"{value:>5}  {text[:64]}{'...' if len(text) > 64 else ''}")
    agree = agreement(analysis)
    if agree is not None:
        r = f"{agree.pearson:+.2f}" if agree.pearson is not None else "- (needs 3 steps and neither constant)"
        lines.append(f"P(gold) vs rollout value over {agree.n} steps: Pearson r {r}, mean |difference| "
                     f"{agree.mean_abs_diff:.2f}")
    return "\n".join(lines)


def _or_dash(index: int | None) -> str:
    return str(index) if index is not None else "-"


def figure(analysis: Analysis, label: str) -> dict:
    """The probe at each step boundary, flagged steps marked, and rollout values (if any) beside it."""
    steps = [s for s in analysis.steps if s.logodds is not None]
    data = [{"type": "scatter", "mode": "lines+markers", "name": f"{label}: probe log-odds",
             "x": [s.end for s in steps], "y": [s.logodds for s in steps],
             "text": [s.text.strip()[:80] for s in steps], "hovertemplate": "token %{x}: %{y:.2f}<br>%{text}",
             "marker": {"size": [12 if s.flag else 6 for s in steps],
                        "symbol": ["x" if s.flag else ("circle" if s.reliable else "circle-open") for s in steps]}}]
    if any(s.p_gold is not None for s in analysis.steps):
        data.append({"type": "scatter", "mode": "lines+markers", "name": "P(gold) (probe)", "yaxis": "y2",
                     "x": [s.end for s in analysis.steps if s.p_gold is not None],
                     "y": [s.p_gold for s in analysis.steps if s.p_gold is not None], "line": {"color": "#d97706"}})
    if any(s.value is not None for s in analysis.steps):
        data.append({"type": "scatter", "mode": "lines+markers", "name": "rollout value (share correct)",
                     "x": [s.end for s in analysis.steps], "y": [s.value for s in analysis.steps], "yaxis": "y2",
                     "line": {"dash": "dot"}})
    shapes = []
    for index, colour in ((analysis.emergence, "#059669"), (analysis.collapse, "#d97706")):
        if index is not None:
            x = analysis.steps[index].end
            shapes.append({"type": "line", "x0": x, "x1": x, "yref": "paper", "y0": 0, "y1": 1,
                           "line": {"dash": "dash", "color": colour}})
    return {"data": data, "layout": {
        "title": {"text": f"{label}: probe at step boundaries (x = flagged step, green = answer emerges, "
                          "orange = P(gold) collapses)"},
        "xaxis": {"title": {"text": "generated tokens (end of step)"}},
        "yaxis": {"title": {"text": "log-odds"}, "zeroline": True},
        "yaxis2": {"title": {"text": "P(gold) / rollout value"}, "overlaying": "y", "side": "right",
                   "range": [0, 1]},
        "shapes": shapes, "height": 380, "plot_bgcolor": "#ffffff"}}
