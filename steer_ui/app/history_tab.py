"""The History tab: this browser's runs, newest first; open one (its streams, chart and settings back on the
Generate tab, its vectors as the stored copies), export the session; and ``?run=ID`` links on page load."""

from __future__ import annotations

import secrets
from html import escape
from typing import Any

import gradio as gr

from steer_ui.app.context import AppContext, shown
from steer_ui.app.downloads import run_downloads, session_folder, stored_copy
from steer_ui.app.generate_tab import FORM, RUN_OUTPUTS, run_link, shown_after
from steer_ui.app.hosted import rate_validator
from steer_ui.app.stream_values import chart_value, streams_value
from steer_ui.app.vector_panel import FILE_VECTOR, NO_VECTOR, STORED, VectorPanel
from steer_ui.app.wiring import Components, by_name
from steer_ui.engine.run_settings import RunSettings, form_from_settings
from steer_ui.errors import UserError
from steer_ui.log.archive import export, record_events, run_record
from steer_ui.views.run_view import RunView

HEADERS = ["run", "started (UTC)", "status", "prompt", "vector", "coefs", "layers", "tokens per row"]
WIDTHS = ["10%", "13%", "8%", "27%", "14%", "8%", "9%", "11%"]  # every column in view at 1440 px, the prompt wrapped
OPENED = (*RUN_OUTPUTS, *FORM)  # a reopened run: its outputs, and its settings back in the form
PAGE_LOAD = ("browser_id", "history", *OPENED, "tabs")


