"""A run's settings: the one typed object that the CLI, the dashboard, sweeps and the session log hand the engine.

Its fields are the knobs of ``steer_ui.engine.knobs`` by name (defaults and ranges come from there), except
that the steering knobs (vector, layers, coefs, scope, rows) arrive as ``rows``: one ``SteeredRow`` per
steered row, each with its own vector, coefficient, layers and scope. Row 0 of a run, the baseline, is
implicit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from steer_ui.engine.budget import Budget
from steer_ui.engine.knobs import BY_NAME, KNOBS, STEERING, RowSpec, default
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.vectors.layers import format_layers
from steer_ui.vectors.vector import SteeringVector

ResolveVector = Callable[[str], SteeringVector]  # a name or path as the user wrote it -> the vector
# Each choice is read at every probe step and logged with every reading: a handful of short answers.
MAX_CHOICES, MAX_CHOICE_CHARS = 8, 64
# A multi-token choice's tokens ride along with every probe step (see engine.probe): a form of at most
# 32 tokens, and at most 256 extra positions per reading for all forms of all choices together.
MAX_CHOICE_TOKENS, MAX_PROBE_NODES = 32, 256


@dataclass(frozen=True)
class SteeredRow:
    """One row besides the baseline: ``coef * vector`` added at ``layers`` (None: every layer the vector has)
    on ``scope``, and/or a thinking ``budget`` (``engine.budget``). A budget row alone has no vector."""

    vector: SteeringVector | None
    coef: float = 0.0
    layers: tuple[int, ...] | None = None
    scope: Scope = field(default_factory=Scope)
    budget: Budget | None = None

    def __post_init__(self) -> None:
        if self.vector is None and self.budget is None:
            raise UserError("a row needs a steering vector, a budget, or both")

    def to_dict(self) -> dict:
        vec = self.vector
        out = {"vector": vec.name if vec else None, "vector_hash": vec.content_hash() if vec else None,
               "coef": self.coef, "layers": list(self.layers) if self.layers is not None else None,
               "scope": str(self.scope)}
        return {**out, "budget": str(self.budget)} if self.budget is not None else out


def steered(vector: SteeringVector | None, coefs: Sequence[float], layers: Sequence[int] | None = None,
            scope: Scope | str = Scope()) -> tuple[SteeredRow, ...]:
    """One row per coefficient, all with ``vector`` on ``layers`` and ``scope`` (the ``--vector --coef`` form)."""
    if coefs and vector is None:
        raise UserError("steered rows need a steering vector (a vector file or a preset name), or no coefficients")
    scope = Scope.parse(scope)
    layers = tuple(layers) if layers is not None else None
    return tuple(SteeredRow(vector, float(c), layers, scope) for c in coefs) if vector is not None else ()


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs besides the loaded model."""

    prompt: str
    system_prompt: str | None = default("system_prompt")
    chat_template: bool = default("chat_template")
    rows: tuple[SteeredRow, ...] = ()
    max_new_tokens: int = default("max_new_tokens")
    ignore_eos: bool = default("ignore_eos")
    eager: bool = default("eager")
    cache: str = default("cache")
    temperature: float = default("temperature")
    top_p: float = default("top_p")
    top_k: int = default("top_k")
    seed: int = default("seed")
    probe_suffix: str | None = default("probe_suffix")
    probe_choices: tuple[str, ...] = default("probe_choices")
    probe_gold: str | None = default("probe_gold")
    probe_every: int = default("probe_every")
    probe_min_mass: float = default("probe_min_mass")

    @property
    def vectors(self) -> list[SteeringVector]:
        """The distinct vectors of the steered rows, in row order."""
        seen: dict[int, SteeringVector] = {}
        for row in self.rows:
            if row.vector is not None:
                seen.setdefault(id(row.vector), row.vector)
        return list(seen.values())

    def validate(self) -> None:
        if not self.prompt.strip():
            raise UserError("the prompt is empty")
        for f in fields(self):
            if f.name in BY_NAME:
                BY_NAME[f.name].check(getattr(self, f.name))
        if self.cache not in BY_NAME["cache"].choices:
            raise UserError(f"unknown cache {self.cache!r}: use {' or '.join(BY_NAME['cache'].choices)}")
        for row in self.rows:
            BY_NAME["coefs"].read([row.coef])  # finite
        choices = self.probe_choices
        if len(choices) > MAX_CHOICES or any(len(c) > MAX_CHOICE_CHARS for c in choices):
            raise UserError(f"the probe reads at most {MAX_CHOICES} choices of at most {MAX_CHOICE_CHARS} "
                            f"characters each, got {len(choices)}")
        if any(not c.strip() for c in choices):
            raise UserError(f"a probe choice is empty: {list(choices)}")
        if len(choices) < 2 and self.probe_gold is None:
            raise UserError(f"the probe needs two or more choices (or a gold answer), got {list(choices)}")
        if len({c.strip().lower() for c in choices}) != len(choices):
            raise UserError(f"probe choices must differ (ignoring case), got {list(choices)}")
        if self.probe_gold is not None and (len(self.probe_gold) > MAX_CHOICE_CHARS or not self.probe_gold.strip()):
            raise UserError(f"the gold answer must be 1 to {MAX_CHOICE_CHARS} characters, got "
                            f"{len(self.probe_gold.strip())}")
        if len(probe_labels(self)) > MAX_CHOICES:
            raise UserError(f"the probe reads at most {MAX_CHOICES} answers: the gold answer and "
                            f"{MAX_CHOICES - 1} choices besides it")

    # --- the session log's JSON --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON, by knob name; each row names its vector by content hash (the log keeps the bytes)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = [r.to_dict() for r in value] if f.name == "rows" else (
                list(value) if isinstance(value, tuple) else value)
        return out

    @classmethod
    def from_dict(cls, d: dict, vectors: Mapping[str, SteeringVector] | None = None) -> RunSettings:
        """Settings as ``to_dict`` wrote them (or as versions before per-row vectors did), with the
        stored vectors by content hash."""
        vectors = vectors or {}
        try:
            if "rows" not in d:
                d = _from_single_vector_dict(d, next(iter(vectors.values()), None))
            rows = []
            for r in d["rows"]:
                vec = r["vector"] if isinstance(r["vector"], SteeringVector) else vectors.get(r.get("vector_hash"))
                if vec is None and r.get("vector_hash") is not None:
                    raise KeyError(f"vector {r.get('vector_hash')}")
                rows.append(SteeredRow(vec, float(r["coef"]),
                                       tuple(r["layers"]) if r.get("layers") is not None else None,
                                       Scope.parse(r.get("scope", "all")),
                                       Budget.parse(r["budget"]) if r.get("budget") else None))
            values = {f.name: d[f.name] for f in fields(cls) if f.name in d and f.name != "rows"}
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            return cls(rows=tuple(rows), **values)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"stored settings are incomplete or malformed: {err}") from None


