"""A loaded model for a notebook: pick or compute vectors and compare steered rows with the baseline.

Every setting of ``compare`` is a run knob declared once in ``steer_ui.engine.knobs`` (the CLI's options
and the dashboard's widgets come from the same list), read the same way, with the same messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from steer_ui.api.display import LiveDisplay
from steer_ui.api.result import Run
from steer_ui.api.runner import drive
from steer_ui.engine.knobs import BY_NAME, KNOBS, STEERING, RowSpec
from steer_ui.engine.run_settings import RunSettings, settings_from_form
from steer_ui.errors import UserError
from steer_ui.model.loading import BUNDLED_ALIAS, LoadedModel, load_model
from steer_ui.vectors.contrastive import Pair, parse_pair, read_pairs_jsonl
from steer_ui.vectors.layers import parse_layers
from steer_ui.vectors.presets import preset_vectors, resolve_vector
from steer_ui.vectors.vector import SteeringVector

VectorLike = Union[SteeringVector, str]  # a vector, a preset name or a vector file
# A row: (vector, coef), (vector, coef, layers) or (vector, coef, layers, scope); or 'confidence=-6@12-15'.
RowLike = Union[tuple, str, RowSpec]
KNOB_NAMES = tuple(k.name for k in KNOBS if k.name not in ("prompt", *STEERING))


def load(model: str = BUNDLED_ALIAS, device: str = "auto", dtype: str = "auto", compile: bool = False,
         eager: bool = False) -> Model:
    """Load a model to steer: the bundled ``'smollm2-135m'`` (default, offline), a hub id such as
    ``'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B'``, a local folder or a ``.gguf`` file. ``device``:
    'auto' (a GPU when there is one), 'cpu', 'cuda', 'mps'; ``dtype``: 'auto', 'float32', 'bfloat16',
    'float16'. On a CUDA GPU steps run compiled (CUDA graphs) unless ``eager``; ``compile`` asks for
    compiled steps on CPU too."""
    lm = load_model(model, device=device, dtype=dtype)
    if not eager:
        from steer_ui.engine.fast_path import attach

        fast = attach(lm, compile_on_cpu=compile)  # None where there are no compiled steps
        if fast is not None:
            fast.on_demand = print  # "compiling steps for N rows ..." once per new shape
    return Model(lm)


class Model:
    """A loaded model: ``model.vector(...)``, ``model.compute_vector(...)``, ``model.compare(...)``,
    ``model.sweep(...)``. ``model.lm`` is the underlying ``LoadedModel`` (transformers model and
    tokenizer)."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm

    @property
    def id(self) -> str:
        return self.lm.model_id

    @property
    def n_layers(self) -> int:
        return self.lm.n_layers

    @property
    def hidden_size(self) -> int:
        return self.lm.hidden_size

    @property
    def presets(self) -> list[str]:
        """Names of the vectors shipped for this model (only the bundled model has them)."""
        return preset_vectors(self.lm.profile.key)

    def __repr__(self) -> str:
        return f"<steer_ui.Model {self.lm.describe()}>"

    # --- vectors ---------------------------------------------------------------------------------------
    def vector(self, name_or_path: str) -> SteeringVector:
        """A preset by name (``model.presets``) or a vector file (.gguf, .safetensors, .pt, .npy, .npz)."""
        return resolve_vector(str(name_or_path), self.lm.profile.key)

    def compute_vector(self, pairs: Iterable[Pair | Mapping | tuple] | str | Path, layers: str | Sequence[int] |
                       None = None, method: str = "mean_diff", name: str | None = None) -> SteeringVector:
        """A vector from contrastive pairs: a list of ``{"positive": ..., "negative": ...}`` dicts or
        ``(positive, negative)`` tuples, or a JSONL file of them. ``layers``: '12-15', [12, 13], or None
        for every layer; ``method``: 'mean_diff', 'pca_diff' or 'pca_center'. Its metadata holds each
        layer's separation (``layer_stats``) and the suggested band (``suggested_band``)."""
        from steer_ui.engine import worker

        chosen = parse_layers(layers, self.n_layers) or tuple(range(self.n_layers))
        computed = worker.compute_vector(self.lm, _pairs(pairs), chosen, method, source=name or "notebook")
        if name:
            computed.vector.name = name
        return computed.vector

    # --- runs ------------------------------------------------------------------------------------------
    def compare(self, prompt: str, rows: Sequence[RowLike] = (), *, vector: VectorLike | None = None,
                coefs: float | Sequence[float] = (), layers: str | Sequence[int] | None = None,
                scope: str | None = None, live: bool = False, **knobs: Any) -> Run:
        """The baseline and steered rows for ``prompt``, decoded in one batch, with the probe read along
        the way. Steered rows come from ``rows`` (each ``(vector, coef)``, ``(vector, coef, layers)`` or
        ``(vector, coef, layers, scope)``, or a string ``'confidence=-6@12-15'``) and/or one ``vector``
        at each of ``coefs``; ``layers`` and ``scope`` apply to rows that do not name their own. A vector
        is a ``SteeringVector``, a preset name or a file.

        ``live=True`` in Jupyter shows the rows filling in one output cell (refreshed at most 4 times a
        second). Interrupting the kernel (Ctrl-C) stops the run within a step and returns what it made
        (rows ``cancelled``, ``run.interrupted``). Other settings are the run knobs, by name (listed
        below; ``help(steer_ui.Model.compare)``): a mistake raises ``steer_ui.UserError`` with the CLI's
        message.
        """
        settings = self.settings(prompt, rows, vector=vector, coefs=coefs, layers=layers, scope=scope, **knobs)
        return self.run(settings, live=live)

    def settings(self, prompt: str, rows: Sequence[RowLike] = (), *, vector: VectorLike | None = None,
                 coefs: float | Sequence[float] = (), layers: str | Sequence[int] | None = None,
                 scope: str | None = None, **knobs: Any) -> RunSettings:
        """The checked ``RunSettings`` that ``compare`` runs (same arguments, nothing decoded)."""
        unknown = sorted(set(knobs) - set(KNOB_NAMES))
        if unknown:
            raise UserError(f"unknown setting {unknown[0]!r}; the settings are: {', '.join(KNOB_NAMES)}")
        named: dict[str, SteeringVector] = {}

        def name_of(v: VectorLike) -> str:
            if isinstance(v, SteeringVector):
                key = f"\0vector {len(named)}"
                named[key] = v
                return key
            if isinstance(v, str):
                return v
            raise UserError(f"a vector must be a SteeringVector, a preset name or a file, got {type(v).__name__}")

        form = {**knobs, "prompt": prompt, "vector": name_of(vector) if vector is not None else None,
                "coefs": coefs if vector is not None else (), "layers": layers, "scope": scope,
                "rows": [_row(row, name_of) for row in rows]}
        if vector is None and coefs not in ((), None, []):
            raise UserError("coefs need a vector: compare(prompt, vector=vec, coefs=[4, 8])")

        def resolve(name: str) -> SteeringVector:
            return named[name] if name in named else self.vector(name)

        return settings_from_form(form, resolve)

    def run(self, settings: RunSettings, live: bool = False) -> Run:
        """Decode ``settings`` (from ``model.settings(...)`` or ``RunSettings``) into a ``Run``."""
        if not live:
            events, interrupted = drive(self.lm, settings)
            return Run(events, settings, self.lm, interrupted=interrupted)
        display, shown = LiveDisplay(), Run([], settings, self.lm)
        events, interrupted = drive(self.lm, settings, on_event=shown.view.apply,
                                    on_tick=lambda: display.update(shown))
        run = Run(events, settings, self.lm, interrupted=interrupted)
        display.update(run, live=False)
        return run

    def sweep(self, questions: Any, coefs: Sequence[float] | str, **kwargs: Any):
        """``steer_ui.sweep(model, ...)``: see there."""
        from steer_ui.api.sweeps import sweep

        return sweep(self, questions, coefs, **kwargs)


