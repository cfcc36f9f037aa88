"""How a run looks in Jupyter: the rows side by side, each token coloured by the log-odds in force when it
was made (as the dashboard's panes), then the chart.

Everything the model wrote is escaped. plotly.js (~4.6 MB) is inlined into the first chart a notebook
shows and reused by later ones (``include_plotlyjs=False``), so a notebook of many runs stays small; a
notebook saved and reopened shows its charts while that first output is kept.
"""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING, Protocol

from steer_ui.views.run_view import RunView, row_colour

if TYPE_CHECKING:
    import plotly.graph_objects as go


class Run(Protocol):
    """What a display reads of ``api.result.Run`` (a protocol: that module shows itself through this one)."""

    view: RunView
    interrupted: bool
    id: str | None

    @property
    def prompt(self) -> str: ...

    @property
    def warnings(self) -> list[str]: ...

    def figure(self) -> go.Figure: ...

_plotly_sent = False  # whether this kernel has inlined plotly.js into an output already
SHADE_LIMIT = 4.0  # log-odds at which a token's colour is full strength
# A token a budget fed (not the model's choice), marked as the dashboard's panes mark it.
FORCED_STYLE = ";font-style:italic;color:#b45309;text-decoration:underline wavy #d97706"
FORCED_TITLE = ", inserted by the budget, not chosen by the model"


def shade(logodds: float | None) -> str:
    """A token's background: blue towards the first choice, red towards the second, none when unread."""
    if logodds is None or not math.isfinite(logodds):
        return "transparent"
    alpha = min(abs(logodds) / SHADE_LIMIT, 1.0) * 0.45
    return f"rgba(37,99,235,{alpha:.2f})" if logodds > 0 else f"rgba(220,38,38,{alpha:.2f})"


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def panes_html(run: Run) -> str:
    """The rows side by side; a token's title is its step and the log-odds in force."""
    columns = []
    for r in run.view.rows:
        spans = "".join(
            f"<span title='step {i}, log-odds {_number(s)}{FORCED_TITLE if f else ''}' "
            f"style='background:{shade(s)}{FORCED_STYLE if f else ''}'>{escape(piece)}</span>"
            for i, (piece, s, f) in enumerate(zip(r.pieces, r.shade, r.forced)))
        diverge = "" if r.row == 0 or r.diverge is None else f", diverges at {r.diverge}"
        head = (f"<div style='font-weight:600;color:{row_colour(r.row)}'>{escape(r.display_label)}</div>"
                f"<div style='font-size:11px;color:#6b7280'>{len(r.pieces)} tokens"
                f"{', ' + escape(r.finish) if r.finish else ''}{diverge}</div>")
        columns.append(f"<div style='flex:1;min-width:220px;border:1px solid #e5e7eb;border-radius:6px;"
                       f"padding:8px'>{head}<div style='white-space:pre-wrap;font-family:ui-monospace,monospace;"
                       f"font-size:12px;margin-top:6px'>{spans}</div></div>")
    choices = " vs ".join(escape(c) for c in run.view.choices[:2])
    legend = (f"<div style='font-size:11px;color:#6b7280;margin-top:4px'>token colour: log-odds {choices} "
              "when it was made (blue: first choice, red: second)</div>") if choices else ""
    return f"<div style='display:flex;gap:8px;align-items:flex-start'>{''.join(columns)}</div>{legend}"


def chart_html(run: Run) -> str:
    """The chart as a div; plotly.js inlined the first time this kernel shows one."""
    global _plotly_sent
    if not any(r.steps for r in run.view.rows):
        return ""
    html = run.figure().to_html(full_html=False, include_plotlyjs=not _plotly_sent,
                                config={"displaylogo": False})
    _plotly_sent = True
    return html


def run_html(run: Run, live: bool = False) -> str:
    """The whole display: a title line, the panes, the chart (the chart only once the run is done when
    ``live``: redrawing it on every refresh would flicker)."""
    status = "running ..." if live else ("stopped (interrupted)" if run.interrupted else "")
    title = (f"<div style='font-size:12px;color:#374151;margin-bottom:6px'><b>{escape(run.prompt[:200])}</b>"
             f"{' &middot; ' + status if status else ''}{' &middot; run ' + escape(run.id) if run.id else ''}</div>")
    warnings = "".join(f"<div style='font-size:11px;color:#b45309'>{escape(w)}</div>" for w in run.warnings)
    return f"<div class='steer-ui-run'>{title}{warnings}{panes_html(run)}{'' if live else chart_html(run)}</div>"


class LiveDisplay:
    """One output cell that a running ``compare(..., live=True)`` refreshes (at most 4 times a second:
    the caller's ``tick_s``). Outside IPython it shows nothing and the run is returned as usual."""

    def __init__(self) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display
        except ImportError:
            self.handle = None
            return
        self._html = HTML
        self.handle = display(HTML("<div class='steer-ui-run'>starting ...</div>"), display_id=True) \
            if get_ipython() is not None else None

    def update(self, run: Run, live: bool = True) -> None:
        if self.handle is not None:
            self.handle.update(self._html(run_html(run, live=live)))
