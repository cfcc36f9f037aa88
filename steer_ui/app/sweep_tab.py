"""The Sweep tab: a small sweep (every question on every arm: the coefficients of the Generate tab's vector,
and arms of their own such as ``budget:min=64``) with the Generate tab's settings as its template; each run
is logged and shows in History. Big sweeps: ``python -m steer_ui sweep``."""

from __future__ import annotations

import secrets
import threading
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr

from steer_ui.app.context import AppContext, shown
from steer_ui.app.downloads import sweep_folder
from steer_ui.app.generate_tab import FORM, GenerateTab
from steer_ui.app.hosted import rate_validator
from steer_ui.app.wiring import Components, by_name
from steer_ui.engine.knobs import BY_NAME, parse_coefs
from steer_ui.errors import UserError
from steer_ui.experiments.arms import BASELINE, arms_from_specs

MAX_SWEEP_QUESTIONS = 50  # the Sweep tab is for a quick look; the CLI runs big sweeps
ARMS_PLACEHOLDER = "baseline\nbudget:min=64\nreconsideration=4@16-19/at-end:8"
SWEEP_INPUTS = ("questions", "questions_file", "sweep_coefs", "sweep_arms",
                *(n for n in FORM if n not in ("prompt", "coefs")))
SWEEP_OUTPUTS = ("sweep_table", "sweep_plot", "sweep_files", "sweep_status", "sweep_pareto")


