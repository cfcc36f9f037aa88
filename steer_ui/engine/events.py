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
    budget: str | None = None  # the row's thinking budget ('budget:min=200'), None without one


def _row_info_dict(info: RowInfo) -> dict:
    """A row as the start event's JSON has it: ``budget`` only on rows with one (the contract before budgets)."""
    d = asdict(info)
    if d["budget"] is None:
        del d["budget"]
    return d


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
            "rows": [_row_info_dict(r) for r in self.rows],
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
    forced: bool = False  # fed by a budget (its wait text, or the closing tag and cue), not chosen by the model
    # log p(ending thinking) where this token was chosen: the closing tag's first token while the row thinks,
    # end-of-sequence on a model without a thinking block; None after the thinking block closed.
    stop_logprob: float | None = None
    event: Literal["token"] = "token"

    def to_dict(self) -> dict:
        d = {"event": "token", "row": self.row, "step": self.step, "token_id": self.token_id, "text": self.text}
        if self.forced:
            d["forced"] = True
        if self.stop_logprob is not None:
            d["stop_logprob"] = self.stop_logprob
        return d


InterventionKind = Literal["extend", "cap", "trigger"]


@dataclass(frozen=True)
class InterveneEvent:
    """A budget acted at ``step`` (the index of the first token it affects): ``extend`` fed the wait text
    where the model chose to end, ``cap`` forced the closing tag and cue, ``trigger`` (an at-end row) refused
    the end and steers from here."""

    row: int
    step: int
    kind: InterventionKind
    text: str
    event: Literal["intervene"] = "intervene"

    def to_dict(self) -> dict:
        return {"event": "intervene", "row": self.row, "step": self.step, "kind": self.kind, "text": self.text}


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
class Dynamics:
    """How a row's answer moved, from its probe readings in order (``engine.dynamics``)."""

    flips: int  # consecutive readings whose leading choice differs
    settled_at: int  # the step of the first reading after the last flip
    after_settle: int  # generated tokens after settled_at
    readings: int


@dataclass(frozen=True)
class RowResult:
    row: int
    label: str
    coef: float
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    think_tokens: int | None = None  # tokens before the closing tag (all of them on a model without one)
    interventions: int = 0
    dynamics: Dynamics | None = None  # None without a probe


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


Event = Union[StartEvent, TokenEvent, InterveneEvent, ProbeEvent, DoneEvent]