def _from_single_vector_dict(d: dict, vector: SteeringVector | None) -> dict:
    """Runs logged before rows carried their own vectors: one vector, one layer set, one scope."""
    sampling, probe = d.get("sampling", {}), d.get("probe", {})
    coefs = d.get("coefs", [])
    if coefs and vector is None:
        raise KeyError("the vector its steered rows used")
    return {
        "prompt": d["prompt"], "system_prompt": d.get("system"), "chat_template": not d.get("raw", False),
        "rows": [{"vector": vector, "coef": c, "layers": d.get("layers"), "scope": d.get("scope", "all")}
                 for c in coefs] if vector is not None else [],
        "max_new_tokens": d.get("max_new_tokens", default("max_new_tokens")),
        "ignore_eos": d.get("ignore_eos", False), "cache": d.get("cache", "dynamic"),
        **{k: sampling[k] for k in ("temperature", "top_p", "top_k", "seed") if k in sampling},
        "probe_suffix": probe.get("suffix"), "probe_choices": probe.get("choices", list(default("probe_choices"))),
        **({"probe_every": probe["every"]} if "every" in probe else {}),
        **({"probe_min_mass": probe["min_mass"]} if "min_mass" in probe else {}),
    }


def probe_labels(settings: RunSettings) -> tuple[str, ...]:
    """What the probe reads: the choices, or with a gold answer the gold answer first, then the choices
    other than it (the default Yes/No only when the gold answer is one of them)."""
    choices = tuple(c.strip() for c in settings.probe_choices)
    if settings.probe_gold is None:
        return choices
    gold = settings.probe_gold.strip()
    if choices == default("probe_choices") and gold.lower() not in (c.lower() for c in choices):
        return (gold,)
    return (gold, *(c for c in choices if c.lower() != gold.lower()))


