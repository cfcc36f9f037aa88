"""The dashboard's handlers: form values in, component values out. ``ui.py`` lays them out and wires them.

Every handler is a plain method, so tests call them directly. User mistakes arrive as ``UserError`` from
the core modules and leave as ``gr.Error`` (a visible message in the browser, an error for API clients).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import gradio as gr

from steer_ui.engine import worker as gpu
from steer_ui.vectors.presets import ASSETS, preset_names
from steer_ui.errors import UserError
from steer_ui.vectors.contrastive import parse_pair, read_pairs_jsonl
from steer_ui.vectors.guidance import dose_summary
from steer_ui.log.archive import export, record_events, run_record, stored_vector
from steer_ui.jsonl import parse_lines
from steer_ui.app.hosted import Limits, RateLimiter
from steer_ui.app.live import LiveRun
from steer_ui.model.loading import LoadedModel, load_model
from steer_ui.log.recorder import RunRecorder
from steer_ui.engine.run_settings import ProbeSettings, RunSettings, Sampling, Scope, parse_choices, parse_layers
from steer_ui.log.store import Store
from steer_ui.vectors.vector import SteeringVector, load_vector, save_vector
from steer_ui.views.run_view import RunView, Windower

NO_VECTOR = "(none)"
FILE_VECTOR = "uploaded or computed file"
SCOPES = ["all", "generated", "kick:8", "think", "answer"]
UPDATES_PER_S = 15  # what a browser comfortably renders; the engine may be much faster or slower
KEEP_VIEWS = 32  # runs whose full view a browser can fetch again (Dashboard.snapshot)
MAX_SWEEP_QUESTIONS = 50  # the Sweep tab is for a quick look; the CLI runs big sweeps

EXAMPLES = [
    # prompt, vector, coefficients, scope, max new tokens
    ["Is 91 a prime number? Think it through step by step, then answer Yes or No.", "reconsideration", "4, 8",
     "generated", 96],
    ["A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. Does the ball cost 10 cents? "
     "Answer Yes or No, then explain.", "confidence", "6, -6", "all", 80],
    ["Is the Great Wall of China visible from the Moon with the naked eye? Answer Yes or No.", "confidence",
     "6, -6", "all", 64],
    ["Is 17 x 23 greater than 400? Work it out, then say Yes or No.", "verbosity", "6", "generated", 128],
]


@dataclass
class AppContext:
    """What the handlers share: the loaded model (one per process), the session log, running runs."""

    lm: LoadedModel
    store: Store
    device: str = "auto"
    dtype: str = "auto"
    model_lock: threading.Lock = field(default_factory=threading.Lock)  # hooks on the shared model
    active: dict[str, LiveRun] = field(default_factory=dict)  # by Gradio session hash: what Stop stops
    views: OrderedDict[str, RunView] = field(default_factory=OrderedDict)  # recent runs, for snapshots
    files: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steer-ui-")))
    any_run_link: bool = True  # ?run=ID may open runs of other sessions (a local, single-user app)
    limits: Limits | None = None  # hosted mode: caps, rate limit, model allow-list (None: a local install)
    startup_model: str = ""
    rate: RateLimiter | None = None

    def __post_init__(self) -> None:
        if self.limits is not None:
            self.any_run_link = False  # hosted: a browser opens only its own runs
            self.rate = self.rate or RateLimiter(self.limits.runs_per_minute)
        self.startup_model = self.startup_model or self.lm.model_id


def _err(err: UserError) -> gr.Error:
    return gr.Error(str(err), print_exception=False)


class Dashboard:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    # --- model ----------------------------------------------------------------------------------
    def model_markdown(self) -> str:
        lm = self.ctx.lm
        p = lm.profile
        think = f"thinking block `{p.think_open}`...`{p.think_close}`" if p.has_thinking else "no thinking block"
        note = f" - {escape(p.note)}" if p.note else ""
        return (f"**{escape(lm.model_id)}** | {lm.n_layers} layers | hidden {lm.hidden_size} | "
                f"{lm.device.type} | {str(lm.dtype).removeprefix('torch.')} | {think} | "
                f"suggested layers {p.layer_band[0]}-{p.layer_band[1]}{note}")

    def presets(self) -> list[str]:
        """Shipped vectors for the loaded model (only the bundled model has them)."""
        folder = ASSETS / "vectors" / self.ctx.lm.profile.key
        return [n for n in preset_names() if (folder / f"{n}.safetensors").is_file()]

    def vector_choices(self) -> list[str]:
        return [NO_VECTOR, *self.presets(), FILE_VECTOR]

    def load(self, model: str, progress: gr.Progress | None = gr.Progress()) -> tuple:  # noqa: B008
        """Load another model for everyone; waits for the running generation (same queue)."""
        model = (model or "").strip()
        if not model:
            raise gr.Error("type a hub id (e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B), a local folder or "
                           "a .gguf file", print_exception=False)
        if progress is not None:
            progress(None, desc=f"loading {model} ...")
        try:
            if gpu.ACTIVE and model != self.ctx.lm.model_id:
                raise UserError(f"on ZeroGPU the model is fixed at startup: this Space runs {self.ctx.lm.model_id} "
                                "(set STEER_UI_MODEL in the Space's settings to change it)")
            if self.ctx.limits is not None:
                self.ctx.limits.check_model(model, self.ctx.startup_model)
            with self.ctx.model_lock:
                self.ctx.lm = load_model(model, device=self.ctx.device, dtype=self.ctx.dtype)
        except UserError as err:
            raise _err(err) from None
        choices = self.vector_choices()
        return (self.model_markdown(), gr.update(choices=choices, value=NO_VECTOR),
                self.ctx.lm.profile.probe_suffix, "", self.layer_table(None))

    # --- vectors --------------------------------------------------------------------------------
    def resolve_vector(self, vector: str | None, vector_file: str | None) -> SteeringVector | None:
        if not vector or vector == NO_VECTOR:
            return None
        if vector == FILE_VECTOR:
            if not vector_file:
                raise UserError("upload a vector file (.gguf, .safetensors, .pt, .npy) or compute one from pairs")
            return load_vector(vector_file)
        if vector not in self.presets():
            raise UserError(f"no preset vector {vector!r} for {self.ctx.lm.model_id}; choose one of "
                            f"{', '.join(self.presets()) or '(none ship for this model)'} or upload a file")
        return load_vector(ASSETS / "vectors" / self.ctx.lm.profile.key / f"{vector}.safetensors")

    def vector_info(self, vector: str | None, vector_file: str | None) -> tuple[str, str]:
        """(per-layer separation table, suggested layers) for the chosen vector."""
        try:
            vec = self.resolve_vector(vector, vector_file)
            if vec is not None:
                vec.check_against(self.ctx.lm.n_layers, self.ctx.lm.hidden_size, None)
        except UserError as err:
            raise _err(err) from None
        if vec is None:
            return self.layer_table(None), ""
        band = vec.metadata.get("suggested_band") or "-".join(map(str, self.ctx.lm.profile.layer_band))
        return self.layer_table(vec), band

    def layer_table(self, vec: SteeringVector | None) -> str:
        if vec is None:
            return ("<p class='su-hint'>No vector: only the baseline runs. Pick a preset, upload a file, "
                    "or compute one.</p>")
        stats = {s["layer"]: s for s in json.loads(vec.metadata.get("layer_stats", "[]"))}
        head = (f"<p class='su-hint'><b>{escape(vec.name or 'vector')}</b>: {len(vec.layers)} layers, "
                f"hidden {vec.hidden_size}")
        if not stats:
            return head + ". The file has no separation scores; start from the model's suggested band.</p>"
        band = vec.metadata.get("suggested_band", "")
        top = max((s["effect_size"] for s in stats.values()), default=1.0) or 1.0
        cells = []
        for layer in vec.layers:
            s = stats.get(layer)
            if s is None:
                continue
            width = max(0.0, s["effect_size"] / top) * 100
            cells.append(
                f"<div class='su-bar' title='layer {layer}: effect size {s['effect_size']:.2f}, pair accuracy "
                f"{s['pair_accuracy']:.2f}, relative norm {s['relative_norm']:.3f}'><span>{layer}</span>"
                f"<i style='height:{width:.0f}%'></i></div>")
        return (head + f"; separation by layer (effect size, taller is better), suggested band "
                f"<b>{escape(band)}</b>:</p><div class='su-bars'>{''.join(cells)}</div>")

    def compute(self, pairs_text: str, pairs_file: str | None, method: str, layers: str,
                progress: gr.Progress | None = gr.Progress()) -> tuple:  # noqa: B008
        """A vector from contrastive pairs, saved as .safetensors and selected as the file vector."""
        try:
            if self.ctx.limits is not None:
                self.ctx.limits.check_file(pairs_file, "pairs file")
            pairs = self._pairs(pairs_text, pairs_file)
            if self.ctx.limits is not None and len(pairs) > self.ctx.limits.pairs:
                raise UserError(f"{len(pairs)} pairs; this server's limit is {self.ctx.limits.pairs}")
            lm = self.ctx.lm
            chosen = parse_layers(layers or "all", lm.n_layers) or tuple(range(lm.n_layers))

            def report(done: int, total: int) -> None:
                if progress is not None:
                    progress((done, total), desc="reading hidden states", unit="texts")

            with self.ctx.model_lock:
                computed = gpu.compute_vector(lm, pairs, chosen, method, progress=report, source="dashboard")
        except UserError as err:
            raise _err(err) from None
        out = self.ctx.files / f"vector-{computed.vector.content_hash()[:12]}.safetensors"
        save_vector(computed.vector, out)
        band = f"{computed.band[0]}-{computed.band[1]}"
        return gr.update(value=FILE_VECTOR), str(out), self.layer_table(computed.vector), band

    @staticmethod
    def _pairs(text: str, file: str | None) -> list:
        if file:
            return read_pairs_jsonl(file)
        try:
            return [parse_pair(obj, where) for where, obj in parse_lines(text or "", "pairs")]
        except UserError as err:
            raise UserError(f'{err}: write one {{"positive": "...", "negative": "..."}} per line') from None

    # --- generation -----------------------------------------------------------------------------
    def settings(self, prompt: str, system_prompt: str, chat_template: bool, vector: str, vector_file: str | None,
                 layers: str, coefs: str, scope: str, max_new_tokens: float, temperature: float, top_p: float,
                 seed: float, probe_suffix: str, probe_choices: str, probe_every: float,
                 ignore_eos: bool = False) -> RunSettings:
        coef_list = _parse_coefs(coefs)
        if self.ctx.limits is not None:
            self.ctx.limits.check_run(prompt or "", _int(max_new_tokens, "max new tokens"), len(coef_list))
            self.ctx.limits.check_file(vector_file, "vector file")
        vec = self.resolve_vector(vector, vector_file)
        if coef_list and vec is None:
            raise UserError("choose a steering vector for the steered rows, or clear the coefficients")
        settings = RunSettings(
            prompt=prompt or "", system=(system_prompt or None) if (system_prompt or "").strip() else None,
            raw=not chat_template, vector=vec,
            layers=parse_layers(layers or "all", self.ctx.lm.n_layers) if vec is not None else None,
            coefs=tuple(coef_list), scope=Scope.parse(scope or "all"),
            max_new_tokens=_int(max_new_tokens, "max new tokens"),
            ignore_eos=bool(ignore_eos),
            sampling=Sampling(float(temperature), float(top_p), 0, _int(seed, "seed")),
            probe=ProbeSettings((probe_suffix or None), parse_choices(probe_choices or "Yes,No"),
                                _int(probe_every, "probe cadence")),
        )
        settings.validate()
        return settings

    def session_for(self, browser_id: str | None, kind: str = "browser") -> str:
        """This browser's session in the log (created on first use); API callers without one get their own."""
        sid = self.ctx.store.new_session(kind, session_id=browser_id or None)
        self.ctx.store.touch_session(sid)
        return sid

    def generate(self, prompt: str, system_prompt: str = "", chat_template: bool = True, vector: str = NO_VECTOR,
                 vector_file: str | None = None, layers: str = "", coefs: str = "", scope: str = "all",
                 max_new_tokens: float = 96, temperature: float = 0.0, top_p: float = 1.0, seed: float = 0,
                 probe_suffix: str = "", probe_choices: str = "Yes,No", probe_every: float = 4,
                 ignore_eos: bool = False, browser_id: str | None = None,
                 request: gr.Request | None = None) -> Iterator[tuple]:
        """Yields (streams, chart, status, result, files, link, browser_id) about 15 times a second."""
        try:
            settings = self.settings(prompt, system_prompt, chat_template, vector, vector_file, layers, coefs, scope,
                                     max_new_tokens, temperature, top_p, seed, probe_suffix, probe_choices,
                                     probe_every, ignore_eos)
            sid = self.session_for(browser_id, "browser" if browser_id else "api")
            recorder = RunRecorder(self.ctx.store, sid, self.ctx.lm, settings)
            # The view's key is what a browser quotes to fetch the whole run (snapshot): a fresh random
            # token, not the run id, so only the page that streamed or opened the run knows it.
            live = LiveRun(self.ctx.lm, settings, self.ctx.model_lock, recorder, key=secrets.token_hex(12))
        except UserError as err:
            raise _err(err) from None
        tab = getattr(request, "session_hash", None) or live.run_id
        self.ctx.active[tab] = live
        self._remember(live.view)
        window = Windower()
        notes = _dose_notes(settings)
        started = time.monotonic()
        skip = gr.skip()
        try:
            for view in live.frames(1 / UPDATES_PER_S):
                if view.finished:
                    break
                yield (*window(view), _status(view, notes, started), skip, skip, skip, sid)
        finally:
            live.stop()  # Stop, a closed tab, or the end: the run is saved and the model free on return
            self.ctx.active.pop(tab, None)
        view = live.view
        yield (*window(view), _status(view, notes, started), self._result(live),
               self._downloads(live.run_id, view), _link(live.run_id), sid)

    def _remember(self, view: RunView) -> None:
        self.ctx.views[view.key] = view
        self.ctx.views.move_to_end(view.key)
        while len(self.ctx.views) > KEEP_VIEWS:
            self.ctx.views.popitem(last=False)

    def snapshot(self, key: str) -> dict:
        """A run's whole streams and chart values, for a browser that missed live updates."""
        view = self.ctx.views.get(str(key))
        if view is None:
            return {}
        return {"streams": view.streams_value(), "chart": view.chart_value()}

    def validator_for(self, handler: Callable) -> Callable:
        """Hosted mode's rate limit as a Gradio validator for ``handler``'s event: it runs before the
        request takes a queue slot. It takes the handler's own signature (so Gradio passes the same
        inputs and the request) and keys the limit by the browser session, else the client's address.
        """
        @functools.wraps(handler)
        def validator(*args, **kwargs) -> list[dict]:
            bound = inspect.signature(handler).bind(*args, **kwargs)
            bound.apply_defaults()
            inputs = [v for k, v in bound.arguments.items() if k not in ("request", "progress")]
            request = bound.arguments.get("request")
            client = getattr(getattr(request, "client", None), "host", None)
            key = bound.arguments.get("browser_id") or client or "anonymous"
            return self.admit(str(key), len(inputs))

        return validator

    def admit(self, key: str, n_inputs: int) -> list[dict]:
        """One ``gr.validate`` per input; the first carries the refusal when ``key`` is over the limit."""
        ok = [gr.validate(True, "") for _ in range(n_inputs)]
        if self.ctx.rate is None:
            return ok
        try:
            self.ctx.rate.admit(key)
        except UserError as err:
            return [gr.validate(False, str(err)), *ok[1:]]
        return ok

    def stop(self, request: gr.Request | None = None) -> None:
        live = self.ctx.active.get(getattr(request, "session_hash", None) or "")
        if live is not None:
            live.stop()

    def _result(self, live: LiveRun) -> dict:
        status = self.ctx.store.get_run(live.run_id).status if live.view.rows else "error"
        return live.view.result(live.run_id, status)

    def _downloads(self, run_id: str, view: RunView) -> list[str]:
        if not view.rows:
            return []
        folder = self.ctx.files / run_id
        folder.mkdir(exist_ok=True)
        self._prune_downloads()
        fig = folder / f"steer-ui-{run_id}-chart.html"
        fig.write_text(figure_html(view.figure()), encoding="utf-8")
        paths = export(self.ctx.store, folder / f"steer-ui-{run_id}.jsonl", "jsonl", run_id=run_id)
        paths += export(self.ctx.store, folder / f"steer-ui-{run_id}.csv", "csv", run_id=run_id)
        return [str(fig), *map(str, paths)]

    def _prune_downloads(self, keep: int = KEEP_VIEWS) -> None:
        """Only the newest run folders stay on disk: a long-lived server must not fill its temp space."""
        folders = sorted((p for p in self.ctx.files.iterdir() if p.is_dir() and not p.name.startswith("sweep-")),
                         key=lambda p: p.stat().st_mtime)
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    # --- sweeps ---------------------------------------------------------------------------------
    def sweep(self, questions: str, questions_file: str | None, sweep_coefs: str, sweep_tokens: float,
              vector: str, vector_file: str | None, layers: str, scope: str, browser_id: str | None = None,
              progress: gr.Progress | None = gr.Progress()) -> tuple:  # noqa: B008
        """A small sweep with the Generate tab's vector, layers and scope: (table, figure, files, status)."""
        from steer_ui.experiments.questions import load_questions
        from steer_ui.experiments.sweep import SweepConfig, run_sweep

        try:
            if self.ctx.limits is not None:
                self.ctx.limits.check_file(questions_file, "questions file")
            qs = load_questions(questions_file or (questions or "").strip() or "yesno:8")
            most = self.ctx.limits.sweep_questions if self.ctx.limits is not None else MAX_SWEEP_QUESTIONS
            if len(qs) > most:
                raise UserError(f"the dashboard runs at most {most} questions; use "
                                "'python -m steer_ui sweep' for more")
            coefs = tuple(_parse_coefs(sweep_coefs))
            vec = self.resolve_vector(vector, vector_file) if any(c != 0 for c in coefs) else None
            cfg = SweepConfig(questions=qs, coefs=coefs, max_new_tokens=_int(sweep_tokens, "max new tokens"),
                              vector=vec, layers=parse_layers(layers or "all", self.ctx.lm.n_layers) if vec else None,
                              scope=Scope.parse(scope or "all"),
                              label={"title": f"{self.ctx.lm.model_id} | {vec.name if vec else 'no vector'}"})
            cfg.validate()
            if vec is not None:
                vec.check_against(self.ctx.lm.n_layers, self.ctx.lm.hidden_size, cfg.layers)
            sid = self.session_for(browser_id)
            out = Path(tempfile.mkdtemp(prefix="sweep-", dir=self.ctx.files))

            def report(done: int, total: int) -> None:
                if progress is not None:
                    progress((done, total), desc="sweeping", unit="questions")

            with self.ctx.model_lock:
                result = run_sweep(self.ctx.lm, cfg, out, self.ctx.store, report, session_id=sid)
        except UserError as err:
            raise _err(err) from None
        from steer_ui.experiments.sweep import figure as sweep_figure

        table = [[f"{s.coef:+g}", s.n, f"{s.accuracy:.0%}", f"{s.ci_low:.0%}-{s.ci_high:.0%}",
                  f"{s.mean_tokens:.1f}", f"{s.mean_tokens_correct:.1f}" if s.mean_tokens_correct is not None else "-",
                  f"{s.mean_final_logodds_gold:+.2f}" if s.mean_final_logodds_gold is not None else "-",
                  f"{s.forced_accuracy:.0%}" if s.forced_accuracy is not None else "-"] for s in result.summary]
        import plotly.graph_objects as go

        files = [str(p) for p in result.files if p.suffix in (".csv", ".html", ".png")]
        status = (f"**finished**: {len(qs)} questions x {len(coefs)} coefficients, {result.ran} runs, logged in this "
                  "browser's History." + "".join(f"  \n{escape(n)}" for n in result.notes))
        return table, go.Figure(sweep_figure(result.summary, cfg.label["title"])), files, status

    # --- history --------------------------------------------------------------------------------
    def history(self, browser_id: str | None) -> list[list]:
        if not browser_id:
            return []
        rows = []
        for r in self.ctx.store.list_runs(browser_id, limit=200):
            prompt = r.prompt if len(r.prompt) <= 80 else r.prompt[:77] + "..."
            rows.append([r.id, r.created.strftime("%Y-%m-%d %H:%M:%S"), r.status, prompt,
                         ", ".join(f"{c:+g}" for c in r.coefs) or "-", r.tokens])
        return rows

    def open_run(self, run_id: str, browser_id: str | None) -> tuple:
        """A logged run back on screen, its settings back in the form (the vector as a file)."""
        run_id = (run_id or "").strip()
        if not run_id:
            raise gr.Error("choose a run in the table (or paste a run id)", print_exception=False)
        try:
            run = self.ctx.store.get_run(run_id, None if self.ctx.any_run_link else (browser_id or "-"))
        except UserError as err:
            raise _err(err) from None
        record = run_record(self.ctx.store, run)
        same_model = run.model_id == self.ctx.lm.model_id
        view = RunView(secrets.token_hex(12), self.ctx.lm.profile.think_close if same_model else None)
        for event in record_events(record, self.ctx.lm.tokenizer if same_model else None):
            view.apply(event)
        view.warnings = [] if same_model else [f"logged with {run.model_id}; tokens are not split on this model"]
        self._remember(view)
        s = run.settings
        vector, vector_file = NO_VECTOR, None
        if run.vector_hash:  # the exact vector the run used, ready to run again
            vector_file = str(save_vector(stored_vector(self.ctx.store, run.vector_hash),
                                          self.ctx.files / f"vector-{run.vector_hash[:12]}.safetensors"))
            vector = FILE_VECTOR
        status = (f"Run `{run.id}` from {run.created:%Y-%m-%d %H:%M:%S} UTC: **{run.status}**"
                  + (f" ({escape(run.error)})" if run.error else "")
                  + "".join(f"  \n{escape(w)}" for w in view.warnings))
        return (view.streams_value(), view.chart_value(), status, view.result(run.id, run.status),
                self._downloads(run.id, view), _link(run.id), s.get("prompt", ""), s.get("system") or "",
                ",".join(map(str, run.layers)) if run.layers else "", ", ".join(f"{c:g}" for c in s.get("coefs", [])),
                s.get("scope", "all"), vector, vector_file)

    def on_page_load(self, browser_id: str | None, request: gr.Request | None = None) -> tuple:
        """Give a new browser its session; with ``?run=ID`` in the address, open that run."""
        sid = self.session_for(browser_id)
        run = (getattr(request, "query_params", None) or {}).get("run") if request is not None else None
        if run:
            try:
                opened = self.open_run(run, sid)
            except gr.Error as err:
                opened = (gr.skip(), gr.skip(), f"**Cannot open the linked run:** {escape(err.message)}",
                          *[gr.skip()] * 10)
        else:
            opened = tuple(gr.skip() for _ in range(13))
        return (sid, self.history(sid), *opened, gr.skip())

    def export_session(self, browser_id: str | None, fmt: str) -> dict:
        if not browser_id:
            raise gr.Error("this browser has no runs yet", print_exception=False)
        folder = Path(tempfile.mkdtemp(dir=self.ctx.files))
        try:
            paths = export(self.ctx.store, folder / f"steer-ui-session.{'jsonl' if fmt == 'jsonl' else 'csv'}", fmt,
                           session_id=browser_id)
        except UserError as err:
            raise _err(err) from None
        return gr.update(value=[str(p) for p in paths], visible=True)