def open_run(run_id: str, db: str | None = None, model: Model | None = None) -> Run:
    """A logged run (from the CLI, the dashboard or ``run.save()``) as a ``Run``. With the ``model`` it ran
    on, each token gets its own text in ``to_pandas()``; without it a row's text is whole on its first
    token (the tokenizer is not loaded for you)."""
    from steer_ui.log.archive import record_events, replay_settings, run_record
    from steer_ui.log.store import Store

    store = Store(db)
    run = store.get_run(str(run_id).strip())
    _, settings = replay_settings(store, run.id)
    lm = model.lm if model is not None and model.id == run.model_id else None
    events = list(record_events(run_record(store, run), lm.tokenizer if lm is not None else None))
    return Run(events, settings, lm, run_id=run.id)


def _row(row: RowLike, name_of) -> RowSpec | str:
    if isinstance(row, (str, RowSpec)):
        return row
    if not isinstance(row, (tuple, list)) or not 2 <= len(row) <= 4:
        raise UserError(f"a row is (vector, coef), (vector, coef, layers), (vector, coef, layers, scope) or "
                        f"'VECTOR=COEF@LAYERS', got {str(row)[:60]}")
    vector, coef, *rest = row
    layers = BY_NAME["layers"].read(rest[0]) if rest and rest[0] is not None else None
    scope = BY_NAME["scope"].read(rest[1]) if len(rest) > 1 and rest[1] is not None else None
    (value,) = BY_NAME["coefs"].read([coef])
    return RowSpec(name_of(vector), value, layers, scope)


def _pairs(pairs: Iterable[Pair | Mapping | tuple] | str | Path) -> list[Pair]:
    if isinstance(pairs, (str, Path)):
        return read_pairs_jsonl(pairs)
    out = []
    for i, p in enumerate(pairs, 1):
        if isinstance(p, Pair):
            out.append(p)
        elif isinstance(p, tuple) and len(p) == 2:
            out.append(parse_pair({"positive": p[0], "negative": p[1]}, f"pair {i}"))
        else:
            out.append(parse_pair(p, f"pair {i}"))
    return out


def knob_reference() -> str:
    """The run knobs as ``compare`` takes them: name, default, what it does (from the one declaration)."""
    lines = []
    for k in KNOBS:
        if k.name in KNOB_NAMES:
            lines.append(f"        {k.name} = {k.shown(k.default)!r}: {k.help}")
    return "\n".join(lines)


Model.compare.__doc__ = (Model.compare.__doc__ or "") + "\n        Run knobs:\n\n" + knob_reference() + "\n"