# --- forms: the knobs' values as a front end collects them --------------------------------------
def settings_from_form(form: Mapping[str, Any], resolve_vector: ResolveVector) -> RunSettings:
    """Settings from knob values by name (text or typed; missing ones take their defaults).

    ``vector``/``layers``/``coefs``/``scope`` give one steered row per coefficient; each of ``rows``
    (``VECTOR=COEF[@LAYERS][/SCOPE]``) adds a row with its own vector, on the form's layers and scope
    unless it names its own. ``resolve_vector`` turns a name or path into the vector.
    """
    values = {k.name: k.read(form.get(k.name)) for k in KNOBS}
    scope, layers = values["scope"], values["layers"]
    vector = resolve_vector(values["vector"]) if values["vector"] else None
    rows = list(steered(vector, values["coefs"], layers, scope))
    for spec in values["rows"]:
        vec = resolve_vector(spec.vector) if spec.vector is not None else None
        rows.append(SteeredRow(vec, spec.coef, spec.layers if spec.layers is not None or vec is None else layers,
                               spec.scope or scope, spec.budget))
    settings = RunSettings(rows=tuple(rows), **{k: v for k, v in values.items() if k not in STEERING})
    settings.validate()
    return settings


def form_from_settings(settings: RunSettings, name_of: Callable[[SteeringVector], str] | None = None
                       ) -> dict[str, Any]:
    """The form that gives ``settings`` back, each value in its text form: the leading rows that share the
    first row's vector, layers and scope as vector/layers/coefs/scope, every later row in ``rows`` (so the
    rows keep their order). A later row on every layer of its vector names them, since a row without
    layers takes the form's."""
    name_of = name_of or (lambda v: v.name)
    form: dict[str, Any] = {}
    for f in fields(settings):
        if f.name != "rows" and f.name in BY_NAME:
            form[f.name] = BY_NAME[f.name].shown(getattr(settings, f.name))
    first = settings.rows[0] if settings.rows and settings.rows[0].vector is not None \
        and settings.rows[0].budget is None else None
    n_same = 0
    while first and n_same < len(settings.rows) and (r := settings.rows[n_same]).vector is first.vector and \
            (r.layers, r.scope, r.budget) == (first.layers, first.scope, None):
        n_same += 1
    same = settings.rows[:n_same]
    others = [_row_spec(r, first, name_of) for r in settings.rows[n_same:]]
    form.update(vector=name_of(first.vector) if first else None,
                layers=format_layers(first.layers) if first and first.layers is not None else "",
                coefs=BY_NAME["coefs"].shown([r.coef for r in same]), scope=str(first.scope if first else Scope()),
                rows=BY_NAME["rows"].shown(others))
    return form


def _row_spec(row: SteeredRow, first: SteeredRow | None, name_of: Callable[[SteeringVector], str]) -> RowSpec:
    """A later row as the rows box writes it (relative to the form's first row, whose layers and scope a
    row that names none takes)."""
    if row.vector is None:
        return RowSpec(None, budget=row.budget)
    whole = first is not None and first.layers is not None and row.layers is None
    layers = tuple(row.vector.layers) if whole else row.layers
    scope = row.scope if first is None or row.scope != first.scope else None
    return RowSpec(name_of(row.vector), row.coef, layers, scope, row.budget)
