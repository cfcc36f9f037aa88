"""Training a steering vector from examples in the dashboard (the vector panel's "Train from examples"):
the loss chart fills in as it trains, Stop ends it keeping the best vector so far, and the result is
selected as the file vector like a computed one.

Training holds the model like a generation (``model_lock``, one GPU slot). On a server the examples,
their texts and the steps are capped before any of them is encoded (``Limits``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from steer_ui.app.context import AppContext, shown
from steer_ui.app.downloads import vector_copy
from steer_ui.app.hosted import rate_validator
from steer_ui.app.request_thread import start_in_request_context
from steer_ui.app.vector_panel import FILE_VECTOR, VectorPanel
from steer_ui.app.wiring import Components, by_name
from steer_ui.errors import UserError
from steer_ui.jsonl import parse_lines
from steer_ui.vectors.layers import parse_layers
from steer_ui.vectors.training import DEFAULT_LR, DEFAULT_STEPS

EXAMPLES_PLACEHOLDER = ('{"prompt": "Why is the sky blue?", "completion": "In short: air scatters blue light most."}\n'
                        '{"prompt": "What is 12 times 12?", "completion": "In short: 144."}')
TRAINED = ("vector", "vector_file", "layer_info", "layers", "train_chart", "train_status")
_DONE = object()


class TrainPanel:
    def __init__(self, ctx: AppContext, vectors: VectorPanel):
        self.ctx, self.vectors = ctx, vectors
        self.stops: dict[str, threading.Event] = {}  # by page: what Stop training stops

    # --- handlers ---------------------------------------------------------------------------------
    def train(self, examples_text: str = "", examples_file: str | None = None, train_layers: str = "10-13",
              train_steps: int | None = None, train_lr: float | None = None, browser_id: str | None = None,
              request: gr.Request = None) -> Iterator[dict[str, Any]]:
        """Train, yielding the loss chart as it grows; the last update selects the trained vector."""
        from steer_ui.vectors.training import TrainConfig, planned_positions

        try:
            lm = self.ctx.lm
            if self.ctx.limits is not None:
                self.ctx.limits.check_text(train_layers, "layers to train")
            layers = parse_layers(train_layers or "all", lm.n_layers) or tuple(range(lm.n_layers))
            given = {"steps": _number(train_steps, int, "steps"), "lr": _number(train_lr, float, "learning rate")}
            config = TrainConfig(layers, **{k: v for k, v in given.items() if v is not None})
            if self.ctx.limits is not None and config.steps > self.ctx.limits.train_steps:
                raise UserError(f"{config.steps} steps; this server's limit is {self.ctx.limits.train_steps}")
            examples = self._examples(examples_text, examples_file)
            config.validate(lm, len(examples))
            if self.ctx.limits is not None:
                self.ctx.limits.check_training(planned_positions(lm, examples, config))
            sid = self.ctx.session_of(browser_id)
            self.ctx.check_model_time(sid, request)
        except UserError as err:
            raise shown(err) from None
        page = getattr(request, "session_hash", None) or "local"
        stop = self.stops[page] = threading.Event()
        points: list = []
        try:
            for update in self._run(examples, config, stop, points, self.ctx.hold_model(sid, request)):
                yield update
        finally:
            # Stop, a cancelled API job or a closed tab (Gradio closes this generator): the training
            # thread ends within a step and gives the model back, whoever is waiting for it.
            stop.set()
            self.stops.pop(page, None)

    def _run(self, examples, config, stop: threading.Event, points: list, hold_model) -> Iterator[dict[str, Any]]:
        from steer_ui.vectors.training import train_vector

        inbox: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                with hold_model:
                    inbox.put(train_vector(self.ctx.lm, examples, config, "trained", progress=inbox.put,
                                           cancel=stop))
            except BaseException as err:  # noqa: BLE001 - shown to the visitor below
                inbox.put(err)
            finally:
                inbox.put(_DONE)

        start_in_request_context(work, "steer-ui-train")
        result = None
        while (item := inbox.get()) is not _DONE:
            if isinstance(item, UserError):
                raise shown(item)
            if isinstance(item, BaseException):
                raise gr.Error(f"training failed: {type(item).__name__}: {item}", print_exception=False)
            if hasattr(item, "vector"):
                result = item
                continue
            points.append(item)
            yield {"train_chart": loss_figure(points), "train_status": progress_text(item)}
        out = vector_copy(self.ctx.files, result.vector)
        yield {"vector": gr.update(value=FILE_VECTOR), "vector_file": str(out),
               "layer_info": self.vectors.layer_table(result.vector),
               "layers": result.vector.metadata["suggested_band"], "train_chart": loss_figure(points),
               "train_status": result_text(result)}

    def stop(self, request: gr.Request = None) -> None:
        event = self.stops.get(getattr(request, "session_hash", None) or "local")
        if event is not None:
            event.set()

    def _examples(self, text: str, file: str | None) -> list:
        from steer_ui.vectors.examples import parse_example, read_examples_jsonl

        limits = self.ctx.limits
        max_chars = limits.pair_chars if limits is not None else None
        if limits is not None:
            limits.check_file(file, "examples file")
            most = limits.train_examples * (3 * limits.pair_chars + 64)
            if len(text or "") > most:
                raise UserError(f"the examples text is {len(text):,} characters; this server's limit is {most:,}")
        if file:
            examples = read_examples_jsonl(file, max_chars, Path(file).name if limits is not None else None)
            self._check_count(len(examples))
            return examples
        objects = parse_lines(text or "", "examples")
        self._check_count(len(objects))
        examples = [parse_example(obj, where, max_chars) for where, obj in objects]
        if len({e.objective for e in examples}) > 1:
            raise UserError("the examples mix completion and chosen/rejected objects; use one kind")
        return examples

    def _check_count(self, n: int) -> None:
        if self.ctx.limits is not None and n > self.ctx.limits.train_examples:
            raise UserError(f"{n} examples; this server's limit is {self.ctx.limits.train_examples}")

    # --- layout and wiring -----------------------------------------------------------------------
    def layout(self, ui: Components) -> None:
        with gr.Accordion("Train a vector from examples", open=False):
            gr.Markdown("One bias per layer learned by gradient descent, the model's weights frozen: "
                        '`{"prompt", "completion"}` lines make the completion likely, `{"prompt", "chosen", '
                        '"rejected"}` lines prefer chosen. 20% is held out for early stopping.')
            ui.add("examples_text", gr.Textbox(label="Examples (JSONL)", lines=4, placeholder=EXAMPLES_PLACEHOLDER))
            ui.add("examples_file", gr.File(label="or an examples file (.jsonl)", file_types=[".jsonl"],
                                            type="filepath", height=90))
            with gr.Row():
                ui.add("train_layers", gr.Textbox("10-13", label="Layers to train"))
                ui.add("train_steps", gr.Number(DEFAULT_STEPS, label="Steps", precision=0, minimum=1))
                ui.add("train_lr", gr.Number(DEFAULT_LR, label="Learning rate", minimum=0))
            with gr.Row():
                ui.add("train_btn", gr.Button("Train vector"))
                ui.add("train_stop_btn", gr.Button("Stop training", variant="stop"))
            ui.add("train_status", gr.Markdown(""))
            ui.add("train_chart", gr.Plot(label="Training loss"))

    def wire(self, ui: Components) -> None:
        ui["train_stop_btn"].click(self.stop, api_name="stop_training", queue=False)
        ui["train_btn"].click(
            by_name(self.train, TRAINED), outputs=ui.outputs(TRAINED), api_name="train_vector",
            inputs_kwargs=ui.inputs(["examples_text", "examples_file", "train_layers", "train_steps", "train_lr",
                                     "browser_id"]),
            concurrency_id="gpu", concurrency_limit=1, validator=rate_validator(self.ctx.rate, self.ctx.session_of))


def _number(value: object, kind: type, what: str) -> int | float | None:
    """A blank box is None (the default); anything else must read as ``kind``."""
    if value in (None, ""):
        return None
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a number, got {str(value)[:40]!r}") from None
    if kind is int and number != float(value):
        raise UserError(f"{what} must be a whole number, got {value}")
    return number


def loss_figure(points: list):
    """Train loss per step and held-out loss at each evaluation, as a plotly figure."""
    import plotly.graph_objects as go

    held = [p for p in points if p.heldout_loss is not None]
    fig = go.Figure([
        go.Scatter(x=[p.step for p in points], y=[p.train_loss for p in points], name="train", mode="lines",
                   line={"color": "#2563eb", "width": 1}),
        go.Scatter(x=[p.step for p in held], y=[p.heldout_loss for p in held], name="held-out",
                   mode="lines+markers", line={"color": "#dc2626", "width": 2}),
    ])
    fig.update_layout(height=260, margin={"l": 48, "r": 16, "t": 24, "b": 36}, xaxis_title="step",
                      yaxis_title="loss", legend={"orientation": "h", "y": 1.15}, plot_bgcolor="#ffffff")
    return fig


def progress_text(p) -> str:
    held = f", held-out {p.heldout_loss:.3f}" if p.heldout_loss is not None else ""
    return f"training: step {p.step} of {p.steps}, train loss {p.train_loss:.3f}{held}"


def result_text(result) -> str:
    held = (f"; held-out loss {result.heldout_loss:.3f} (unsteered {result.baseline_heldout:.3f})"
            if result.heldout_loss is not None else "")
    return (f"**Trained** ({result.stopped}, {len(result.curve)} steps, best at step {result.best_step}{held}): "
            "selected as the vector, at its learned scale (coefficient 1 is what was trained).")
