"""Layer numbers as people write them: '12-15', '3,5,7', 'all'.

Layer L is the output of decoder block L (``hidden_states[L + 1]``), 0-based, as in repeng, EasySteer
and llama.cpp.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from steer_ui.errors import UserError

MAX_LAYER_INDEX = 4095  # larger than any model's layer count: a typo, refused before a range is expanded


def parse_layers(text: str | Sequence[int] | None, n_layers: int | None = None) -> tuple[int, ...] | None:
    """'12-15', '3,5,7', '10-12,20' or 'all' (None: every layer of the vector).

    Ranges are checked before they are expanded: '0-30000000' is refused, not built.
    """
    if text is None or (not isinstance(text, str) and not text):
        return None
    if not isinstance(text, str):
        layers = {int(x) for x in text}
    else:
        text = text.strip().lower()
        if text in ("", "all"):
            return None
        layers = set()
        for part in text.split(","):
            m = re.fullmatch(r"\s*(-?\d{1,12})\s*(?:-\s*(-?\d{1,12})\s*)?", part)
            if not m:
                raise UserError(f"cannot read layers {text[:60]!r}: use '12-15', '3,5,7' or 'all'")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise UserError(f"layer range {part.strip()!r} runs backwards")
            top = MAX_LAYER_INDEX if n_layers is None else n_layers - 1
            for x in (lo, hi):
                if not 0 <= x <= top:
                    raise UserError(_out_of_range(x, n_layers))
            layers.update(range(lo, hi + 1))
    if n_layers is not None:
        check_layers(layers, n_layers)
    return tuple(sorted(layers))


def _out_of_range(layer: int, n_layers: int | None) -> str:
    if n_layers is None:
        return f"layer {layer} is out of range (layers are numbered 0 to {MAX_LAYER_INDEX} at most)"
    return f"layer {layer} is out of range: the model has {n_layers} layers (0-{n_layers - 1})"


def check_layers(layers: set[int] | Sequence[int], n_layers: int) -> None:
    bad = sorted(x for x in layers if not 0 <= x < n_layers)
    if bad:
        raise UserError(_out_of_range(bad[0], n_layers))


def format_layers(layers: Sequence[int] | None) -> str:
    """The shortest text ``parse_layers`` reads back: '12-15', '3,5,7', '10-12,20' ('all' for None)."""
    if layers is None:
        return "all"
    runs: list[list[int]] = []
    for x in sorted(layers):
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
