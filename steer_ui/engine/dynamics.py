"""Answer dynamics: how often a row's probed answer changed its mind, and when it settled.

From the row's readings in order (the final one included): the leading choice of a reading is its
likeliest choice (ties go to the earlier choice; for two choices, positive log-odds means the first);
``flips`` counts consecutive readings whose leading choice differs; ``settled_at`` is the step of the
first reading after the last flip (the first reading's step when nothing flips); ``after_settle`` is
how many generated tokens the row went on after ``settled_at``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from steer_ui.engine.events import Dynamics


def leading_choice(logprobs: Mapping[str, float]) -> str:
    """The likeliest choice; the first in order on a tie."""
    return max(logprobs, key=lambda label: (logprobs[label], -list(logprobs).index(label)))


def dynamics(readings: Sequence[tuple[int, Mapping[str, float]]], generated: int) -> Dynamics | None:
    """``readings``: (step, per-choice log-probs) in order; ``generated``: the row's token count."""
    if not readings:
        return None
    leaders = [leading_choice(logprobs) for _, logprobs in readings]
    flips = [i for i in range(1, len(leaders)) if leaders[i] != leaders[i - 1]]
    settled_at = readings[flips[-1]][0] if flips else readings[0][0]
    return Dynamics(flips=len(flips), settled_at=settled_at, after_settle=generated - settled_at,
                    readings=len(readings))
