"""What the dashboard's two browser components receive: pane contents and chart points, windowed.

Live values carry, per row, only the items from ``start`` on and say where that is ("from"): the
browser keeps what it has and appends, so an update's size does not grow with the run. The items
travel as JSON strings: Gradio's streaming diff garbles lists that shrink inside other lists
(gradio 6.31 utils.diff adjusts nested delete indices twice), while a string is replaced whole.
"""

from __future__ import annotations

import json
from collections import deque

from steer_ui.views.chart import figure
from steer_ui.views.run_view import RunView, row_colour


def streams_value(view: RunView, start: list[int] | None = None) -> dict:
    start = start or [0] * len(view.rows)
    return {
        "run": view.key,
        # The colour key: with a gold answer, the tokens lean toward it or away from it.
        "choices": [view.gold, "other answers"] if view.gold is not None else view.choices,
        "rows": [{"label": r.display_label, "colour": row_colour(r.row), "from": k,
                  "t": json.dumps(r.pieces[k:]), "lo": json.dumps(r.shade[k:]), "f": json.dumps(r.forced[k:]),
                  "div": r.diverge,
                  "think": r.think_end, "end": r.finish}
                 for r, k in zip(view.rows, start)],
    }


def chart_value(view: RunView, start: list[int] | None = None, token_start: list[int] | None = None) -> dict:
    """The figure for the live chart: per trace its static properties, "from", and its points from
    there as a JSON string ``[x, y, marker symbols or null]`` (``start``: per row, probe readings;
    ``token_start``: tokens, for the urge-to-stop traces)."""
    fig = figure(view, start, token_start)
    points = []
    for trace in fig["data"]:
        symbols = trace.get("marker", {}).pop("symbol", None)
        points.append(json.dumps([trace.pop("x"), trace.pop("y"), symbols]))
    return {"run": view.key, "data": fig["data"], "layout": fig["layout"], "from": fig["from"], "points": points}


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
        return streams_value(view, start_t), chart_value(view, start_p, start_t)
