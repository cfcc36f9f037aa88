"""A run's settings: the one typed object that the CLI, the dashboard and the session log hand the engine."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

from steer_ui.errors import UserError
from steer_ui.vectors.vector import SteeringVector

ScopeKind = Literal["all", "generated", "kick", "think", "answer"]
SCOPE_HELP = "all | generated | kick:N | think | answer"
CacheKind = Literal["dynamic", "static"]
CACHE_KINDS: tuple[str, ...] = ("dynamic", "static")


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
    def parse(cls, text: str) -> Scope:
        text = text.strip().lower()
        if text in ("all", "generated", "think", "answer"):
            return cls(text)  # type: ignore[arg-type]
        m = re.fullmatch(r"kick:(\d+)", text)
        if m and int(m.group(1)) >= 1:
            return cls("kick", int(m.group(1)))
        raise UserError(f"unknown scope {text!r}: use {SCOPE_HELP} (N >= 1)")

    def __str__(self) -> str:
        return f"kick:{self.every}" if self.kind == "kick" else self.kind

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


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0

    def validate(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top-k must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class ProbeSettings:
    suffix: str | None = None  # None: the model table's suggestion
    choices: tuple[str, ...] = ("Yes", "No")
    every: int = 4  # 0 = off
    min_mass: float = 0.1  # readings whose choices hold less probability than this are unreliable

    def validate(self) -> None:
        if self.every < 0:
            raise UserError(f"probe cadence must be >= 0 (0 = off), got {self.every}")
        if len(self.choices) < 2 or any(not c.strip() for c in self.choices):
            raise UserError(f"the probe needs two or more non-empty choices, got {list(self.choices)}")
        if len({c.strip().lower() for c in self.choices}) != len(self.choices):
            raise UserError(f"probe choices must differ (ignoring case), got {list(self.choices)}")
        if not (0 <= self.min_mass <= 1):
            raise UserError(f"probe min mass must be in [0, 1], got {self.min_mass}")


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs besides the loaded model. Row 0 is the baseline; row i is coefs[i-1]."""

    prompt: str
    system: str | None = None
    raw: bool = False  # True: no chat template, the text is tokenized as-is
    vector: SteeringVector | None = None
    layers: tuple[int, ...] | None = None  # None: every layer the vector has
    coefs: tuple[float, ...] = ()
    scope: Scope = field(default_factory=Scope)
    max_new_tokens: int = 128
    ignore_eos: bool = False  # keep generating past end-of-sequence (benchmarks, fixed-length sweeps)
    cache: CacheKind = "dynamic"  # static: preallocated for the whole run (torch.compile, long runs)
    sampling: Sampling = field(default_factory=Sampling)
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def to_dict(self) -> dict:
        """Plain JSON: everything but the vector itself, which the session log stores by content hash."""
        return {
            "prompt": self.prompt, "system": self.system, "raw": self.raw,
            "vector_name": self.vector.name if self.vector else None,
            "layers": list(self.layers) if self.layers is not None else None, "coefs": list(self.coefs),
            "scope": str(self.scope), "max_new_tokens": self.max_new_tokens, "ignore_eos": self.ignore_eos,
            "cache": self.cache, "sampling": asdict(self.sampling),
            "probe": {**asdict(self.probe), "choices": list(self.probe.choices)},
        }

    @classmethod
    def from_dict(cls, d: dict, vector: SteeringVector | None = None) -> RunSettings:
        try:
            return cls(
                prompt=d["prompt"], system=d.get("system"), raw=bool(d.get("raw", False)), vector=vector,
                layers=tuple(d["layers"]) if d.get("layers") is not None else None,
                coefs=tuple(float(c) for c in d.get("coefs", [])), scope=Scope.parse(d.get("scope", "all")),
                max_new_tokens=int(d.get("max_new_tokens", 128)), ignore_eos=bool(d.get("ignore_eos", False)),
                cache=d.get("cache", "dynamic"), sampling=Sampling(**d.get("sampling", {})),
                probe=ProbeSettings(**{**d.get("probe", {}), "choices": tuple(d.get("probe", {}).get(
                    "choices", ("Yes", "No")))}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"stored settings are incomplete or malformed: {err}") from None

    def validate(self) -> None:
        if not self.prompt.strip():
            raise UserError("the prompt is empty")
        if self.max_new_tokens < 1:
            raise UserError(f"max new tokens must be >= 1, got {self.max_new_tokens}")
        for c in self.coefs:
            if not math.isfinite(c):
                raise UserError(f"coefficient {c} is not a finite number")
        if self.cache not in CACHE_KINDS:
            raise UserError(f"unknown cache {self.cache!r}: use {' or '.join(CACHE_KINDS)}")
        if self.coefs and self.vector is None:
            raise UserError("steered rows (--coef) need a steering vector (--vector FILE)")
        self.sampling.validate()
        self.probe.validate()


def parse_layers(text: str, n_layers: int | None = None) -> tuple[int, ...] | None:
    """'12-15', '3,5,7', '10-12,20' or 'all' (None: every layer of the vector)."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    layers: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if not m:
            raise UserError(f"cannot read layers {text!r}: use '12-15', '3,5,7' or 'all'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise UserError(f"layer range {part.strip()!r} runs backwards")
        layers.update(range(lo, hi + 1))
    if n_layers is not None:
        check_layers(layers, n_layers)
    return tuple(sorted(layers))


def check_layers(layers: set[int] | tuple[int, ...], n_layers: int) -> None:
    bad = sorted(x for x in layers if not 0 <= x < n_layers)
    if bad:
        raise UserError(f"layer {bad[0]} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")


def parse_choices(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(","))