class SweepTab:
    def __init__(self, ctx: AppContext, generate: GenerateTab):
        self.ctx, self.generate = ctx, generate

    def sweep(self, questions: str = "yesno:8", questions_file: str | None = None, sweep_coefs: str = "-4, 0, 4",
              sweep_arms: str = "", vector_file: str | None = None, browser_id: str | None = None,
              request: gr.Request = None, progress: gr.Progress | None = gr.Progress(),  # noqa: B008
              **form: Any) -> dict:
        from steer_ui.experiments.questions import load_questions
        from steer_ui.experiments.sweep import SweepConfig, run_sweep

        form = {**form, "vector_file": vector_file}
        try:
            if self.ctx.limits is not None:  # sizes first: nothing below is parsed or read past a cap
                self.ctx.limits.check_text(questions, "questions")
                self.ctx.limits.check_text(sweep_coefs, "coefficients")
                self.ctx.limits.check_text(sweep_arms, "arms")
                self.ctx.limits.check_file(questions_file, "questions file")
            most = self.ctx.limits.sweep_questions if self.ctx.limits is not None else MAX_SWEEP_QUESTIONS
            # Sizes are checked before a set is generated or a file read past the cap; a hosted visitor may
            # name generated sets or upload a file, never give a path on the server.
            if questions_file:
                qs = load_questions(questions_file, max_count=most,
                                    name=Path(questions_file).name if self.ctx.hosted else None)
            else:
                qs = load_questions((questions or "").strip() or "yesno:8", max_count=most,
                                    allow_files=not self.ctx.hosted)
            if self.ctx.limits is not None:
                self.ctx.limits.check_questions(qs)
            coefs = parse_coefs(sweep_coefs) if (sweep_coefs or "").strip() else ()
            specs = [line.strip() for line in (sweep_arms or "").splitlines() if line.strip()]
            # Counted before any arm is parsed or its vector read: each arm but the baseline is a row.
            steered_rows = sum(1 for c in coefs if c != 0) + sum(1 for a in specs if a.lower() != BASELINE)
            if self.ctx.limits is not None and steered_rows > self.ctx.limits.steered_rows:
                raise UserError(f"{steered_rows} steered arms; this server's limit is "
                                f"{self.ctx.limits.steered_rows} steered rows")
            template = self.generate.settings({**form, "prompt": "(each question)", "vector": None, "coefs": (),
                                               "rows": ""})
            # The form's layers and scope are the coefficients' and those of any vector arm without its own.
            vector, layers, scope = (self.generate.shared_steering(form) if any(coefs) else
                                     (None, BY_NAME["layers"].read(form.get("layers") or None),
                                      BY_NAME["scope"].read(form.get("scope") or None)))
            arms = arms_from_specs(specs, self.generate.vectors.resolver(vector_file), layers, scope)
            cfg = SweepConfig(questions=qs, coefs=coefs, template=template, vector=vector, layers=layers,
                              scope=scope, extra_arms=tuple(arms),
                              label={"title": f"{self.ctx.lm.model_id} | {vector.name if vector else 'arms'}"})
            cfg.validate()
            if self.ctx.limits is not None:  # each question's run as a whole, as a single run is checked
                self.ctx.limits.check_settings(cfg.run_settings(qs[0], 0, cfg.arms))
            sid = self.ctx.session_for(browser_id)[0]
            self.ctx.check_model_time(sid, request)
            self.ctx.logged_session(sid)
            out = sweep_folder(self.ctx.files, secrets.token_hex(8))

            def report(done: int, total: int) -> None:
                if progress is not None:
                    progress((done, total), desc="sweeping", unit="questions")

            cancel = threading.Event()
            self.ctx.sweeps[getattr(request, "session_hash", None) or sid] = cancel
            try:
                if self.ctx.cluster is not None:  # --ray: workers there load the model by its name
                    from steer_ui.experiments.cluster import run_sweep_on_ray

                    result = run_sweep_on_ray(cfg, out, self.ctx.lm.model_id, self.ctx.cluster, self.ctx.device,
                                              self.ctx.dtype, self.ctx.store, report, session_id=sid, cancel=cancel)
                else:  # the model is held per question's decode (grading leaves it to others), its time charged
                    result = run_sweep(self.ctx.lm, cfg, out, self.ctx.store, report, session_id=sid, cancel=cancel,
                                       probe_positions=self.ctx.limits.probe_positions if self.ctx.limits else None,
                                       hold_model=lambda: self.ctx.hold_model(sid, request))
            finally:
                self.ctx.sweeps.pop(getattr(request, "session_hash", None) or sid, None)
        except UserError as err:
            raise shown(err) from None
        return self._shown(result, cfg, len(qs))

    def stop(self, request: gr.Request = None) -> None:
        """Stop this page's sweep within a step (the runs so far are kept, and summarised)."""
        cancel = self.ctx.sweeps.get(getattr(request, "session_hash", None) or "")
        if cancel is not None:
            cancel.set()

    @staticmethod
    def _shown(result, cfg, n_questions: int) -> dict:
        import plotly.graph_objects as go

        from steer_ui.experiments.sweep_report import figure as sweep_figure
        from steer_ui.experiments.sweep_report import pareto_figure, summary_rows

        rows = summary_rows(result.summary)[1]
        status = (f"**finished**: {n_questions} questions x {len(cfg.arms)} arms, {result.ran} runs, logged "
                  "in this browser's History." + "".join(f"  \n{escape(n)}" for n in result.notes))
        per_coef = [s for s in result.summary if s.coef is not None]
        return {"sweep_table": rows,
                "sweep_plot": go.Figure(sweep_figure(per_coef, cfg.label["title"])) if len(per_coef) > 1 else None,
                "sweep_pareto": go.Figure(pareto_figure(result.summary, result.intervals, cfg.label["title"])),
                "sweep_files": [str(p) for p in result.files if p.suffix in (".csv", ".html", ".png", ".json")],
                "sweep_status": status}

    def layout(self, ui: Components) -> None:
        from steer_ui.experiments.sweep_report import summary_rows

        where = (f" The questions run on Ray workers ({self.ctx.cluster.address or 'a local Ray instance'})."
                 if self.ctx.cluster is not None else "")
        gr.Markdown("Run every question on every arm with the decoding and probe chosen on the Generate tab (the "
                    "question replaces the prompt): the coefficients of the Generate tab's vector (with its layers "
                    "and scope; 0 is the baseline) and arms of their own, one per line. Each question runs all its "
                    "arms in one batch; each run is logged in History. Big sweeps: `python -m steer_ui sweep`."
                    + where)
        with gr.Row():
            ui.add("questions", gr.Dropdown(["yesno:8", "yesno:20", "wordproblems:8"], value="yesno:8",
                                            allow_custom_value=True, label="Questions",
                                            info="a generated set (name:size)"))
            ui.add("questions_file", gr.File(label="or a questions file (.jsonl)", file_types=[".jsonl"],
                                             type="filepath"))
            ui.add("sweep_coefs", gr.Textbox("-4, 0, 4", label="Sweep coefficients",
                                             info="of the Generate tab's vector; 0 is the baseline; may be empty"))
            ui.add("sweep_arms", gr.Textbox("", label="Arms", lines=3, placeholder=ARMS_PLACEHOLDER,
                                            info="one per line: baseline, a budget, a vector row, or both"))
        with gr.Row():
            ui.add("sweep_btn", gr.Button("Run sweep", variant="primary"))
            ui.add("sweep_stop_btn", gr.Button("Stop sweep", variant="stop"))
        ui.add("sweep_status", gr.Markdown("", label="Sweep status"))
        ui.add("sweep_table", gr.Dataframe(headers=summary_rows([])[0], interactive=False, label="Summary",
                                           wrap=True))
        with gr.Row():
            ui.add("sweep_pareto", gr.Plot(label="Accuracy against chain-of-thought tokens, per arm"))
            ui.add("sweep_plot", gr.Plot(label="Accuracy and chain-of-thought length against the coefficient"))
        ui.add("sweep_files", gr.File(label="Sweep files", file_count="multiple", interactive=False))

    def wire(self, ui: Components) -> gr.events.Dependency:
        ui["sweep_stop_btn"].click(self.stop, api_name="stop_sweep", queue=False)
        return ui["sweep_btn"].click(
            by_name(self.sweep, SWEEP_OUTPUTS), inputs_kwargs=ui.inputs([*SWEEP_INPUTS, "browser_id"]),
            outputs=ui.outputs(SWEEP_OUTPUTS), api_name="sweep",
            validator=rate_validator(self.ctx.rate, self.ctx.session_of),
            concurrency_id="gpu", concurrency_limit=1)
