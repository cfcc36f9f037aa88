"""The Sweep tab: a small sweep (every question at every coefficient) with the Generate tab's settings as its
template; each run is logged and shows in History. Big sweeps: ``python -m steer_ui sweep``."""

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
from steer_ui.engine.knobs import parse_coefs
from steer_ui.engine.scope import Scope
from steer_ui.errors import UserError

MAX_SWEEP_QUESTIONS = 50  # the Sweep tab is for a quick look; the CLI runs big sweeps
SWEEP_INPUTS = ("questions", "questions_file", "sweep_coefs", *(n for n in FORM if n not in ("prompt", "coefs")))
SWEEP_OUTPUTS = ("sweep_table", "sweep_plot", "sweep_files", "sweep_status")
TABLE_HEADERS = ["coef", "n", "accuracy", "95% CI", "CoT tokens", "CoT tokens (correct)", "final log-odds to gold",
                 "forced accuracy", "final P(gold)"]


class SweepTab:
    def __init__(self, ctx: AppContext, generate: GenerateTab):
        self.ctx, self.generate = ctx, generate

    def sweep(self, questions: str = "yesno:8", questions_file: str | None = None, sweep_coefs: str = "-4, 0, 4",
              vector_file: str | None = None, browser_id: str | None = None, request: gr.Request = None,
              progress: gr.Progress | None = gr.Progress(), **form: Any) -> dict:  # noqa: B008
        from steer_ui.experiments.questions import load_questions
        from steer_ui.experiments.sweep import SweepConfig, run_sweep

        form = {**form, "vector_file": vector_file}
        try:
            if self.ctx.limits is not None:  # sizes first: nothing below is parsed or read past a cap
                self.ctx.limits.check_text(questions, "questions")
                self.ctx.limits.check_text(sweep_coefs, "coefficients")
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
            coefs = parse_coefs(sweep_coefs)
            steered_rows = sum(1 for c in coefs if c != 0)
            if self.ctx.limits is not None and steered_rows > self.ctx.limits.steered_rows:
                raise UserError(f"{steered_rows} steered coefficients; this server's limit is "
                                f"{self.ctx.limits.steered_rows} steered rows")
            template = self.generate.settings({**form, "prompt": "(each question)", "vector": None, "coefs": (),
                                               "rows": ""})
            vector, layers, scope = self.generate.shared_steering(form) if any(coefs) else (None, None, Scope())
            cfg = SweepConfig(questions=qs, coefs=coefs, template=template, vector=vector, layers=layers,
                              scope=scope, label={"title": f"{self.ctx.lm.model_id} | "
                                                           f"{vector.name if vector else 'no vector'}"})
            cfg.validate()
            sid = self.ctx.session_for(browser_id)[0]
            self.ctx.check_model_time(sid, request)
            self.ctx.logged_session(sid)
            out = sweep_folder(self.ctx.files, secrets.token_hex(8))

            def report(done: int, total: int) -> None:
                if progress is not None:
                    progress((done, total), desc="sweeping", unit="questions")

            cancel = threading.Event()
            self.ctx.sweeps[getattr(request, "session_hash", None) or sid] = cancel
            try:  # the model is held per question's decode (grading leaves it to others), its time charged
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

        table = [[f"{s.coef:+g}", s.n, f"{s.accuracy:.0%}", f"{s.ci_low:.0%}-{s.ci_high:.0%}",
                  f"{s.mean_tokens:.1f}", f"{s.mean_tokens_correct:.1f}" if s.mean_tokens_correct is not None else "-",
                  f"{s.mean_final_logodds_gold:+.2f}" if s.mean_final_logodds_gold is not None else "-",
                  f"{s.forced_accuracy:.0%}" if s.forced_accuracy is not None else "-",
                  f"{s.mean_final_p_gold:.3f}" if s.mean_final_p_gold is not None else "-"] for s in result.summary]
        status = (f"**finished**: {n_questions} questions x {len(cfg.coefs)} coefficients, {result.ran} runs, logged "
                  "in this browser's History." + "".join(f"  \n{escape(n)}" for n in result.notes))
        return {"sweep_table": table, "sweep_plot": go.Figure(sweep_figure(result.summary, cfg.label["title"])),
                "sweep_files": [str(p) for p in result.files if p.suffix in (".csv", ".html", ".png")],
                "sweep_status": status}

    def layout(self, ui: Components) -> None:
        gr.Markdown("Run every question at every coefficient with the vector, layers, scope, decoding and probe "
                    "chosen on the Generate tab (the question replaces the prompt; 0 is the baseline); each run is "
                    "logged in History. Big sweeps: `python -m steer_ui sweep` (see README).")
        with gr.Row():
            ui.add("questions", gr.Dropdown(["yesno:8", "yesno:20", "wordproblems:8"], value="yesno:8",
                                            allow_custom_value=True, label="Questions",
                                            info="a generated set (name:size)"))
            ui.add("questions_file", gr.File(label="or a questions file (.jsonl)", file_types=[".jsonl"],
                                             type="filepath"))
            ui.add("sweep_coefs", gr.Textbox("-4, 0, 4", label="Sweep coefficients", info="0 is the baseline"))
        with gr.Row():
            ui.add("sweep_btn", gr.Button("Run sweep", variant="primary"))
            ui.add("sweep_stop_btn", gr.Button("Stop sweep", variant="stop"))
        ui.add("sweep_status", gr.Markdown("", label="Sweep status"))
        ui.add("sweep_table", gr.Dataframe(headers=TABLE_HEADERS, interactive=False, label="Summary"))
        ui.add("sweep_plot", gr.Plot(label="Accuracy and chain-of-thought length against the coefficient"))
        ui.add("sweep_files", gr.File(label="Sweep files", file_count="multiple", interactive=False))

    def wire(self, ui: Components) -> gr.events.Dependency:
        ui["sweep_stop_btn"].click(self.stop, api_name="stop_sweep", queue=False)
        return ui["sweep_btn"].click(
            by_name(self.sweep, SWEEP_OUTPUTS), inputs_kwargs=ui.inputs([*SWEEP_INPUTS, "browser_id"]),
            outputs=ui.outputs(SWEEP_OUTPUTS), api_name="sweep",
            validator=rate_validator(self.ctx.rate, self.ctx.session_of),
            concurrency_id="gpu", concurrency_limit=1)
