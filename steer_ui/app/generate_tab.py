"""The Generate tab: the run form (one widget per knob), and the baseline and steered rows streaming side by
side with the live log-odds chart; Stop; the run's link and downloads.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from html import escape
from typing import Any

import gradio as gr

from steer_ui.app import widgets
from steer_ui.app.context import AppContext, shown
from steer_ui.app.downloads import chart_page, run_downloads
from steer_ui.app.form import knob_widget, knobs_in
from steer_ui.app.hosted import rate_validator
from steer_ui.app.live import LiveRun
from steer_ui.app.model_panel import ModelPanel
from steer_ui.app.stream_values import Windower, chart_value, streams_value
from steer_ui.app.train_panel import TrainPanel
from steer_ui.app.vector_panel import NO_VECTOR, VectorPanel
from steer_ui.app.wiring import Components, by_name
from steer_ui.engine.knobs import BY_NAME, KNOBS, parse_rows
from steer_ui.engine.run_settings import RunSettings, settings_from_form
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError
from steer_ui.log.archive import record_events, run_record
from steer_ui.log.recorder import RunRecorder
from steer_ui.vectors.guidance import dose_lines
from steer_ui.vectors.vector import SteeringVector
from steer_ui.views.run_view import RunView

UPDATES_PER_S = 15  # what a browser comfortably renders; the engine may be much faster or slower
# The generate event's inputs (and API parameters), by name: the knobs, the uploaded file beside the vector.
FORM = tuple(name for k in KNOBS for name in ((k.name, "vector_file") if k.name == "vector" else (k.name,)))
# The generate API's outputs, in the documented order (gradio_client scripts unpack them positionally).
# shown_run is a gr.State (kept on the server, not in the API): which run the chart button makes a page of.
RUN_OUTPUTS = ("streams", "chart", "status", "result", "downloads", "link", "shown_run")
GENERATE_OUTPUTS = (*RUN_OUTPUTS, "browser_id")

EXAMPLES: list[dict[str, Any]] = [
    {"prompt": "Is 91 a prime number? Think it through step by step, then answer Yes or No.",
     "vector": "reconsideration", "coefs": "4, 8", "rows": "", "scope": "generated", "max_new_tokens": 96},
    {"prompt": "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. Does the ball cost "
               "10 cents? Answer Yes or No, then explain.",
     "vector": "confidence", "coefs": "6, -6", "rows": "", "scope": "all", "max_new_tokens": 80},
    {"prompt": "Is 17 x 23 greater than 400? Work it out, then answer Yes or No.",
     "vector": "reconsideration", "coefs": "4", "rows": "confidence=-3@16-19\nverbosity=3@16-19",
     "scope": "generated", "max_new_tokens": 48},
    {"prompt": "Is the Great Wall of China visible from the Moon with the naked eye? Answer Yes or No.",
     "vector": "confidence", "coefs": "6, -6", "rows": "", "scope": "all", "max_new_tokens": 64},
    # Budget forcing beside steering: the word "Wait" where the model would stop, against the
    # reconsideration direction throughout, and at the same moments (at-end) for 8 tokens.
    {"prompt": "Is 91 a prime number? Answer in one short sentence.",
     "vector": "reconsideration", "coefs": "4", "rows": "budget:min=48\nreconsideration=4@16-19/at-end:8",
     "scope": "generated", "max_new_tokens": 80},
]

CLOSE_EXAMPLES_JS = "() => { document.querySelector('#su-examples-box > button.label-wrap.open')?.click(); }"

log = logging.getLogger(__name__)


class GenerateTab:
    def __init__(self, ctx: AppContext, vectors: VectorPanel, model: ModelPanel, train: TrainPanel | None = None):
        self.ctx, self.vectors, self.model, self.train = ctx, vectors, model, train

    def settings(self, form: dict[str, Any]) -> RunSettings:
        """The form's values (by knob name, plus the uploaded ``vector_file``) as checked settings."""
        form = {**form, "vector": None if form.get("vector") in (None, "", NO_VECTOR) else form["vector"]}
        if self.ctx.limits is not None:  # sizes first: nothing is parsed or read for a form over a cap
            self.ctx.limits.check_form(form)
        settings = settings_from_form(form, self.vectors.resolver(form.get("vector_file")))
        if self.ctx.limits is not None:
            self.ctx.limits.check_settings(settings)
            self.ctx.limits.check_probe(settings, self.ctx.lm)
        return settings

    def shared_steering(self, form: dict[str, Any]) -> tuple[SteeringVector | None, tuple[int, ...] | None, Scope]:
        """The form's vector (None when none is chosen), layers and scope, for a sweep over coefficients."""
        name = form.get("vector")
        vector = None if name in (None, "", NO_VECTOR) else self.vectors.resolver(form.get("vector_file"))(name)
        layers = BY_NAME["layers"].read(form.get("layers") or None)
        if vector is not None:
            vector.check_against(self.ctx.lm.n_layers, self.ctx.lm.hidden_size, layers)
        return vector, layers, BY_NAME["scope"].read(form.get("scope") or None)

    def generate(self, vector_file: str | None = None, browser_id: str | None = None, request: gr.Request = None,
                 **form: Any) -> Iterator[dict[str, Any]]:
        """Streams {streams, chart, status} about 15 times a second; the last update carries every output.

        ``form``: the knobs by name; ``vector_file``: an uploaded vector ('file' in the form names it)."""
        try:
            settings = self.settings({**form, "vector_file": vector_file})
            sid, token = self.ctx.session_for(browser_id)
            self.ctx.check_model_time(sid, request)
            self.ctx.logged_session(sid, "browser" if browser_id else "api")
            recorder = RunRecorder(self.ctx.store, sid, self.ctx.lm, settings)
            # The view's key is what a browser quotes to fetch the whole run (snapshot): a fresh random
            # token, not the run id, so only the page that streamed or opened the run knows it.
            live = LiveRun(self.ctx.lm, settings, self.ctx.hold_model(sid, request), recorder,
                           key=secrets.token_hex(12))
        except UserError as err:
            raise shown(err) from None
        tab = getattr(request, "session_hash", None) or live.run_id
        self.ctx.active[tab] = live
        self.ctx.remember(live.view)
        window = Windower()
        notes = dose_lines(settings.rows)
        started = time.monotonic()
        try:
            # Read to the end of the engine thread, not to the done event: the log's failure to save the
            # run comes after it, and the final frame must say so.
            for view in live.frames(1 / UPDATES_PER_S):
                if view.finished:
                    continue  # the final frame below carries every output
                streams, chart = window(view)
                yield {"streams": streams, "chart": chart, "status": status_text(view, notes, started),
                       "browser_id": token}
        finally:
            live.stop()  # Stop, a closed tab, or the end: the run is saved and the model free on return
            self.ctx.active.pop(tab, None)
        view = live.view
        streams, chart = window(view)
        yield {"streams": streams, "chart": chart, "status": status_text(view, notes, started),
               "result": self._result(live), "downloads": self._downloads(live),
               "link": run_link(live.run_id), "shown_run": live.run_id, "browser_id": token}

    def _result(self, live: LiveRun) -> dict:
        if live.recorder is not None and live.recorder.error is not None:
            return live.view.result(live.run_id, "error")  # the view's error says the log failed
        try:
            status = self.ctx.store.get_run(live.run_id).status if live.view.rows else "error"
        except UserError:
            status = "error"
        return live.view.result(live.run_id, status)

    def _downloads(self, live: LiveRun) -> list[str]:
        """The run's files, none when the log did not take it (the error is in the status already)."""
        if live.recorder is not None and live.recorder.error is not None:
            return []
        try:
            return run_downloads(self.ctx.store, self.ctx.files, live.run_id, live.view)
        except UserError as err:
            log.error("run %s: no downloads: %s", live.run_id, err)
            return []

    def chart_download(self, shown_run: str | None, browser_id: str | None = None) -> dict:
        """The shown run's files, and its chart as a standalone page (made now, once per run)."""
        if not shown_run:
            raise gr.Error("run something (or open a run) first", print_exception=False)
        try:
            run = self.ctx.visible_run(shown_run, browser_id)
        except UserError as err:
            raise shown(err) from None
        view = RunView(run.id)
        for event in record_events(run_record(self.ctx.store, run)):
            view.apply(event)
        files = run_downloads(self.ctx.store, self.ctx.files, run.id, view)
        return {"downloads": [chart_page(self.ctx.files, run.id, view), *files]}

    def stop(self, request: gr.Request = None) -> None:
        """End this page's run at its next step and return at once: the run's own request waits for it to be
        saved (a Stop that waited held a server thread up to 60 s, and 45 of them slowed every page)."""
        live = self.ctx.active.get(getattr(request, "session_hash", None) or "")
        if live is not None:
            live.stop(timeout=0)

    def snapshot(self, key: str) -> dict:
        """A run's whole streams and chart values, for a browser that missed live updates."""
        view = self.ctx.views.get(str(key))
        if view is None:
            return {}
        return {"streams": streams_value(view), "chart": chart_value(view)}

    # --- layout and wiring -----------------------------------------------------------------------
    def layout(self, ui: Components) -> None:
        # At 1440x900 the prompt, the vector, Generate/Stop and the examples are in view without scrolling:
        # the run's controls first on the left, the examples where the streams will be (closed once a run
        # shows), and the chart and downloads take room only once they have something in them.
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=340):
                self._form(ui)
            with gr.Column(scale=5, min_width=480):
                with ui.add("examples_box", gr.Accordion("Examples", open=True, elem_id="su-examples-box")):
                    gr.Examples(self._examples(), inputs=ui.outputs(EXAMPLES[0]), label="",
                                cache_examples=False, elem_id="su-examples")
                self._outputs(ui)

    def _examples(self) -> list[list]:
        """The examples by knob name, with their preset vectors where the loaded model has them (else
        baseline only)."""
        presets = set(self.vectors.presets())
        out = []
        for ex in EXAMPLES:
            if not {ex["vector"], *(s.vector for s in parse_rows(ex["rows"]) if s.vector is not None)} <= presets:
                ex = {**ex, "vector": NO_VECTOR, "coefs": "", "rows": ""}
            out.append([ex[name] for name in EXAMPLES[0]])
        return out

    def _form(self, ui: Components) -> None:
        lm, limits = self.ctx.lm, self.ctx.limits
        ui.add("prompt", knob_widget(knobs_in("prompt")[0], limits))
        self.vectors.layout(ui)
        with gr.Row():
            for knob in knobs_in("steering", skip=("vector", "scope", "rows")):
                ui.add(knob.name, knob_widget(knob, limits))
        with gr.Row():  # the two knobs changed most often stay in sight
            for name in ("scope", "max_new_tokens"):
                ui.add(name, knob_widget(BY_NAME[name], limits))
        with gr.Row():
            ui.add("generate_btn", gr.Button("Generate", variant="primary"))
            ui.add("stop_btn", gr.Button("Stop", variant="stop"))
        ui.add("rows", knob_widget(BY_NAME["rows"], limits))
        self.vectors.sources_layout(ui)
        if self.train is not None:
            self.train.layout(ui)
        with gr.Accordion("System prompt and template", open=False):
            for knob in knobs_in("prompt", skip=("prompt",)):
                ui.add(knob.name, knob_widget(knob, limits))
        with gr.Accordion("Decoding", open=False):
            for knob in knobs_in("decoding", skip=("max_new_tokens",)):
                ui.add(knob.name, knob_widget(knob, limits))
        with gr.Accordion("Probe", open=False):
            for knob in knobs_in("probe"):
                ui.add(knob.name, knob_widget(knob, limits, lm.profile.probe_suffix if knob.name == "probe_suffix"
                                              else None))
        self.model.layout(ui)

    def _outputs(self, ui: Components) -> None:
        ui.add("status", gr.Markdown("", label="Status"))
        ui.add("streams", widgets.streams(self._snapshot_fn(), label="Streams"))
        ui.add("chart", widgets.chart(self._snapshot_fn(), label="Log-odds chart"))
        ui.add("shown_run", gr.State(None))
        with ui.add("after_run", gr.Column(visible=False)):  # shown once a run is on screen (shown_after)
            ui.add("link", gr.Markdown("", label="Run link"))
            ui.add("downloads", gr.File(label="Downloads", file_count="multiple", interactive=False))
            ui.add("chart_btn", gr.Button("Chart as a page (HTML, opens offline)", size="sm"))
            with gr.Accordion("Run data (JSON, what the API returns)", open=False):
                ui.add("result", gr.JSON(label="Run data"))

    def _snapshot_fn(self):
        def snapshot(run_key: str) -> dict:  # a plain function: Gradio marks server functions with an attribute
            return self.snapshot(run_key)
        return snapshot

    def wire(self, ui: Components) -> gr.events.Dependency:
        self.model.wire(ui)
        self.vectors.wire(ui)
        if self.train is not None:
            self.train.wire(ui)
        # The examples close in the page at the click: one the visitor opened again is open only in the page,
        # so open=False from the server (what it already holds) would change nothing. Registered before the
        # run: the page runs a click's events in order, and this one would otherwise wait for the run.
        ui["generate_btn"].click(None, js=CLOSE_EXAMPLES_JS)
        run = ui["generate_btn"].click(
            by_name(self.generate, GENERATE_OUTPUTS), inputs_kwargs=ui.inputs([*FORM, "browser_id"]),
            outputs=ui.outputs(GENERATE_OUTPUTS), api_name="generate", concurrency_id="gpu", concurrency_limit=1,
            validator=rate_validator(self.ctx.rate, self.ctx.session_of), show_progress="minimal",
            show_progress_on=[ui["status"]])
        shown_after(run, ui)
        ui["stop_btn"].click(self.stop, api_name="stop", queue=False)
        ui["chart_btn"].click(by_name(self.chart_download, ("downloads",)),
                              inputs_kwargs=ui.inputs(["shown_run", "browser_id"]), outputs=ui["downloads"],
                              api_visibility="private", validator=rate_validator(self.ctx.rate, self.ctx.session_of))
        return run


def shown_after(event: gr.events.Dependency, ui: Components) -> None:
    """Once ``event`` has put a run on screen (a run, or one reopened): its link and downloads shown, the
    examples closed."""
    def show(shown_run: str | None) -> dict:
        return {"after_run": gr.Column(visible=bool(shown_run)),
                "examples_box": gr.Accordion(open=not shown_run)}
    event.then(by_name(show, ("after_run", "examples_box")), inputs_kwargs=ui.inputs(["shown_run"]),
               outputs=ui.outputs(("after_run", "examples_box")), api_visibility="private", queue=False)


def status_text(view: RunView, notes: list[str], started: float) -> str:
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
                     f"{t.prefill_s * 1000:.0f} ms{', ' + t.path if t.path else ''})")
    elif not view.error:
        lines.append(f"**streaming**: {tokens} tokens per row, {elapsed:.1f} s")
    lines += [escape(w) for w in view.warnings + notes]
    return "  \n".join(lines)


def run_link(run_id: str | None) -> str:
    return f"Link to this run: [`?run={run_id}`](?run={run_id})" if run_id else ""
