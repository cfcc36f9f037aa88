"""A run as people look at it, folded from engine events: each row's pieces, probe series, first
divergence and end of thinking, and the result the API returns.

Pure data, no Gradio: the dashboard (``steer_ui.app.stream_values``), the chart (``chart``) and the
CLI's analysis all read a ``RunView``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from steer_ui.engine.events import DoneEvent, Event, InterveneEvent, ProbeEvent, StartEvent, TokenEvent

# Row colours: baseline in grey, steered rows from a palette that reads on white and in print.
BASELINE_COLOUR = "#6b7280"
PALETTE = ("#2563eb", "#dc2626", "#059669", "#9333ea", "#d97706", "#0891b2", "#db2777", "#4d7c0f")


def row_colour(row: int) -> str:
    return BASELINE_COLOUR if row == 0 else PALETTE[(row - 1) % len(PALETTE)]


def _r(x: float) -> float | None:
    """Rounded for the wire; NaN/inf (an empty choice mass) become gaps, which JSON can carry."""
    return round(x, 3) if math.isfinite(x) else None


@dataclass
class RowView:
    row: int
    label: str
    coef: float
    pieces: list[str] = field(default_factory=list)  # one per generated token
    shade: list[float | None] = field(default_factory=list)  # log-odds in force when each token was made
    diverge: int | None = None  # first step where this row's token differs from the baseline's
    think_end: int | None = None  # generated tokens up to and including the closing think tag
    finish: str | None = None
    text: str = ""  # the final text (DoneEvent), including any held-back bytes
    steps: list[int] = field(default_factory=list)
    logodds: list[float | None] = field(default_factory=list)
    mass: list[float | None] = field(default_factory=list)
    reliable: list[bool] = field(default_factory=list)
    final: list[bool] = field(default_factory=list)  # the reading where the row ended (one per row, at its end)
    logprobs: list[dict[str, float]] = field(default_factory=list)  # each choice's log-probability per reading
    token_ids: list[int] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)  # per token: fed by a budget, not the model's choice
    stop_logprobs: list[float | None] = field(default_factory=list)  # per token: log p(end) where it was chosen
    interventions: list[dict] = field(default_factory=list)  # {"step", "kind", "text"}
    budget: str | None = None
    scope: str | None = None  # the row's own scope (None for the baseline)

    @property
    def display_label(self) -> str:
        return "Baseline" if self.row == 0 else self.label


class RunView:
    """Accumulates one run's events. ``key`` tells the browser components when a new run starts."""

    def __init__(self, key: str, think_close: str | None = None):
        self.key = key
        self.think_close = think_close
        self.rows: list[RowView] = []
        self.choices: list[str] = []
        self.gold: str | None = None  # the gold answer, when the probe reads P(gold)
        self.warnings: list[str] = []
        self.layers: list[int] = []
        self.scope = ""
        self.done: DoneEvent | None = None
        self.error: str | None = None
        self._tail: dict[int, str] = {}  # recent text per row, to spot a think tag split across tokens

    def apply(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.rows = [RowView(r.row, r.label, r.coef, budget=r.budget, scope=r.scope) for r in event.rows]
            self.choices = [c.label for c in event.probe_choices]
            self.gold = event.probe_gold
            self.warnings, self.layers, self.scope = list(event.warnings), list(event.layers), event.scope
        elif isinstance(event, TokenEvent):
            self._token(event)
        elif isinstance(event, InterveneEvent):
            self.rows[event.row].interventions.append({"step": event.step, "kind": event.kind, "text": event.text})
        elif isinstance(event, ProbeEvent):
            row = self.rows[event.row]
            row.steps.append(event.step)
            row.logodds.append(_r(event.logodds))
            row.mass.append(_r(event.mass))
            row.reliable.append(event.reliable)
            row.final.append(event.final)
            row.logprobs.append(event.logprobs)
        elif isinstance(event, DoneEvent):
            self.done = event
            for result in event.rows:
                row = self.rows[result.row]
                row.finish, row.text = result.finish_reason, result.text

    def _token(self, ev: TokenEvent) -> None:
        row = self.rows[ev.row]
        row.pieces.append(ev.text)
        row.token_ids.append(ev.token_id)
        row.forced.append(ev.forced)
        row.stop_logprobs.append(_r(ev.stop_logprob) if ev.stop_logprob is not None else None)
        row.shade.append(row.logodds[-1] if row.logodds and row.reliable[-1] else None)
        if ev.row > 0 and row.diverge is None:
            base = self.rows[0].token_ids
            # Rows advance in lockstep and the baseline is emitted first in each step.
            if ev.step >= len(base) or base[ev.step] != ev.token_id:
                row.diverge = ev.step
        if self.think_close and row.think_end is None:
            tail = (self._tail.get(ev.row, "") + ev.text)[-64:]
            self._tail[ev.row] = tail
            if self.think_close in tail:
                row.think_end = ev.step + 1

    @property
    def has_budget(self) -> bool:
        """A budget row or an at-end row runs: the urge to stop is what they act on."""
        return any(r.budget or (r.scope or "").startswith("at-end") for r in self.rows)

    @property
    def finished(self) -> bool:
        return self.done is not None or self.error is not None

    def counts(self) -> tuple[list[int], list[int]]:
        """(tokens, probe readings) per row so far."""
        return [len(r.pieces) for r in self.rows], [len(r.steps) for r in self.rows]

    def dynamics(self, row: int) -> dict | None:
        """The row's answer dynamics (``engine.dynamics``) once the run is done; None before, or unprobed."""
        result = self.done.rows[row] if self.done is not None and row < len(self.done.rows) else None
        return asdict(result.dynamics) if result is not None and result.dynamics is not None else None

    def result(self, run_id: str | None = None, status: str | None = None) -> dict:
        """The API's answer: each row's final text and its probe series."""
        return {
            "run_id": run_id, "status": status or ("error" if self.error else "finished" if self.done else "running"),
            "error": self.error, "warnings": self.warnings, "layers": self.layers, "scope": self.scope,
            "choices": self.choices, "gold": self.gold,
            "rows": [{"row": r.row, "label": r.label, "coef": r.coef, "text": r.text or "".join(r.pieces),
                      "tokens": len(r.pieces), "finish_reason": r.finish, "first_divergence": r.diverge,
                      "think_end": r.think_end, "budget": r.budget,
                      "forced": [i for i, f in enumerate(r.forced) if f], "interventions": r.interventions,
                      "stop_logprob": r.stop_logprobs, "dynamics": self.dynamics(r.row),
                      "probe": {"step": r.steps, "logodds": r.logodds, "mass": r.mass, "reliable": r.reliable,
                                "final": r.final}}
                     for r in self.rows],
        }
