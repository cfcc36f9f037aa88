"""Applying a row's budget one step at a time (the spec and its token ids: ``engine.budget``).

A budget row still takes one position per step. Where it intervenes it feeds a forced token instead of
the model's choice (the wait text after an end it refused, or the closing tag and cue at its cap) and
queues the rest of that text for the next steps; every other token is the model's own choice given
everything before it, insertions included. An at-end row feeds no text: where it refuses an end it takes
the model's next choice besides the end, and ``Scope.steers_generated`` steers the K tokens from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from steer_ui.engine.budget import Ends, RowBudget
from steer_ui.engine.events import InterventionKind


@dataclass
class BudgetState:
    """One row's budget and what it has done so far."""

    spec: RowBudget
    pending: list[int] = field(default_factory=list)  # forced tokens still to feed, in order
    extended: int = 0  # ends refused so far
    capped: bool = False
    triggered: tuple[int, ...] = ()  # an at-end row: indices of the tokens taken instead of an end
    interventions: int = 0


def choose(state: BudgetState, token: int, think_tokens: int, index: int, thinking: bool, ends: Ends,
           ignore_eos: bool, again: Callable[[frozenset[int]], int]
           ) -> tuple[int, bool, tuple[InterventionKind, str] | None]:
    """The row's token at generated ``index`` given the model's choice ``token``: (token, forced, intervention).
    ``again(banned)`` is the model's choice with ``banned`` refused (the same sampling noise)."""
    if state.pending:
        return state.pending.pop(0), True, None
    spec = state.spec
    budget = spec.budget
    if spec.cap_ids and thinking and not state.capped and think_tokens >= budget.max_tokens:
        state.capped, state.pending = True, list(spec.cap_ids[1:])
        return _intervened(state, spec.cap_ids[0], True, "cap", spec.cap_text)
    end_ids = _end_ids(ends, ignore_eos)
    if not (thinking and token in end_ids and budget.extends(think_tokens, state.extended)):
        return token, False, None
    state.extended += 1
    if spec.at_end:
        state.triggered += (index,)
        return _intervened(state, again(end_ids), False, "trigger", f"+{spec.at_end} steered")
    state.pending = list(spec.wait_ids[1:])
    return _intervened(state, spec.wait_ids[0], True, "extend", budget.wait)


def _intervened(state: BudgetState, token: int, forced: bool, kind: InterventionKind, text: str):
    state.interventions += 1
    return token, forced, (kind, text)


def _end_ids(ends: Ends, ignore_eos: bool) -> frozenset[int]:
    """What the model chooses when it ends: end-of-sequence (unless ignored) and the closing tag's first token."""
    ids = set() if ignore_eos else set(ends.eos)
    if ends.thinking and ends.close_first is not None:
        ids.add(ends.close_first)
    return frozenset(ids)
