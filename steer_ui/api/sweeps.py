"""Sweeps from a notebook: every question at every coefficient, as ``python -m steer_ui sweep`` runs them,
into a folder that a later call (or the CLI) resumes."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from steer_ui import csv_cells
from steer_ui.engine.knobs import BY_NAME
from steer_ui.errors import UserError
from steer_ui.experiments.arms import arms_from_specs
from steer_ui.experiments.questions import Question, load_questions, question_from, unique_ids
from steer_ui.experiments.sweep import SweepConfig, run_sweep
from steer_ui.experiments.sweep_report import CoefSummary

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from steer_ui.engine.run_settings import RunSettings
    from steer_ui.model.loading import LoadedModel
    from steer_ui.vectors.vector import SteeringVector


class Model(Protocol):
    """What a sweep uses of ``api.model.Model`` (a protocol: ``Model.sweep`` calls into this module)."""

    lm: LoadedModel
    id: str
    n_layers: int
    hidden_size: int

    def settings(self, prompt: str, **knobs: Any) -> RunSettings: ...

    def vector(self, spec: SteeringVector | str) -> SteeringVector: ...


@dataclass
class SweepRun:
    """A sweep's results: ``frame`` (a line per question x arm x sample: extracted answer, correct,
    chain-of-thought tokens, final log-odds, the logged run's id, the text), ``summary`` (a line per arm:
    accuracy with its 95% interval, tokens, forced accuracy, ``vs_baseline``'s paired statistics),
    ``figure()``, ``pareto()``, and ``out``, the folder holding results.csv, summary.csv, the figures
    (resume by sweeping into it again). ``notes`` says what was skipped or stopped."""

    out: Path
    frame: pd.DataFrame
    summary: pd.DataFrame
    notes: list[str]
    _summary: list[CoefSummary]
    _title: str
    _intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)

    def figure(self) -> go.Figure:
        """Accuracy (with its interval) and chain-of-thought length against the coefficient."""
        import plotly.graph_objects as go

        from steer_ui.experiments.sweep_report import figure

        return go.Figure(figure(self._summary, self._title))

    def pareto(self) -> go.Figure:
        """Accuracy against mean chain-of-thought tokens, a point per arm with both intervals."""
        import plotly.graph_objects as go

        from steer_ui.experiments.sweep_report import pareto_figure

        return go.Figure(pareto_figure(self._summary, self._intervals, self._title))

    def _repr_html_(self) -> str:
        notes = "".join(f"<p>{n}</p>" for n in self.notes)
        return f"{self.summary.to_html(index=False)}{notes}<p>results in <code>{self.out}</code></p>"


def sweep(model: Model, questions: str | Sequence[Mapping | Question], coefs: Sequence[float] | str = (),
          vector: SteeringVector | str | None = None, layers: str | Sequence[int] | None = None,
          scope: str | None = None,
          out: str | Path | None = None, samples: int = 1, log: bool = False, db: str | None = None,
          arms: Sequence[str] = (), ray: bool | str | None = None, workers: int | None = None,
          **knobs: Any) -> SweepRun:
    """Run every question at every coefficient of ``vector`` (0 is the baseline), and on every arm of
    ``arms`` ('baseline', 'budget:min=200', 'confidence=4@10-19', ...), and score the answers; each arm's
    ``summary`` row carries its paired statistics against the baseline arm (``vs_baseline``).

    ``questions``: a generated set ('yesno:20', 'wordproblems:10'), a JSONL file of {"question", "answer"},
    or a list of such dicts. ``out``: the results folder (a new temporary one by default); sweeping the
    same settings into it again runs only what is missing. ``log=True`` writes every run to the session
    log (``db``: another one). The other settings are ``compare``'s run knobs (``max_new_tokens``,
    ``probe_every``, ...). Ctrl-C stops within a step and returns what is done.

    ``ray=True`` runs the questions on Ray workers that each load ``model``'s name (a local Ray instance,
    this notebook's own ``ray.init``, or the cluster in ``RAY_ADDRESS``); ``ray='auto'`` or an address names
    a cluster; ``workers``: how many (default one per GPU, or 1 on CPUs). The results are the same.
    """
    qs = _questions(questions)
    template = model.settings("(each question)", **knobs)
    coef_values = BY_NAME["coefs"].read(coefs)
    vec = model.vector(vector) if isinstance(vector, str) else vector
    layer_values = BY_NAME["layers"].read(layers) if layers is not None else None
    scope_value = BY_NAME["scope"].read(scope)
    extra = arms_from_specs(list(arms), model.vector, layer_values, scope_value)
    cfg = SweepConfig(questions=qs, coefs=coef_values, template=replace(template, rows=()), vector=vec,
                      layers=layer_values, scope=scope_value, samples=samples, extra_arms=tuple(extra),
                      label={"title": f"{model.id} | {vec.name if vec is not None else 'no vector'}"})
    cfg.validate()
    if vec is not None:
        vec.check_against(model.n_layers, model.hidden_size, layer_values)
    folder = Path(out).expanduser() if out is not None else Path(tempfile.mkdtemp(prefix="steer-ui-sweep-"))
    store = None
    if log:
        from steer_ui.log.store import Store

        store = Store(db)
    if ray is None or ray is False:
        if workers is not None:
            raise UserError("workers= is for ray=: workers on a Ray cluster")
        result = _interruptible(lambda cancel: run_sweep(model.lm, cfg, folder, store, cancel=cancel))
    else:
        from steer_ui.experiments.cluster import Cluster, run_sweep_on_ray

        cluster = Cluster(ray if isinstance(ray, str) and ray else None, workers)
        result = _interruptible(lambda cancel: run_sweep_on_ray(cfg, folder, model.id, cluster, store=store,
                                                                cancel=cancel))
    import pandas as pd

    frame = pd.read_csv(result.out / "results.csv") if (result.out / "results.csv").exists() else pd.DataFrame()
    for column in frame.select_dtypes(include="object"):  # texts as they were, without csv_cells' quote
        frame[column] = frame[column].map(lambda v: csv_cells.read(v) if isinstance(v, str) else v)
    summary = pd.DataFrame([{**vars(s), "vs_baseline": s.vs_baseline.to_dict() if s.vs_baseline else None}
                            for s in result.summary])
    return SweepRun(result.out, frame, summary, list(result.notes), list(result.summary), cfg.label["title"],
                    result.intervals)


def _questions(questions: str | Sequence[Mapping | Question]) -> list[Question]:
    if isinstance(questions, (str, Path)):
        return load_questions(str(questions))
    out = [q if isinstance(q, Question) else question_from(dict(q) if isinstance(q, Mapping) else q,
                                                            f"question {i}", str(i))
           for i, q in enumerate(questions, 1)]
    if not out:
        raise UserError("no questions given")
    return unique_ids(out, "questions")


def _interruptible(work):
    """``work(cancel)`` in a thread; Ctrl-C sets ``cancel`` and waits for it to stop within a step."""
    cancel, box = threading.Event(), {}

    def target() -> None:
        try:
            box["result"] = work(cancel)
        except BaseException as err:  # noqa: BLE001 - raised again in the caller
            box["error"] = err

    thread = threading.Thread(target=target, name="steer-ui-sweep", daemon=True)
    thread.start()
    while thread.is_alive():
        try:
            thread.join(0.2)
        except KeyboardInterrupt:
            if cancel.is_set():
                raise
            cancel.set()
    if "error" in box:
        raise box["error"]
    return box["result"]
