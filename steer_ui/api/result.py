"""A finished (or stopped) run as a notebook holds it: rows, probe series, a tidy frame, the chart, the log.

A ``Run`` is folded from the engine's events by the same ``RunView`` the dashboard uses, so its texts,
first divergences and probe series are the ones the dashboard shows for the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from steer_ui.engine.events import Event
from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError
from steer_ui.views.run_view import RunView

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from steer_ui.model.loading import LoadedModel

FRAME_COLUMNS = ("row", "label", "coef", "step", "token_id", "token", "logodds", "mass", "reliable", "forced",
                 "stop_logprob", "intervention", "flips", "settled_at")


@dataclass(frozen=True)
class Row:
    """One row of a run: the baseline (row 0) or a steered row."""

    row: int
    label: str  # 'baseline', 'coef +4', or the row's own label
    coef: float
    text: str
    token_ids: list[int]
    finish_reason: str | None  # 'eos', 'length' or 'cancelled'
    first_divergence: int | None  # the first step whose token differs from the baseline's (None: never)
    probe_steps: list[int]  # tokens seen by each probe reading
    logodds: list[float | None]  # log p(first choice) - log p(second choice) at each reading
    mass: list[float | None]  # probability on all the choices together at each reading
    reliable: list[bool]  # the reading's mass is at least probe_min_mass
    budget: str | None = None  # the row's thinking budget ('budget:min=200'), None without one
    forced: list[int] = field(default_factory=list)  # steps of the tokens a budget fed (not the model's choice)
    interventions: list[dict] = field(default_factory=list)  # {"step", "kind", "text"}, in order
    stop_logprobs: list[float | None] = field(default_factory=list)  # per token: log p(end) where it was chosen
    dynamics: dict | None = None  # {"flips", "settled_at", "after_settle", "readings"} once the row ended


class Run:
    """One run: the baseline and steered rows side by side, with their probe readings.

    - ``run.rows``: each ``Row`` (text, token ids, finish reason, first divergence, probe series);
      ``run.baseline`` is ``run.rows[0]``.
    - ``run.to_pandas()``: one tidy frame, a line per generated token of each row with the probe
      reading taken just before it.
    - ``run.figure()``: the dashboard's log-odds chart as a ``plotly.graph_objects.Figure``.
    - ``run.save(db=None)``: into the session log (then ``?run=<id>`` opens it in the dashboard);
      ``steer_ui.open_run(id)`` brings any logged run back.
    - In Jupyter a run displays itself: the panes with tokens coloured by log-odds, and the chart.
    """

    def __init__(self, events: list[Event], settings: RunSettings, lm: LoadedModel | None = None,
                 run_id: str | None = None, interrupted: bool = False):
        """``lm``: the model it ran on (None for a run from the log opened without it: it cannot be saved
        again, and each row's text is whole on its first token)."""
        self.events, self.settings, self.lm = events, settings, lm
        self.id = run_id  # the session log's id, once saved (or when opened from the log)
        self.interrupted = interrupted  # stopped by Ctrl-C / the notebook's interrupt: rows are 'cancelled'
        think_close = lm.profile.think_close if lm is not None else None
        self.view = RunView(run_id or "notebook", think_close)
        for event in events:
            self.view.apply(event)

    # --- what the run holds ---------------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        return self.settings.prompt

    @property
    def choices(self) -> list[str]:
        """The probe's choices; log-odds are the first against the second."""
        return list(self.view.choices)

    @property
    def rows(self) -> list[Row]:
        return [Row(r.row, "baseline" if r.row == 0 else r.label, r.coef, r.text or "".join(r.pieces),
                    list(r.token_ids), r.finish, r.diverge, list(r.steps), list(r.logodds), list(r.mass),
                    list(r.reliable), r.budget, [i for i, f in enumerate(r.forced) if f], list(r.interventions),
                    list(r.stop_logprobs), self.view.dynamics(r.row))
                for r in self.view.rows]

    @property
    def baseline(self) -> Row:
        return self.rows[0]

    @property
    def warnings(self) -> list[str]:
        return list(self.view.warnings)

    def __len__(self) -> int:
        return len(self.view.rows)

    def __repr__(self) -> str:
        rows = ", ".join(f"{r.label}: {len(r.token_ids)} tokens ({r.finish_reason})" for r in self.rows)
        saved = f" id={self.id}" if self.id else ""
        return f"<steer_ui.Run{saved} {self.prompt[:40]!r}: {rows}>"

    # --- views of it ------------------------------------------------------------------------------------
    def to_pandas(self) -> pd.DataFrame:
        """One line per generated token of each row (``FRAME_COLUMNS``): its step (0-based), id and text,
        and the probe reading taken after ``step`` tokens, just before this one (NaN on steps without a
        reading). A reading after a row's last token gets its own line with no token.

        Budget columns: ``forced`` (a budget fed this token), ``stop_logprob`` (log p(end of thinking) where
        it was chosen), ``intervention`` (the kind of intervention starting at this step: extend, cap or
        trigger); and the row's answer dynamics, the same on each of its lines: ``flips``, ``settled_at``."""
        import pandas as pd

        lines = []
        for r, row in zip(self.view.rows, self.rows):
            readings = {s: (lo, m, ok) for s, lo, m, ok in zip(r.steps, r.logodds, r.mass, r.reliable)}
            kinds = {n["step"]: n["kind"] for n in r.interventions}
            moved = (row.dynamics or {}).get("flips"), (row.dynamics or {}).get("settled_at")
            for step in range(len(r.token_ids) + (1 if len(r.token_ids) in readings else 0)):
                lo, m, ok = readings.get(step, (None, None, None))
                token = (r.token_ids[step], r.pieces[step]) if step < len(r.token_ids) else (None, None)
                budget = ((r.forced[step], r.stop_logprobs[step]) if step < len(r.token_ids) else (None, None))
                lines.append((r.row, row.label, r.coef, step, *token, lo, m, ok, *budget, kinds.get(step), *moved))
        frame = pd.DataFrame(lines, columns=list(FRAME_COLUMNS))
        for name in ("token_id", "flips", "settled_at"):
            frame[name] = frame[name].astype("Int64")
        frame[["logodds", "mass", "stop_logprob"]] = frame[["logodds", "mass", "stop_logprob"]].astype(float)
        frame[["reliable", "forced"]] = frame[["reliable", "forced"]].astype("boolean")
        return frame

    def figure(self, urge_to_stop: bool | None = None) -> go.Figure:
        """The log-odds chart (dotted: mass on the choices; dashed: where thinking ends), as the dashboard
        draws it; ``urge_to_stop`` adds each row's log p(end of thinking) in a strip below (None: when the
        run has a budget or at-end row, as the dashboard does)."""
        import plotly.graph_objects as go

        from steer_ui.views.chart import figure

        fig = figure(self.view, urge=urge_to_stop)
        return go.Figure({"data": fig["data"], "layout": fig["layout"]})

    def _repr_html_(self) -> str:
        from steer_ui.api.display import run_html

        return run_html(self)

    # --- the session log --------------------------------------------------------------------------------
    def save(self, db: str | None = None) -> str:
        """Write the run into the session log (default: the same one the CLI and the dashboard use; ``db``
        a path or SQLAlchemy URL); returns its id. Saving again gives the same id."""
        if self.id is not None:
            return self.id
        if self.lm is None:
            raise UserError("this run came from the log already; it has an id: use run.id")
        from steer_ui.log.recorder import RunRecorder
        from steer_ui.log.store import Store

        store = Store(db)
        recorder = RunRecorder(store, store.new_session("notebook"), self.lm, self.settings)
        for event in self.events:
            recorder(event)
        recorder.close()
        if recorder.error is not None:
            raise UserError(f"the run was not saved: {recorder.error}")
        self.id = recorder.run_id
        return self.id

