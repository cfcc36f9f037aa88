"""The run form's widgets, one per knob, made from the knob declarations (label, default, range, help).

A knob's widget follows from its kind: a slider for a bounded number, a number box otherwise, a
checkbox, a dropdown for choices, a text box for text and lists. ``HINTS`` adds what is only about
looks (lines, placeholders). The widget's name is the knob's name, so events pass it to handlers, and
the API names it, by that name.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from steer_ui.app.hosted import KNOB_CAPS, Limits
from steer_ui.engine.knobs import KNOBS, Group, Knob

# Looks only: nothing here changes what a knob means.
HINTS: dict[str, dict[str, Any]] = {
    "prompt": {"lines": 3, "placeholder": "Ask a yes/no question ..."},
    "system_prompt": {"lines": 2, "placeholder": "(the chat template's own)"},
    "layers": {"placeholder": "15-18, or 3,5,7, or all", "scale": 1},
    "coefs": {"placeholder": "4, 8, -6", "info": "one steered pane each", "scale": 2},
    "rows": {"lines": 2, "placeholder": "confidence=-6@16-19 (one per line; 'file' = the uploaded file)"},
    "probe_suffix": {"placeholder": "(the model's: ' So the final answer is')"},
    "probe_gold": {"placeholder": "391, \\frac{3}{4}, Paris (optional: the chart then plots this answer's log-odds)"},
}


def knob_widget(knob: Knob, limits: Limits | None = None, value: Any = None) -> gr.components.Component:
    """The widget for ``knob``; ``value`` overrides its default (e.g. the loaded model's probe suffix)."""
    hints = dict(HINTS.get(knob.name, {}))
    info = hints.pop("info", knob.help if knob.kind in ("bool", "choice") or knob.name == "rows" else None)
    initial = _initial(knob, value)
    common = {"label": knob.label, "info": info, **hints}
    if knob.kind in ("int", "float"):
        top = _top(knob, limits)
        if knob.lo is not None and top is not None:
            lo = knob.step if knob.lo_open else knob.lo
            return gr.Slider(lo, top, value=initial, step=knob.step, **common)
        return gr.Number(value=initial, precision=0 if knob.kind == "int" else None, **common)
    if knob.kind == "bool":
        return gr.Checkbox(value=initial, **common)
    if knob.kind == "choice":
        return gr.Dropdown(list(knob.choices), value=initial, allow_custom_value=knob.name == "scope", **common)
    return gr.Textbox(value=initial, **common)


def _initial(knob: Knob, value: Any) -> Any:
    if knob.required and value is None:
        return None  # no default: API clients must give it
    value = knob.default if value is None else value
    return "" if value is None else knob.shown(value)


def _top(knob: Knob, limits: Limits | None) -> float | None:
    """The slider's right end: the knob's bound, else its usual range, lowered to a hosted cap."""
    top = knob.hi if knob.hi is not None else knob.ui_max
    if limits is not None and knob.hosted_cap and knob.hosted_cap[0] in KNOB_CAPS:
        top = min(top, limits.cap(knob.hosted_cap[0])) if top is not None else limits.cap(knob.hosted_cap[0])
    return top


def knobs_in(group: Group, skip: tuple[str, ...] = ()) -> list[Knob]:
    return [k for k in KNOBS if k.group == group and k.name not in skip]
