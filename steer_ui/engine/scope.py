"""Where a steered row's vector is added: which prompt and generated positions, by phase."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from steer_ui.errors import UserError

ScopeKind = Literal["all", "generated", "kick", "think", "answer", "at-end"]
SCOPE_HELP = "all | generated | kick:N | think | answer | at-end:K"
SCOPE_CHOICES = ("all", "generated", "kick:8", "think", "answer", "at-end:32")  # N, K typical, for menus


@dataclass(frozen=True)
class Scope:
    """Which positions get the vector.

    all: prompt and generated tokens (repeng). generated: decode steps only. kick:N: the prompt's last
    position, then every N-th generated token. think / answer: generated tokens inside / after the
    thinking block. at-end:K: the timing-matched rival of a ``budget:min`` row (``engine.budget``): wherever
    the run's budget:min row would insert its wait text, this row instead refuses the end (the model's next
    choice besides it) and adds its vector to the next K generated tokens.
    """

    kind: ScopeKind = "all"
    every: int = 0  # N for kick:N, K for at-end:K

    @classmethod
    def parse(cls, text: str | Scope) -> Scope:
        if isinstance(text, Scope):
            return text
        text = str(text).strip().lower()
        if text in ("all", "generated", "think", "answer"):
            return cls(text)  # type: ignore[arg-type]
        m = re.fullmatch(r"(kick|at-end):(\d{1,9})", text)
        if m and int(m.group(2)) >= 1:
            return cls(m.group(1), int(m.group(2)))  # type: ignore[arg-type]
        raise UserError(f"unknown scope {text[:40]!r}: use {SCOPE_HELP} (N, K >= 1)")

    def __str__(self) -> str:
        return f"{self.kind}:{self.every}" if self.kind in ("kick", "at-end") else self.kind

    @property
    def needs_thinking(self) -> bool:
        return self.kind in ("think", "answer")

    def steers_prompt_position(self, pos: int, prompt_len: int) -> bool:
        return self.kind == "all" or (self.kind == "kick" and pos == prompt_len - 1)

    def steers_generated(self, index: int, thinking: bool, triggered: tuple[int, ...] = ()) -> bool:
        """Whether generated token ``index`` (0-based) gets the vector when it is fed back in;
        ``triggered``: where an at-end row refused an end (the indices of the tokens chosen instead)."""
        if self.kind == "at-end":
            return any(t <= index < t + self.every for t in triggered)
        if self.kind in ("all", "generated"):
            return True
        if self.kind == "kick":
            # The prompt's last position was kick 0; kick k lands on the last position after k*N tokens.
            return (index + 1) % self.every == 0
        return thinking if self.kind == "think" else not thinking

    @property
    def steers_probe_suffix(self) -> bool:
        """The probe's suffix sits after the text, as if generated in the answer phase."""
        return self.kind in ("all", "generated", "answer")
