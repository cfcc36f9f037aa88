"""The log-odds chart of a run as a plotly figure (plain JSON), and as a standalone HTML page."""

from __future__ import annotations

from steer_ui.views.run_view import RunView, row_colour

MAX_MARKS = 100  # intervention ticks per row: the layout travels whole with every live update


def figure(view: RunView, start: list[int] | None = None) -> dict:
    """The plotly figure (data + layout) as plain JSON, for the HTML export (and ``chart_value``).

    ``from`` gives, per trace, the index of its first point included (0: the whole figure).
    """
    start = start or [0] * len(view.rows)
    yes, no = view.choices[:2] if len(view.choices) >= 2 else ("Yes", "No")
    data: list[dict] = []
    for r, k in zip(view.rows, start):
        colour = row_colour(r.row)
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": r.display_label, "legendgroup": str(r.row),
            "x": r.steps[k:], "y": r.logodds[k:], "line": {"color": colour, "width": 2},
            "marker": {"color": colour, "size": 6,
                       "symbol": [_symbol(ok, end) for ok, end in zip(r.reliable[k:], r.final[k:])]},
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
    return {"run": view.key, "data": data, "layout": layout, "from": [k for k in start for _ in (0, 1)]}


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
