"""The log-odds chart of a run as a plotly figure (plain JSON), and as a standalone HTML page."""

from __future__ import annotations

from steer_ui.views.run_view import RowView, RunView, row_colour

MAX_MARKS = 100  # intervention ticks per row: the layout travels whole with every live update


def figure(view: RunView, start: list[int] | None = None, token_start: list[int] | None = None,
           urge: bool | None = None) -> dict:
    """The plotly figure (data + layout) as plain JSON, for the HTML export (and ``chart_value``).

    ``from`` gives, per trace, the index of its first point included (0: the whole figure): ``start``
    per row for the probe traces, ``token_start`` for the urge-to-stop traces (one point per token).
    ``urge``: draw each row's urge to stop below the log-odds (None: when the run has a budget row or an
    ``at-end`` scope, where it shows when budget forcing fires and what a vector does to it).
    """
    start = start or [0] * len(view.rows)
    token_start = token_start or [0] * len(view.rows)
    urge = view.has_budget if urge is None else urge
    yes, no = view.choices[:2] if len(view.choices) >= 2 else ("Yes", "No")
    data: list[dict] = []
    froms: list[int] = []
    for r, k in zip(view.rows, start):
        froms += [k, k, k]
        data += _logodds_traces(r, k)
        data.append({
            "type": "scatter", "mode": "lines", "name": f"{r.display_label} mass", "legendgroup": str(r.row),
            "showlegend": False, "x": r.steps[k:], "y": r.mass[k:], "yaxis": "y2",
            "line": {"color": row_colour(r.row), "width": 1, "dash": "dot"},
            "hovertemplate": f"{r.display_label}<br>token %{{x}}<br>mass %{{y:.2f}}<extra></extra>",
        })
    if urge:
        for r, t in zip(view.rows, token_start):
            froms.append(t)
            data.append(_urge_trace(r, t))
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": r.think_end, "x1": r.think_end, "y0": 0,
               "y1": 1, "line": {"color": row_colour(r.row), "dash": "dash", "width": 1}}
              for r in view.rows if r.think_end is not None]
    # A budget's interventions: short ticks along the top, in the row's colour (the most recent per row).
    shapes += [{"type": "line", "xref": "x", "yref": "paper", "x0": n["step"], "x1": n["step"], "y0": 0.93, "y1": 1,
                "line": {"color": row_colour(r.row), "width": 2}}
               for r in view.rows for n in r.interventions[-MAX_MARKS:]]
    layout = {
        "margin": {"l": 56, "r": 56, "t": 28, "b": 40}, "height": 320,
        "xaxis": {"title": {"text": "generated tokens"}, "zeroline": False},
        "yaxis": {"title": {"text": _axis_title(view, yes, no)}, "zeroline": True,
                  "zerolinecolor": "#9ca3af"},
        "yaxis2": {"title": {"text": "mass on choices (dotted)"}, "overlaying": "y", "side": "right",
                   "range": [0, 1.02], "showgrid": False, "tickmode": "linear", "tick0": 0, "dtick": 0.25},
        "legend": {"orientation": "h", "y": 1.12, "x": 0},
        "shapes": shapes, "hovermode": "closest", "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff",
        # Same revision for a whole run: Plotly.react keeps the user's zoom while points arrive.
        "uirevision": view.key,
    }
    if urge:
        _add_urge_axis(layout)
    return {"run": view.key, "data": data, "layout": layout, "from": froms}


def _logodds_traces(r: RowView, k: int) -> list[dict]:
    """A row's log-odds twice: every reading faint (x markers where too little mass is on the choices),
    and over it, solid, only the readings that can be trusted.

    One solid line for both read as confident where it was not (issue 27: a coef +8 row's line looked
    strong at mass ~0.05, its x markers the only sign). Plotly styles a line per trace, not per
    segment, so the untrusted stretches are the gaps in the solid trace. The faint trace carries every
    reading and is the one counted ("meta": "readings").
    """
    colour = row_colour(r.row)
    symbols = [_symbol(ok, end) for ok, end in zip(r.reliable[k:], r.final[k:])]
    every = {"type": "scatter", "mode": "lines+markers", "name": f"{r.display_label} (all readings)",
             "legendgroup": str(r.row), "showlegend": False, "meta": "readings", "opacity": 0.35,
             "x": r.steps[k:], "y": r.logodds[k:], "line": {"color": colour, "width": 1},
             "marker": {"color": colour, "size": 6, "symbol": symbols},
             "hovertemplate": f"{r.display_label}<br>token %{{x}}<br>log-odds %{{y:.2f}}<extra></extra>"}
    trusted = {"type": "scatter", "mode": "lines+markers", "name": r.display_label, "legendgroup": str(r.row),
               "x": r.steps[k:], "y": [y if ok else None for y, ok in zip(r.logodds[k:], r.reliable[k:])],
               "line": {"color": colour, "width": 2}, "marker": {"color": colour, "size": 6, "symbol": symbols},
               "hoverinfo": "skip"}
    return [trusted, every]


def _urge_trace(r: RowView, t: int) -> dict:
    """log p(end of thinking) where each token was chosen, from the step's own logits (no extra forward)."""
    colour = row_colour(r.row)
    return {"type": "scatter", "mode": "lines", "name": f"{r.display_label} urge to stop",
            "legendgroup": str(r.row), "showlegend": False, "x": list(range(t, len(r.stop_logprobs))),
            "y": r.stop_logprobs[t:], "yaxis": "y3", "line": {"color": colour, "width": 1},
            "hovertemplate": f"{r.display_label}<br>token %{{x}}<br>log p(end) %{{y:.2f}}<extra></extra>"}


def _add_urge_axis(layout: dict) -> None:
    """A strip under the log-odds for log p(end): its own scale (typically -20..0), the same tokens."""
    layout["height"] = 420
    layout["yaxis"]["domain"] = [0.34, 1]
    layout["xaxis"]["anchor"] = "y3"
    layout["yaxis3"] = {"domain": [0, 0.26], "title": {"text": "log p(end)"}, "zeroline": False}


def _symbol(reliable: bool, final: bool) -> str:
    """Circles; a diamond where the row ended; open x where too little mass is on the choices."""
    if final:
        return "diamond" if reliable else "diamond-open"
    return "circle" if reliable else "x-open"


def _axis_title(view: RunView, yes: str, no: str) -> str:
    if view.gold is not None:
        return f"log-odds of the gold answer {view.gold[:24]}"
    return f"log-odds  log p({yes[:16]}) - log p({no[:16]})"


def figure_html(fig: dict) -> str:
    """A standalone HTML page of the chart, plotly.js inlined so it opens offline."""
    import plotly.graph_objects as go
    import plotly.io as pio

    return pio.to_html(go.Figure({"data": fig["data"], "layout": fig["layout"]}), include_plotlyjs=True,
                       full_html=True)