def figure_html(figure: dict) -> str:
    """A standalone HTML page of the chart, plotly.js inlined so it opens offline."""
    import plotly.graph_objects as go
    import plotly.io as pio

    return pio.to_html(go.Figure({"data": figure["data"], "layout": figure["layout"]}), include_plotlyjs=True,
                       full_html=True)


def _parse_coefs(text: str) -> list[float]:
    out = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"coefficient {part!r} is not a number: write them like '4, 8, -6'") from None
        if not math.isfinite(value):
            raise UserError(f"coefficient {part!r} is not a finite number")
        out.append(value)
    return out


def _int(value: float | None, what: str) -> int:
    if value is None or not math.isfinite(float(value)) or float(value) != int(value):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _dose_notes(settings: RunSettings) -> list[str]:
    if settings.vector is None or not settings.coefs:
        return []
    layers = settings.layers if settings.layers is not None else settings.vector.layers
    return dose_summary(settings.vector.metadata, layers, settings.coefs)


def _status(view: RunView, notes: list[str], started: float) -> str:
    lines = []
    if view.error:
        lines.append(f"**Error:** {escape(view.error)}")
    tokens = max((len(r.pieces) for r in view.rows), default=0)
    elapsed = time.monotonic() - started
    if view.done is not None:
        reasons = {r.finish_reason for r in view.done.rows}
        state = "stopped" if "cancelled" in reasons else "finished"
        t = view.done.timing
        rate = t.steps / t.decode_s if t.decode_s > 0 else 0.0
        lines.append(f"**{state}**: {tokens} tokens per row in {elapsed:.1f} s ({rate:.1f} steps/s, prefill "
                     f"{t.prefill_s * 1000:.0f} ms)")
    elif not view.error:
        lines.append(f"**streaming**: {tokens} tokens per row, {elapsed:.1f} s")
    lines += [escape(w) for w in view.warnings + notes]
    return "  \n".join(lines)


def _link(run_id: str | None) -> str:
    return f"Link to this run: [`?run={run_id}`](?run={run_id})" if run_id else ""
