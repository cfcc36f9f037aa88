"""The steering-vector panel of the Generate tab: choose a preset, upload a file, or compute one from pairs;
see its per-layer separation; and how vector names in the form become vectors.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from html import escape
from pathlib import Path

import gradio as gr

from steer_ui.app.context import AppContext, shown
from steer_ui.app.downloads import stored_copy, vector_copy, vector_handle
from steer_ui.app.hosted import rate_validator
from steer_ui.app.request_thread import start_in_request_context
from steer_ui.app.wiring import Components, by_name
from steer_ui.engine import worker
from steer_ui.errors import UserError
from steer_ui.jsonl import parse_lines
from steer_ui.vectors.contrastive import METHODS, parse_pair, planned_positions, read_pairs_jsonl
from steer_ui.vectors.files import load_vector, max_values_for
from steer_ui.vectors.layers import parse_layers
from steer_ui.vectors.presets import preset_vector_path, preset_vectors
from steer_ui.vectors.vector import SteeringVector

NO_VECTOR = "(none)"
STORED = "stored:"  # how the form names a vector copy the server keeps (see form_name)
FILE_VECTOR = "uploaded or computed file"
FILE_NAMES = (FILE_VECTOR, "file")  # what names the uploaded file in the form (in rows: 'file=-6')
PAIRS_PLACEHOLDER = ('{"positive": "Wait, let me double-check that step.", '
                     '"negative": "That step is clearly right, moving on."}\n'
                     '{"positive": "Hmm, maybe I made a mistake.", "negative": "No mistakes here."}')


class _Stopped(Exception):
    """The visitor of a vector computation went away."""


class VectorPanel:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    # --- names -> vectors -------------------------------------------------------------------------
    def presets(self) -> list[str]:
        """Shipped vectors for the loaded model (only the bundled model has them)."""
        return preset_vectors(self.ctx.lm.profile.key)

    def choices(self) -> list[str]:
        return [NO_VECTOR, *self.presets(), FILE_VECTOR]

    def resolver(self, vector_file: str | None) -> Callable[[str], SteeringVector]:
        """How the form's vector names become vectors: a preset, the uploaded file ('file'), or a vector
        file this server wrote (a reopened run's stored copy); any path only on a local install."""
        def resolve(name: str) -> SteeringVector:
            name = name.strip()
            if name in FILE_NAMES:
                if not vector_file:
                    raise UserError("upload a vector file (.gguf, .safetensors, .pt, .npy) or compute one from pairs")
                return self.uploaded(vector_file)
            if name in self.presets():
                return self.preset(name)
            if name.startswith(STORED):  # a copy this server made: named by its handle, never by a path
                path = stored_copy(self.ctx.files, name[len(STORED):])
                if path is None:
                    raise UserError(f"no stored vector {name[:40]!r} on this server (it is kept a while after "
                                    "its run is reopened or its vector made; reopen the run again)")
                return load_vector(path)
            path = Path(name).expanduser()
            if path.suffix and not self.ctx.hosted:  # a local install reads any vector file; a server none
                return load_vector(path)
            raise UserError(f"no preset vector {name[:60]!r} for {self.ctx.lm.model_id}; choose one of "
                            f"{', '.join(self.presets()) or '(none ship for this model)'}, 'file' (the uploaded "
                            "file) or upload one")
        return resolve

    def preset(self, name: str) -> SteeringVector:
        vector = load_vector(preset_vector_path(name, self.ctx.lm.profile.key))
        vector.name = name
        return vector

    def uploaded(self, path: str) -> SteeringVector:
        """An uploaded vector file. On a server it is checked before it is read: its size on disk, then its
        headers against what this model could use (layers x hidden size), and errors name it by its own
        file name, never by where the server keeps uploads."""
        limits = self.ctx.limits
        if limits is None:
            return load_vector(path)
        limits.check_file(path, "vector file")
        lm = self.ctx.lm
        return load_vector(path, max_values=max_values_for(lm.n_layers, lm.hidden_size), name=Path(path).name)

    def form_name(self, vector: SteeringVector) -> str:
        """How the form names ``vector`` when a logged run is reopened: its preset name if it is that
        preset exactly (metadata included: a forged copy is not the preset), else ``stored:<handle>`` for
        its copy written here (a server's paths never reach the page)."""
        if vector.name in self.presets():
            if self.preset(vector.name).content_hash() == vector.content_hash():
                return vector.name
        vector_copy(self.ctx.files, vector)
        return f"{STORED}{vector_handle(vector)}"

    # --- handlers ---------------------------------------------------------------------------------
    def info(self, vector: str | None, vector_file: str | None) -> dict:
        """The per-layer separation table and the suggested layers for the chosen vector."""
        try:
            vec = self.resolver(vector_file)(vector) if vector and vector != NO_VECTOR else None
            if vec is not None:
                vec.check_against(self.ctx.lm.n_layers, self.ctx.lm.hidden_size, None)
        except UserError as err:
            raise shown(err) from None
        if vec is None:
            return {"layer_info": self.layer_table(None), "layers": ""}
        band = vec.metadata.get("suggested_band") or "-".join(map(str, self.ctx.lm.profile.layer_band))
        return {"layer_info": self.layer_table(vec), "layers": band}

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
                browser_id: str | None = None, request: gr.Request = None,
                progress: gr.Progress | None = gr.Progress()) -> Iterator[dict]:  # noqa: B008
        """A vector from contrastive pairs, saved and selected as the file vector (``browser_id`` is for the
        rate limit, which counts this as a run). A generator: when its visitor goes away Gradio closes it,
        and the computation stops at its next batch and gives the model back."""
        try:
            if self.ctx.limits is not None:
                self.ctx.limits.check_file(pairs_file, "pairs file")
            pairs = self._pairs(pairs_text, pairs_file)
            if self.ctx.limits is not None and len(pairs) > self.ctx.limits.pairs:
                raise UserError(f"{len(pairs)} pairs; this server's limit is {self.ctx.limits.pairs}")
            lm = self.ctx.lm
            if self.ctx.limits is not None:
                self.ctx.limits.check_text(layers, "layers to compute")
            chosen = parse_layers(layers or "all", lm.n_layers) or tuple(range(lm.n_layers))
            if self.ctx.limits is not None:
                self.ctx.limits.check_vector_positions(planned_positions(lm, pairs))
            sid = self.ctx.session_of(browser_id)
            self.ctx.check_model_time(sid, request)
        except UserError as err:
            raise shown(err) from None
        stop = threading.Event()
        try:
            computed = yield from self._computed(pairs, chosen, method, stop, self.ctx.hold_model(sid, request),
                                                 progress)
        finally:
            stop.set()  # a closed tab or a cancelled job: the computation ends at its next batch
        out = vector_copy(self.ctx.files, computed.vector)
        yield {"vector": gr.update(value=FILE_VECTOR), "vector_file": str(out),
               "layer_info": self.layer_table(computed.vector), "layers": f"{computed.band[0]}-{computed.band[1]}"}

    def _computed(self, pairs, layers, method: str, stop: threading.Event, hold_model, progress):
        """Compute on a thread of its own (yielding nothing until it is done: Gradio's progress bar shows the
        texts read); ``stop`` ends it between batches."""
        inbox: queue.Queue = queue.Queue()

        def report(done: int, total: int) -> None:
            if stop.is_set():
                raise _Stopped
            if progress is not None:
                progress((done, total), desc="reading hidden states", unit="texts")

        def work() -> None:
            try:
                with hold_model:
                    inbox.put(worker.compute_vector(self.ctx.lm, pairs, layers, method, progress=report,
                                                    source="dashboard"))
            except BaseException as err:  # noqa: BLE001 - handed to the handler below
                inbox.put(err)

        start_in_request_context(work, "steer-ui-vector")
        while True:
            try:
                item = inbox.get(timeout=0.5)
                break
            except queue.Empty:
                yield {}  # a point where Gradio can close this generator when its visitor is gone
        if isinstance(item, UserError):
            raise shown(item)
        if isinstance(item, BaseException):
            raise gr.Error(f"computing the vector failed: {type(item).__name__}: {item}", print_exception=False)
        return item

    def _pairs(self, text: str, file: str | None) -> list:
        """The pairs typed or uploaded; on a server each text is capped (``Limits.pair_chars``) and an
        upload is named by its file name."""
        limits = self.ctx.limits
        max_chars = limits.pair_chars if limits is not None else None
        most = limits.pairs * (2 * limits.pair_chars + 64) if limits is not None else None  # 64: the JSON
        if most is not None and len(text or "") > most:
            raise UserError(f"the pairs text is {len(text):,} characters; this server's limit is {most:,} "
                            f"({limits.pairs} pairs of {limits.pair_chars:,} characters a text)")
        if file:
            return read_pairs_jsonl(file, max_chars, Path(file).name if limits is not None else None)
        try:
            return [parse_pair(obj, where, max_chars) for where, obj in parse_lines(text or "", "pairs")]
        except UserError as err:
            raise UserError(f'{err}: write one {{"positive": "...", "negative": "..."}} per line') from None

    # --- layout and wiring -----------------------------------------------------------------------
    def layout(self, ui: Components) -> None:
        with gr.Group():
            ui.add("vector", gr.Dropdown(self.choices(), value=NO_VECTOR, label="Steering vector"))
            ui.add("layer_info", gr.HTML(self.layer_table(None), label="Separation by layer"))

    def sources_layout(self, ui: Components) -> None:
        """Where a vector comes from besides the presets: a file, or pairs computed here (below the run's
        controls: used less often than the presets, and tall when open)."""
        with gr.Accordion("Upload a vector file (.gguf, .safetensors, .pt, .npy)", open=False):
            ui.add("vector_file", gr.File(label="Vector file", type="filepath",
                                          file_types=[".gguf", ".safetensors", ".pt", ".pth", ".npy", ".npz"]))
        with gr.Accordion("Compute a vector from contrastive pairs", open=False):
            ui.add("pairs_text", gr.Textbox(label="Pairs (JSONL)", lines=4, placeholder=PAIRS_PLACEHOLDER))
            ui.add("pairs_file", gr.File(label="or a pairs file (.jsonl)", file_types=[".jsonl", ".json"],
                                         type="filepath", height=90))
            with gr.Row():
                ui.add("method", gr.Dropdown(list(METHODS), value="mean_diff", label="Method"))
                ui.add("compute_layers", gr.Textbox(label="Layers to compute", value="all"))
            ui.add("compute_btn", gr.Button("Compute vector"))

    def wire(self, ui: Components) -> None:
        info = ("layer_info", "layers")
        for trigger in (ui["vector"].change, ui["vector_file"].upload):
            trigger(by_name(self.info, info), inputs_kwargs=ui.inputs(["vector", "vector_file"]),
                    outputs=ui.outputs(info), api_visibility="private", queue=False)
        ui["vector_file"].upload(lambda: FILE_VECTOR, outputs=ui["vector"], api_visibility="private", queue=False)
        computed = ("vector", "vector_file", "layer_info", "layers")
        ui["compute_btn"].click(
            by_name(self.compute, computed), outputs=ui.outputs(computed), api_name="compute_vector",
            inputs_kwargs={**ui.inputs(["pairs_text", "pairs_file", "method", "browser_id"]),
                           "layers": ui["compute_layers"]},
            concurrency_id="gpu", concurrency_limit=1, validator=rate_validator(self.ctx.rate, self.ctx.session_of))
