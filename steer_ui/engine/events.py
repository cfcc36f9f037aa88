"""The typed events the engine yields; every consumer (CLI, dashboard, session log) reads these.

``to_dict`` is the CLI's ``--jsonl`` contract: keep field names stable, scripts depend on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Union

FinishReason = Literal["eos", "length", "cancelled"]


@dataclass(frozen=True)
class RowInfo:
    row: int
    label: str
    coef: float
    vector: str | None = None  # the steering vector's name; None for the baseline
    layers: list[int] = field(default_factory=list)  # where this row is steered
    scope: str | None = None  # None for the baseline


@dataclass(frozen=True)
class ChoiceInfo:
    label: str
    token_ids: list[int]  # the one-token forms' ids
    variants: list[list[int]] = field(default_factory=list)  # every form read, as token ids (one-token ones too)


@dataclass(frozen=True)
class StartEvent:
    model: str
    prompt_ids: list[int]
    prompt_text: str
    rows: list[RowInfo]
    layers: list[int]
    scope: str
    probe_suffix_ids: list[int]
    probe_choices: list[ChoiceInfo]
    probe_every: int
    probe_gold: str | None = None  # the gold answer, read as the first choice
    warnings: list[str] = field(default_factory=list)
    event: Literal["start"] = "start"

    def to_dict(self) -> dict:
        return {
            "event": "start",
            "model": self.model,
            "prompt_ids": self.prompt_ids,
            "prompt_text": self.prompt_text,
            "rows": [asdict(r) for r in self.rows],
            "layers": self.layers,
            "scope": self.scope,
            "probe": {
                "suffix_ids": self.probe_suffix_ids,
                "choices": [asdict(c) for c in self.probe_choices],
                "every": self.probe_every,
                **({"gold": self.probe_gold} if self.probe_gold is not None else {}),
            },
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class TokenEvent:
    row: int
    step: int  # 0-based index of this generated token in its row
    token_id: int
    text: str
    event: Literal["token"] = "token"

    def to_dict(self) -> dict:
        return {"event": "token", "row": self.row, "step": self.step, "token_id": self.token_id, "text": self.text}


@dataclass(frozen=True)
class ProbeEvent:
    row: int
    step: int  # how many generated tokens of this row the probe saw (0 = the prompt alone)
    logodds: float  # logp(first choice) - logp(second); with a gold answer, logp(gold) - log(1 - p(gold))
    mass: float  # total probability on every variant of every choice
    logprobs: dict[str, float]
    reliable: bool
    think_closed: bool = False  # the closing think tag was inserted before the suffix
    final: bool = False  # read at the row's last token (it ended: end-of-sequence, length limit or Stop)
    event: Literal["probe"] = "probe"

    def to_dict(self) -> dict:
        d = {"event": "probe", "row": self.row, "step": self.step, "logodds": self.logodds, "mass": self.mass,
             "logprobs": self.logprobs, "reliable": self.reliable}
        if self.think_closed:
            d["think_closed"] = True
        if self.final:
            d["final"] = True
        return d


@dataclass(frozen=True)
class RowResult:
    row: int
    label: str
    coef: float
    token_ids: list[int]
    text: str
    finish_reason: FinishReason


@dataclass(frozen=True)
class Timing:
    load_s: float
    prefill_s: float
    decode_s: float
    steps: int
    compiled: bool = False  # the steps ran on the fast path (compiled; CUDA graphs on a GPU)
    eager_because: str = ""  # why a run with compiled steps attached decoded eagerly (a compile failed, ...)

    @property
    def path(self) -> str:
        """Which steps ran, for the timing line: "compiled steps", "eager: <why>", or nothing (eager as usual)."""
        return "compiled steps" if self.compiled else f"eager: {self.eager_because}" if self.eager_because else ""


@dataclass(frozen=True)
class DoneEvent:
    rows: list[RowResult]
    timing: Timing
    event: Literal["done"] = "done"

    def to_dict(self) -> dict:
        return {"event": "done", "rows": [asdict(r) for r in self.rows], "timing": asdict(self.timing)}


Event = Union[StartEvent, TokenEvent, ProbeEvent, DoneEvent]
