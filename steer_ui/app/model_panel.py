"""The model panel: what is loaded, and loading another model for everyone (waits for the running job)."""

from __future__ import annotations

from html import escape

import gradio as gr

from steer_ui.app.context import AppContext, shown
from steer_ui.app.hosted import rate_validator
from steer_ui.app.vector_panel import NO_VECTOR, VectorPanel
from steer_ui.app.wiring import Components, by_name
from steer_ui.engine import worker
from steer_ui.errors import UserError
from steer_ui.model.loading import load_model

LOADED = ("model_info", "vector", "probe_suffix", "layers", "layer_info", "fast_timer")


class ModelPanel:
    def __init__(self, ctx: AppContext, vectors: VectorPanel):
        self.ctx, self.vectors = ctx, vectors

    def markdown(self) -> str:
        lm = self.ctx.lm
        p = lm.profile
        think = f"thinking block `{p.think_open}`...`{p.think_close}`" if p.has_thinking else "no thinking block"
        note = f" - {escape(p.note)}" if p.note else ""
        return (f"**{escape(lm.model_id)}** | {lm.n_layers} layers | hidden {lm.hidden_size} | "
                f"{lm.device.type} | {str(lm.dtype).removeprefix('torch.')} | {think} | "
                f"suggested layers {p.layer_band[0]}-{p.layer_band[1]}{note}" + self._fast_status())

    def _fast_status(self) -> str:
        fast = self.ctx.lm.fast
        if fast is None:
            return "  \ndecoding eagerly" + ("" if self.ctx.lm.device.type == "cpu" else " (no compiled steps)")
        return "".join(f"  \n{escape(line)}" for line in fast.status())

    def tick(self) -> dict:
        """The model line again while compiled steps warm (the timer stops once they are ready)."""
        fast = self.ctx.lm.fast
        return {"model_info": self.markdown(), "fast_timer": gr.Timer(active=bool(fast and fast.warming_soon()))}

    def load(self, model: str, browser_id: str | None = None,
             progress: gr.Progress | None = gr.Progress()) -> dict:  # noqa: B008
        """Load another model for everyone (``browser_id``: for the rate limit)."""
        model = (model or "").strip()
        if not model:
            raise gr.Error("type a hub id (e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B), a local folder or "
                           "a .gguf file", print_exception=False)
        if progress is not None:
            progress(None, desc=f"loading {model} ...")
        try:
            if worker.ACTIVE and model != self.ctx.lm.model_id:
                raise UserError(f"on ZeroGPU the model is fixed at startup: this Space runs {self.ctx.lm.model_id} "
                                "(set STEER_UI_MODEL in the Space's settings to change it)")
            if self.ctx.limits is not None:
                self.ctx.limits.check_model(model, self.ctx.startup_model)
            with self.ctx.model_lock:
                lm = load_model(model, device=self.ctx.device, dtype=self.ctx.dtype)
                self.ctx.prepare(lm)
                self.ctx.lm = lm
        except UserError as err:
            raise shown(err) from None
        return {"model_info": self.markdown(), "vector": gr.update(choices=self.vectors.choices(), value=NO_VECTOR),
                "fast_timer": gr.Timer(active=bool(self.ctx.lm.fast and self.ctx.lm.fast.warming_soon())),
                "probe_suffix": self.ctx.lm.profile.probe_suffix, "layers": "",
                "layer_info": self.vectors.layer_table(None)}

    def layout(self, ui: Components) -> None:
        with gr.Accordion("Model", open=False):
            ui.add("model_info", gr.Markdown(self.markdown(), label="Loaded model"))
            fast = self.ctx.lm.fast
            ui.add("fast_timer", gr.Timer(5, active=bool(fast and fast.warming_soon())))
            with gr.Row():
                ui.add("model", gr.Textbox(label="Load another model", scale=4,
                                           placeholder="hub id, local folder or .gguf file"))
                ui.add("load_btn", gr.Button("Load", scale=1))

    def wire(self, ui: Components) -> None:
        ui["fast_timer"].tick(by_name(self.tick, ("model_info", "fast_timer")),
                              outputs=ui.outputs(("model_info", "fast_timer")), api_visibility="private", queue=False)
        ui["load_btn"].click(by_name(self.load, LOADED), inputs_kwargs=ui.inputs(["model", "browser_id"]),
                             outputs=ui.outputs(LOADED), api_name="load_model", concurrency_id="gpu",
                             concurrency_limit=1, validator=rate_validator(self.ctx.rate, self.ctx.session_of))
