"""Budget rows: interventions in token space beside the vector rows (s1's budget forcing).

``budget:min=N`` ("ignore end of thinking"): until the row has N thinking tokens, whenever the model's
own next token would end its thinking, that token is not taken and the wait text ("Wait") is fed
instead, token by token. ``budget:max=M``: after M thinking tokens the closing tag and a cue are forced
and the row goes on to answer. On a model without a thinking block the end is end-of-sequence and every
generated token counts, so the bundled model shows the mechanics (``max`` needs a thinking block).

This module reads and checks the spec (``Budget``) and holds its token-id form (``RowBudget``, built by
``engine.plan``, and ``Ends``); ``engine.budget_state`` applies it in the decode loop, one position per
step like every other row, so a budget row shares the batch and the cache with the baseline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from steer_ui.errors import UserError

# The wait and cue texts are fed token by token: short phrases, not a second prompt.
MAX_BUDGET_TEXT_CHARS = 64
BUDGET_HELP = "budget:min=N[,wait=TEXT][,times=K] | budget:max=N[,cue=TEXT] | budget:min=N,max=M"
_OPTION = re.compile(r"\s*(min|max|wait|times|cue)\s*=\s*(.*?)\s*")


@dataclass(frozen=True)
class Budget:
    """A row's thinking budget. ``times`` caps how often ``min`` extends (None: as often as needed);
    ``cue`` None takes the model family's cue (``ModelProfile.answer_cue``)."""

    min_tokens: int | None = None
    max_tokens: int | None = None
    wait: str = "Wait"
    times: int | None = None
    cue: str | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``budget:min=200``, ``budget:min=200,wait=Hmm,times=2``, ``budget:max=500,cue=Answer:``,
        ``budget:min=200,max=800``. Texts run to the next comma (no commas inside them)."""
        body = str(text).strip()
        if not body.lower().startswith("budget:"):
            raise UserError(f"cannot read budget {body[:60]!r}: write {BUDGET_HELP}")
        values: dict[str, str] = {}
        for part in body[len("budget:"):].split(","):
            m = _OPTION.fullmatch(part)
            if not m or m.group(1) in values:
                raise UserError(f"cannot read budget {body[:60]!r} at {part.strip()[:30]!r}: write {BUDGET_HELP}")
            values[m.group(1)] = m.group(2)
        budget = cls(min_tokens=_count(values, "min", body), max_tokens=_count(values, "max", body),
                     wait=values.get("wait", "Wait"), times=_count(values, "times", body), cue=values.get("cue"))
        budget.check()
        return budget

    def check(self) -> None:
        if self.min_tokens is None and self.max_tokens is None:
            raise UserError(f"a budget needs min=N, max=N or both: write {BUDGET_HELP}")
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise UserError(f"budget min ({self.min_tokens}) is more than its max ({self.max_tokens})")
        for name, text in (("wait", self.wait), ("cue", self.cue)):
            if text is not None and not (0 < len(text) <= MAX_BUDGET_TEXT_CHARS and text.strip()):
                raise UserError(f"the budget's {name} text must be 1 to {MAX_BUDGET_TEXT_CHARS} characters, "
                                f"got {len(text)}")
        if self.times is not None and self.min_tokens is None:
            raise UserError("budget times=K counts min's extensions: give min=N too")

    def __str__(self) -> str:
        parts = []
        if self.min_tokens is not None:
            parts.append(f"min={self.min_tokens}")
            if self.wait != "Wait":
                parts.append(f"wait={self.wait}")
            if self.times is not None:
                parts.append(f"times={self.times}")
        if self.max_tokens is not None:
            parts.append(f"max={self.max_tokens}")
            if self.cue is not None:
                parts.append(f"cue={self.cue}")
        return "budget:" + ",".join(parts)

    def extends(self, think_tokens: int, extended: int) -> bool:
        """Whether an end the model chose after ``think_tokens`` thinking tokens (``extended`` times
        already) is replaced by the wait text."""
        return (self.min_tokens is not None and think_tokens < self.min_tokens
                and (self.times is None or extended < self.times))


@dataclass(frozen=True)
class Ends:
    """The tokens that end a row's thinking: the closing tag's first token while thinking (and
    end-of-sequence), or end-of-sequence on a model without a thinking block. ``close_ids`` is the whole
    tag, forced by ``max``."""

    thinking: bool  # the model has a thinking block
    close_first: int | None
    close_ids: tuple[int, ...]
    eos: frozenset[int]


@dataclass(frozen=True)
class RowBudget:
    """A row's budget as token ids. ``at_end`` rows (scope at-end:K) refuse ends on the run's budget:min
    schedule (``budget``) and steer the next K tokens instead of feeding ``wait_ids``."""

    budget: Budget
    wait_ids: tuple[int, ...]
    cap_ids: tuple[int, ...]  # the closing tag, then the cue (empty without max)
    at_end: int = 0  # K of at-end:K (0: a budget row)
    cap_text: str = ""  # what cap_ids say, for the intervention event


def _count(values: dict[str, str], name: str, body: str) -> int | None:
    if name not in values:
        return None
    text = values[name]
    if not re.fullmatch(r"\d{1,9}", text) or (name == "times" and int(text) < 1):
        raise UserError(f"budget {name}={text[:20]!r} in {body[:60]!r} must be a whole number"
                        f"{' of 1 or more' if name == 'times' else ''}")
    return int(text)
