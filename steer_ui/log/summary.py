"""A run as lists show it (History, ``steer-ui runs``): its rows' vectors, layers, budgets and token counts,
without the tokens; ``store.list_runs`` makes them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from steer_ui.vectors.layers import format_layers


@dataclass(frozen=True)
class RowSummary:
    row: int
    coef: float
    vector: str | None  # the vector's name; None for the baseline and a row with only a budget
    layers: list[int] | None
    tokens: int
    budget: str | None = None  # 'budget:min=200'


@dataclass(frozen=True)
class RunSummary:
    """A run as lists show it (History, ``steer-ui runs``): its rows without their tokens."""

    id: str
    session_id: str
    created: datetime
    status: str
    model_id: str
    prompt: str
    rows: list[RowSummary]

    @property
    def coefs(self) -> list[float]:
        """The vector rows' coefficients (a row with only a budget has none)."""
        return [r.coef for r in self.rows if r.vector is not None]

    @property
    def tokens(self) -> int:
        """The most tokens any row made (rows run in lockstep: what the dashboard calls tokens per row)."""
        return max((r.tokens for r in self.rows), default=0)

    def tokens_text(self) -> str:
        """Tokens per row: '96' when every row made as many, else each row's, baseline first ('96/80/96')."""
        counts = [r.tokens for r in self.rows]
        return str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))

    def vectors_text(self) -> str:
        """The steered rows' vectors and budgets, each once, in row order ('-' for a baseline-only run)."""
        return ", ".join(dict.fromkeys(x for r in self.rows if r.row > 0 for x in (r.vector, r.budget) if x)) or "-"

    def layers_text(self) -> str:
        """The vector rows' layers, each set once ('15-18', or '15-18; 16-19' when rows differ)."""
        return "; ".join(dict.fromkeys(format_layers(r.layers) for r in self.rows if r.vector is not None)) or "-"
