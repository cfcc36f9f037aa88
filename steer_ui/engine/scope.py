"""Where a steered row's vector is added: which prompt and generated positions, by phase."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from steer_ui.errors import UserError

ScopeKind = Literal["all", "generated", "kick", "think", "answer"]
SCOPE_HELP = "all | generated | kick:N | think | answer"
SCOPE_CHOICES = ("all", "generated", "kick:8", "think", "answer")  # kick:N with a typical N, for menus


@dataclass(frozen=True)
class Scope:
    """Which positions get the vector.

    all: prompt and generated tokens (repeng). generated: decode steps only. kick:N: the prompt's last
    position, then every N-th generated token. think / answer: generated tokens inside / after the
    thinking block.
    """

    kind: ScopeKind = "all"
    every: int = 0  # N for kick:N

    @classmethod
    def parse(cls, text: str | Scope) -> Scope:
        if isinstance(text, Scope):
            return text
        text = str(text).strip().lower()
        if text in ("all", "generated", "think", "answer"):
            return cls(text)  # type: ignore[arg-type]
        m = re.fullmatch(r"kick:(\d{1,9})", text)
        if m and int(m.group(1)) >= 1:
            return cls("kick", int(m.group(1)))
        raise UserError(f"unknown scope {text[:40]!r}: use {SCOPE_HELP} (N >= 1)")

    def __str__(self) -> str:
        return f"kick:{self.every}" if self.kind == "kick" else self.kind

    @property
    def needs_thinking(self) -> bool:
        return self.kind in ("think", "answer")

    def steers_prompt_position(self, pos: int, prompt_len: int) -> bool:
        return self.kind == "all" or (self.kind == "kick" and pos == prompt_len - 1)

    def steers_generated(self, index: int, thinking: bool) -> bool:
        """Whether generated token ``index`` (0-based) gets the vector when it is fed back in."""
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
