"""What a run looks like on screen, built from engine events: pane contents, chart figure, final result.

Pure data, no Gradio: the dashboard sends ``streams_value()`` and ``chart_value()`` to two small
browser components, windowed by ``Windower`` so an update's size does not grow with the run;
``figure()`` is the whole plotly figure, for the HTML download.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field

from steer_ui.engine.events import DoneEvent, Event, ProbeEvent, StartEvent, TokenEvent

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
    token_ids: list[int] = field(default_factory=list)

    @property
    def display_label(self) -> str:
        return "Baseline" if self.row == 0 else f"coef {self.coef:+g}"


class RunView:
    """Accumulates one run's events. ``key`` tells the browser components when a new run starts."""

    def __init__(self, key: str, think_close: str | None = None):
        self.key = key
        self.think_close = think_close
        self.rows: list[RowView] = []
        self.choices: list[str] = []
        self.warnings: list[str] = []
        self.layers: list[int] = []
        self.scope = ""
        self.done: DoneEvent | None = None
        self.error: str | None = None
        self._tail: dict[int, str] = {}  # recent text per row, to spot a think tag split across tokens

    def apply(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.rows = [RowView(r.row, r.label, r.coef) for r in event.rows]
            self.choices = [c.label for c in event.probe_choices]
            self.warnings, self.layers, self.scope = list(event.warnings), list(event.layers), event.scope
        elif isinstance(event, TokenEvent):
            self._token(event)
        elif isinstance(event, ProbeEvent):
            row = self.rows[event.row]
            row.steps.append(event.step)
            row.logodds.append(_r(event.logodds))
            row.mass.append(_r(event.mass))
            row.reliable.append(event.reliable)
        elif isinstance(event, DoneEvent):
            self.done = event
            for result in event.rows:
                row = self.rows[result.row]
                row.finish, row.text = result.finish_reason, result.text

    def _token(self, ev: TokenEvent) -> None:
        row = self.rows[ev.row]
        row.pieces.append(ev.text)
        row.token_ids.append(ev.token_id)
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
    def finished(self) -> bool:
        return self.done is not None or self.error is not None

    # --- what the browser components get --------------------------------------------------------
    # Live values carry, per row, only the items from ``start`` on and say where that is ("from"): the
    # browser keeps what it has and appends, so an update's size does not grow with the run. The items
    # travel as JSON strings: Gradio's streaming diff garbles lists that shrink inside other lists
    # (gradio 6.31 utils.diff adjusts nested delete indices twice), while a string is replaced whole.
    def counts(self) -> tuple[list[int], list[int]]:
        """(tokens, probe readings) per row so far."""
        return [len(r.pieces) for r in self.rows], [len(r.steps) for r in self.rows]

    def streams_value(self, start: list[int] | None = None) -> dict:
        start = start or [0] * len(self.rows)
        return {
            "run": self.key,
            "choices": self.choices,
            "rows": [{"label": r.display_label, "colour": row_colour(r.row), "from": k,
                      "t": json.dumps(r.pieces[k:]), "lo": json.dumps(r.shade[k:]), "div": r.diverge,
                      "think": r.think_end, "end": r.finish}
                     for r, k in zip(self.rows, start)],
        }

    def chart_value(self, start: list[int] | None = None) -> dict:
        """The figure for the live chart: per trace its static properties, "from", and its points from
        there as a JSON string ``[x, y, marker symbols or null]``."""
        fig = self.figure(start)
        points = []
        for trace in fig["data"]:
            symbols = trace.get("marker", {}).pop("symbol", None)
            points.append(json.dumps([trace.pop("x"), trace.pop("y"), symbols]))
        return {"run": self.key, "data": fig["data"], "layout": fig["layout"], "from": fig["from"], "points": points}

    def figure(self, start: list[int] | None = None) -> dict:
        """The plotly figure (data + layout) as plain JSON, for the HTML export (and ``chart_value``).

        ``from`` gives, per trace, the index of its first point included (0: the whole figure).
        """
        start = start or [0] * len(self.rows)
        yes, no = self.choices[:2] if len(self.choices) >= 2 else ("Yes", "No")
        data: list[dict] = []
        for r, k in zip(self.rows, start):
            colour = row_colour(r.row)
            data.append({
                "type": "scatter", "mode": "lines+markers", "name": r.display_label, "legendgroup": str(r.row),
                "x": r.steps[k:], "y": r.logodds[k:], "line": {"color": colour, "width": 2},
                "marker": {"color": colour, "size": 5,
                           "symbol": ["circle" if ok else "x-open" for ok in r.reliable[k:]]},
                "hovertemplate": f"{r.display_label}<br>token %{{x}}<br>log-odds %{{y:.2f}}<extra></extra>",
            })
            data.append({
                "type": "scatter", "mode": "lines", "name": f"{r.display_label} mass", "legendgroup": str(r.row),
                "showlegend": False, "x": r.steps[k:], "y": r.mass[k:], "yaxis": "y2",
                "line": {"color": colour, "width": 1, "dash": "dot"},
                "hovertemplate": f"{r.display_label}<br>token %{{x}}<br>mass %{{y:.2f}}<extra></extra>",
            })
        shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": r.think_end, "x1": r.think_end, "y0": 0,
                   "y1": 1, "line": {"color": row_colour(r.row), "dash": "dash", "width": 1}}
                  for r in self.rows if r.think_end is not None]
        layout = {
            "margin": {"l": 56, "r": 56, "t": 28, "b": 40}, "height": 320,
            "xaxis": {"title": {"text": "generated tokens"}, "zeroline": False},
            "yaxis": {"title": {"text": f"log-odds  log p({yes}) - log p({no})"}, "zeroline": True,
                      "zerolinecolor": "#9ca3af"},
            "yaxis2": {"title": {"text": "mass on choices (dotted)"}, "overlaying": "y", "side": "right",
                       "range": [0, 1.02], "showgrid": False, "tickmode": "linear", "tick0": 0, "dtick": 0.25},
            "legend": {"orientation": "h", "y": 1.12, "x": 0},
            "shapes": shapes, "hovermode": "closest", "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff",
            # Same revision for a whole run: Plotly.react keeps the user's zoom while points arrive.
            "uirevision": self.key,
        }
        return {"run": self.key, "data": data, "layout": layout, "from": [k for k in start for _ in (0, 1)]}

    def result(self, run_id: str | None = None, status: str | None = None) -> dict:
        """The API's answer: each row's final text and its probe series."""
        return {
            "run_id": run_id, "status": status or ("error" if self.error else "finished" if self.done else "running"),
            "error": self.error, "warnings": self.warnings, "layers": self.layers, "scope": self.scope,
            "choices": self.choices,
            "rows": [{"row": r.row, "label": r.label, "coef": r.coef, "text": r.text or "".join(r.pieces),
                      "tokens": len(r.pieces), "finish_reason": r.finish, "first_divergence": r.diverge,
                      "think_end": r.think_end,
                      "probe": {"step": r.steps, "logodds": r.logodds, "mass": r.mass, "reliable": r.reliable}}
                     for r in self.rows],
        }


class Windower:
    """Live values for the browser that repeat only the last ``keep`` updates' worth of items.

    The repeat covers updates the browser coalesced or missed; one that misses more finds a gap
    (its "from" is past what it has) and fetches the whole value once (``Dashboard.snapshot``).
    """

    def __init__(self, keep: int = 8):
        self._past: deque[tuple[list[int], list[int]]] = deque(maxlen=keep)

    def __call__(self, view: RunView) -> tuple[dict, dict]:
        tokens, probes = view.counts()
        if len(self._past) < (self._past.maxlen or 0) or len(self._past[0][0]) != len(tokens):
            start_t, start_p = [0] * len(tokens), [0] * len(probes)
        else:
            start_t, start_p = self._past[0]
        self._past.append((tokens, probes))
        return view.streams_value(start_t), view.chart_value(start_p)
