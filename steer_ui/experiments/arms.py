"""A sweep's arms: what each question runs beside the baseline, as rows of one batch.

An arm is ``baseline`` or any row spec (``engine.knobs.parse_row``): a vector at a coefficient, a
thinking budget (``budget:min=200``), or both. ``--coefs`` is shorthand for the arms of one vector at
each coefficient (0 is the baseline). Every question runs all its pending arms in one batch, so they
share the prompt's prefill and a greedy arm's text does not depend on which arms ran beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from steer_ui.engine.knobs import parse_row
from steer_ui.engine.run_settings import SteeredRow, steered
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.vectors.vector import SteeringVector

BASELINE = "baseline"


@dataclass(frozen=True)
class Arm:
    """``row`` None is the baseline (the batch's row 0). ``coef``: a vector arm's coefficient (0 for the
    baseline, None for a budget arm), kept in results.csv's ``coef`` column."""

    name: str
    row: SteeredRow | None
    coef: float | None


def coef_arm_name(coef: float) -> str:
    """The name of ``--coefs`` arm ``coef`` (also read back from results written before arms existed)."""
    return BASELINE if coef == 0 else f"coef {coef:+g}"


def arms_from_coefs(coefs: Sequence[float], vector: SteeringVector | None, layers, scope: Scope) -> list[Arm]:
    arms = []
    for c in coefs:
        row = steered(vector, (c,), layers, scope)[0] if c != 0 else None
        arms.append(Arm(coef_arm_name(c), row, float(c)))
    return arms


def arms_from_specs(specs: Sequence[str], resolve: Callable[[str], SteeringVector], layers,
                    scope: Scope) -> list[Arm]:
    """``--arm`` texts: ``baseline`` or a row spec; a vector arm without its own layers or scope takes the
    sweep's (``--layers``, ``--scope``)."""
    arms = []
    for text in specs:
        if str(text).strip().lower() == BASELINE:
            arms.append(Arm(BASELINE, None, 0.0))
            continue
        spec = parse_row(text)
        vector = resolve(spec.vector) if spec.vector is not None else None
        row = SteeredRow(vector, spec.coef, spec.layers if spec.layers is not None or vector is None else layers,
                         spec.scope or scope, spec.budget)
        arms.append(Arm(str(spec), row, spec.coef if vector is not None else None))
    return arms


def check_arms(arms: Sequence[Arm]) -> None:
    if not arms:
        raise UserError("give at least one arm: --arm baseline --arm budget:min=200, or --coefs '-4,0,4'")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"arms repeat: {', '.join(repeated)}")


def arm_of(row: dict) -> str:
    """A results row's arm (rows written before arms existed have only their coefficient)."""
    return row.get("arm") or coef_arm_name(float(row["coef"]))