class HistoryTab:
    def __init__(self, ctx: AppContext, vectors: VectorPanel):
        self.ctx, self.vectors = ctx, vectors

    def history(self, browser_id: str | None) -> list[list]:
        """This browser's runs (its token's session), newest first."""
        sid = self.ctx.session_of(browser_id)
        if sid is None:
            return []
        rows = []
        for r in self.ctx.store.list_runs(sid, limit=200):
            prompt = r.prompt if len(r.prompt) <= 80 else r.prompt[:77] + "..."
            rows.append([r.id, r.created.strftime("%Y-%m-%d %H:%M:%S"), r.status, prompt, r.vectors_text(),
                         ", ".join(f"{c:+g}" for c in r.coefs) or "-", r.layers_text(), r.tokens_text()])
        return rows

    def open_run(self, run_id: str, browser_id: str | None) -> dict[str, Any]:
        """A logged run back on screen, its settings back in the form (its vectors as the stored copies)."""
        run_id = (run_id or "").strip()
        if not run_id:
            raise gr.Error("choose a run in the table (or paste a run id)", print_exception=False)
        try:
            run = self.ctx.visible_run(run_id, browser_id)
        except UserError as err:
            raise shown(err) from None
        try:
            settings = RunSettings.from_dict(run.settings, self.ctx.store.run_vectors(run))
        except UserError as err:
            raise shown(err) from None
        same_model = run.model_id == self.ctx.lm.model_id
        view = RunView(secrets.token_hex(12), self.ctx.lm.profile.think_close if same_model else None)
        for event in record_events(run_record(self.ctx.store, run), self.ctx.lm.tokenizer if same_model else None):
            view.apply(event)
        view.warnings = [] if same_model else [f"logged with {run.model_id}; tokens are not split on this model"]
        self.ctx.remember(view)
        status = (f"Run `{run.id}` from {run.created:%Y-%m-%d %H:%M:%S} UTC: **{run.status}**"
                  + (f" ({escape(run.error)})" if run.error else "")
                  + "".join(f"  \n{escape(w)}" for w in view.warnings))
        return {"streams": streams_value(view), "chart": chart_value(view), "status": status,
                "result": view.result(run.id, run.status), "link": run_link(run.id), "shown_run": run.id,
                "downloads": run_downloads(self.ctx.store, self.ctx.files, run.id, view), **self._form(settings)}

    def _form(self, settings: RunSettings) -> dict[str, Any]:
        """The form that runs ``settings`` again; the first row's vector as a preset or the uploaded file."""
        form = form_from_settings(settings, self.vectors.form_name)
        form["system_prompt"] = form["system_prompt"] or ""
        form["probe_suffix"] = form["probe_suffix"] or self.ctx.lm.profile.probe_suffix
        vector = form["vector"]
        if vector is None:
            return {**form, "vector": NO_VECTOR, "vector_file": None}
        if vector in self.vectors.presets():
            return {**form, "vector_file": None}
        # The file box gets the stored copy itself (Gradio serves it from its own cache, not from our folder).
        return {**form, "vector": FILE_VECTOR, "vector_file": str(stored_copy(self.ctx.files, vector[len(STORED):]))}

    def on_page_load(self, browser_id: str | None, request: gr.Request = None) -> dict[str, Any]:
        """Give a new browser its session; with ``?run=ID`` in the address, open that run. On a server, page
        loads are rate-limited per address and ``?run=`` as Open run is (it reads a whole run)."""
        address = getattr(getattr(request, "client", None), "host", None)
        run = (getattr(request, "query_params", None) or {}).get("run") if request is not None else None
        try:
            if self.ctx.page_rate is not None:
                self.ctx.page_rate.admit(None, address)
            sid, token = self.ctx.session_for(browser_id)
            if run and self.ctx.rate is not None:
                self.ctx.rate.admit(self.ctx.session_of(browser_id), address)
        except UserError as err:
            return {"status": f"**{escape(str(err))}**"}
        try:
            out: dict[str, Any] = {"browser_id": token, "history": self.history(token)}
        except UserError as err:  # the log cannot be read: the page works, runs are not saved
            return {"history": [], "status": f"**The session log is not available:** {escape(str(err))}"}
        if self.ctx.store.write_error:  # the last write failed (nothing is written to find out: see session_for)
            out["status"] = f"**The session log is not available:** {escape(self.ctx.store.write_error)}"
        if run:
            try:
                out.update(self.open_run(str(run), token))
            except gr.Error as err:
                out["status"] = f"**Cannot open the linked run:** {escape(err.message)}"
        return out

    def export_session(self, browser_id: str | None, fmt: str) -> dict:
        sid = self.ctx.session_of(browser_id)
        if sid is None:
            raise gr.Error("this browser has no runs yet", print_exception=False)
        folder = session_folder(self.ctx.files, sid)
        try:
            paths = export(self.ctx.store, folder / f"steer-ui-session.{'jsonl' if fmt == 'jsonl' else 'csv'}", fmt,
                           session_id=sid, pseudonymous=True)
        except UserError as err:
            raise shown(err) from None
        return gr.update(value=[str(p) for p in paths], visible=True)

    # --- layout and wiring -----------------------------------------------------------------------
    def layout(self, ui: Components) -> None:
        gr.Markdown("Runs from this browser, newest first. Click a row to open it.")
        ui.add("history", gr.Dataframe(headers=HEADERS, datatype=["str"] * len(HEADERS),
                                       interactive=False, label="Runs", wrap=True, column_widths=WIDTHS))
        with gr.Row():
            ui.add("run_id", gr.Textbox(label="Run id", scale=3))
            ui.add("open_btn", gr.Button("Open", scale=1))
            ui.add("refresh_btn", gr.Button("Refresh", scale=1))
        with gr.Row():
            ui.add("export_jsonl", gr.Button("Export session (JSONL)"))
            ui.add("export_csv", gr.Button("Export session (CSV)"))
        ui.add("exported", gr.File(label="Export", file_count="multiple", interactive=False, visible=False))

    def wire(self, ui: Components, demo: gr.Blocks) -> None:
        opened = ui.outputs(OPENED)
        to_generate = {"fn": lambda: gr.Tabs(selected="generate"), "outputs": ui["tabs"], "api_visibility": "private",
                       "queue": False}
        shown_after(ui["open_btn"].click(
            by_name(self.open_run, OPENED), inputs_kwargs=ui.inputs(["run_id", "browser_id"]), outputs=opened,
            api_name="open_run", validator=rate_validator(self.ctx.rate, self.ctx.session_of)).then(**to_generate), ui)
        shown_after(ui["history"].select(_selected_run, inputs=ui["history"], outputs=ui["run_id"],
                                         api_visibility="private", queue=False).then(
            by_name(self.open_run, OPENED), inputs_kwargs=ui.inputs(["run_id", "browser_id"]), outputs=opened,
            api_visibility="private", validator=rate_validator(self.ctx.rate, self.ctx.session_of)).then(**to_generate),
            ui)
        refresh = {"inputs_kwargs": ui.inputs(["browser_id"]), "outputs": ui["history"], "api_visibility": "private",
                   "queue": False}
        ui["refresh_btn"].click(self.history, **refresh)
        for fmt in ("jsonl", "csv"):
            ui[f"export_{fmt}"].click(lambda browser_id, fmt=fmt: self.export_session(browser_id, fmt),
                                      inputs_kwargs=ui.inputs(["browser_id"]), outputs=ui["exported"],
                                      api_visibility="private")
        # Not queued: a page load is a log read, and a flood of them must not fill the queue visitors'
        # runs wait in (rate-limited per address in hosted mode, see on_page_load).
        shown_after(demo.load(by_name(self.on_page_load, PAGE_LOAD), inputs_kwargs=ui.inputs(["browser_id"]),
                              outputs=ui.outputs(PAGE_LOAD), api_visibility="private", queue=False), ui)

    def refresh_after(self, event: gr.events.Dependency, ui: Components) -> None:
        """Refresh the history table after ``event`` (a run or a sweep) finishes."""
        event.then(self.history, inputs_kwargs=ui.inputs(["browser_id"]), outputs=ui["history"],
                   api_visibility="private", queue=False)


def _selected_run(table, evt: gr.SelectData) -> str:
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    try:
        return str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])
    except (IndexError, KeyError):
        return ""
