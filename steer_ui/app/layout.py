"""The dashboard's layout and wiring (Gradio 6), and ``python app.py`` to launch it.

Model work (generate, load a model, compute a vector) shares one queue slot, ``concurrency_id="gpu"``:
one model, one set of hooks, one job at a time. Cheap events (Stop, history, vector info) skip the queue.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import gradio as gr  # noqa: E402

from steer_ui.app import widgets  # noqa: E402
from steer_ui.engine import worker as gpu  # noqa: E402
from steer_ui.app.dashboard import (EXAMPLES, FILE_VECTOR, NO_VECTOR, SCOPES, AppContext,  # noqa: E402
                                Dashboard)
from steer_ui.errors import UserError  # noqa: E402
from steer_ui.vectors.contrastive import METHODS  # noqa: E402
from steer_ui.model.known import BUNDLED_ALIAS  # noqa: E402
from steer_ui.app.hosted import Limits  # noqa: E402

CSS = """
.su-hint { color: var(--body-text-color-subdued); font-size: 13px; margin: 4px 0; }
.su-bars { display: flex; gap: 2px; align-items: flex-end; height: 64px; margin: 4px 0 8px; }
.su-bar { flex: 1; height: 100%; display: flex; flex-direction: column-reverse; align-items: stretch;
          position: relative; min-width: 8px; }
.su-bar i { display: block; background: #60a5fa; border-radius: 2px 2px 0 0; }
.su-bar span { font-size: 9px; text-align: center; color: var(--body-text-color-subdued); }
#su-title { margin-bottom: 0; }
"""

INTRO = ("Steer a language model's chain of thought and watch it bend: the **baseline** and each **steered** row "
         "stream side by side, and a suffix probe (\"So the final answer is\" -> Yes / No) reads each row's "
         "log-odds as it goes, from a fork of the KV cache.")

PAIRS_PLACEHOLDER = ('{"positive": "Wait, let me double-check that step.", '
                     '"negative": "That step is clearly right, moving on."}\n'
                     '{"positive": "Hmm, maybe I made a mistake.", "negative": "No mistakes here."}')


def build(dash: Dashboard) -> gr.Blocks:
    lm = dash.ctx.lm

    def snapshot(run_key: str) -> dict:  # a plain function: Gradio marks server functions with an attribute
        return dash.snapshot(run_key)

    # Hosted: Gradio's copies of downloads older than 2 h are deleted hourly (our own folders are pruned too).
    cleanup = {"delete_cache": (3600, 7200)} if dash.ctx.limits is not None else {}
    with gr.Blocks(title="steer-ui", fill_width=True, **cleanup) as demo:
        browser_id = gr.BrowserState("", storage_key="steer-ui-session", secret=browser_secret())
        gr.Markdown("## steer-ui", elem_id="su-title")
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=340):
                        with gr.Accordion("Model", open=False):
                            model_info = gr.Markdown(dash.model_markdown(), label="Loaded model")
                            with gr.Row():
                                model_id = gr.Textbox(label="Load another model", scale=4,
                                                      placeholder="hub id, local folder or .gguf file")
                                load_btn = gr.Button("Load", scale=1)
                        prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask a yes/no question ...")
                        with gr.Accordion("System prompt and template", open=False):
                            system_prompt = gr.Textbox("", label="System prompt", lines=2,
                                                       placeholder="(the chat template's own)")
                            chat_template = gr.Checkbox(label="Use the chat template", value=True)
                        with gr.Group():
                            vector = gr.Dropdown(dash.vector_choices(), value=NO_VECTOR, label="Steering vector")
                            layer_info = gr.HTML(dash.layer_table(None), label="Separation by layer")
                        with gr.Accordion("Upload a vector file (.gguf, .safetensors, .pt, .npy)", open=False):
                            vector_file = gr.File(label="Vector file",
                                                  file_types=[".gguf", ".safetensors", ".pt", ".pth", ".npy", ".npz"],
                                                  type="filepath")
                        with gr.Accordion("Compute a vector from contrastive pairs", open=False):
                            pairs_text = gr.Textbox(label="Pairs (JSONL)", lines=4, placeholder=PAIRS_PLACEHOLDER)
                            pairs_file = gr.File(label="or a pairs file (.jsonl)", file_types=[".jsonl", ".json"],
                                                 type="filepath", height=90)
                            with gr.Row():
                                method = gr.Dropdown(list(METHODS), value="mean_diff", label="Method")
                                compute_layers = gr.Textbox(label="Layers to compute", value="all")
                            compute_btn = gr.Button("Compute vector")
                        with gr.Row():
                            layers = gr.Textbox("", label="Layers", placeholder="15-18, or 3,5,7, or all", scale=1)
                            coefs = gr.Textbox("", label="Coefficients", info="one steered pane each",
                                               placeholder="4, 8, -6", scale=2)
                        with gr.Row():
                            scope = gr.Dropdown(SCOPES, value="all", label="Scope", allow_custom_value=True,
                                                info="where the vector is added")
                            max_new_tokens = gr.Slider(1, dash.ctx.limits.max_new_tokens if dash.ctx.limits else 2048,
                                                       value=96, step=1, label="Max new tokens")
                        with gr.Accordion("Sampling", open=False):
                            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
                            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                            seed = gr.Number(value=0, precision=0, label="Seed")
                            ignore_eos = gr.Checkbox(label="Keep generating past end-of-sequence", value=False,
                                                     info="every row runs to max new tokens (fixed-length comparisons)")
                        with gr.Accordion("Probe", open=False):
                            probe_suffix = gr.Textbox(label="Probe suffix", value=lm.profile.probe_suffix)
                            probe_choices = gr.Textbox(label="Probe choices (first is positive)", value="Yes,No")
                            probe_every = gr.Slider(0, 32, value=4, step=1,
                                                    label="Read the probe every N tokens (0 = off)")
                        with gr.Row():
                            generate_btn = gr.Button("Generate", variant="primary")
                            stop_btn = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=5, min_width=480):
                        status = gr.Markdown("", label="Status")
                        streams = widgets.streams(snapshot, label="Streams")
                        chart = widgets.chart(snapshot, label="Log-odds chart")
                        link = gr.Markdown("", label="Run link")
                        downloads = gr.File(label="Downloads",
                                            file_count="multiple", interactive=False)
                        with gr.Accordion("Run data (JSON, what the API returns)", open=False):
                            result = gr.JSON(label="Run data")
                gr.Examples(_examples(dash), inputs=[prompt, vector, coefs, scope, max_new_tokens], label="Examples",
                            cache_examples=False)
            with gr.Tab("Sweep", id="sweep"):
                gr.Markdown("Run every question at every coefficient with the vector, layers and scope chosen on "
                            "the Generate tab; each run is logged in History. Big sweeps: "
                            "`python -m steer_ui sweep` (see README).")
                with gr.Row():
                    sweep_questions = gr.Dropdown(["yesno:8", "yesno:20", "wordproblems:8"], value="yesno:8",
                                                  allow_custom_value=True, label="Questions",
                                                  info="a generated set (name:size)")
                    sweep_file = gr.File(label="or a questions file (.jsonl)", file_types=[".jsonl"],
                                         type="filepath")
                    sweep_coefs = gr.Textbox("-4, 0, 4", label="Sweep coefficients", info="0 is the baseline")
                    sweep_tokens = gr.Slider(8, 1024, value=64, step=1, label="Max new tokens per answer")
                sweep_btn = gr.Button("Run sweep", variant="primary")
                sweep_status = gr.Markdown("", label="Sweep status")
                sweep_table = gr.Dataframe(headers=["coef", "n", "accuracy", "95% CI", "CoT tokens",
                                                    "CoT tokens (correct)", "final log-odds to gold",
                                                    "forced accuracy"],
                                           interactive=False, label="Summary")
                sweep_plot = gr.Plot(label="Accuracy and chain-of-thought length against the coefficient")
                sweep_files = gr.File(label="Sweep files", file_count="multiple", interactive=False)
            with gr.Tab("History", id="history"):
                gr.Markdown("Runs from this browser, newest first. Click a row to open it.")
                history = gr.Dataframe(headers=["run", "started (UTC)", "status", "prompt", "coefs", "tokens"],
                                       datatype=["str", "str", "str", "str", "str", "number"], interactive=False,
                                       label="Runs", wrap=True)
                with gr.Row():
                    run_id = gr.Textbox(label="Run id", scale=3)
                    open_btn = gr.Button("Open", scale=1)
                    refresh_btn = gr.Button("Refresh", scale=1)
                with gr.Row():
                    export_jsonl = gr.Button("Export session (JSONL)")
                    export_csv = gr.Button("Export session (CSV)")
                exported = gr.File(label="Export", file_count="multiple", interactive=False, visible=False)

        run_outputs = [streams, chart, status, result, downloads, link]
        form = [prompt, system_prompt, chat_template, vector, vector_file, layers, coefs, scope, max_new_tokens,
                temperature, top_p, seed, probe_suffix, probe_choices, probe_every, ignore_eos]

        gen = generate_btn.click(dash.generate, inputs=[*form, browser_id], outputs=[*run_outputs, browser_id],
                                 api_name="generate", concurrency_id="gpu", concurrency_limit=1,
                                 validator=dash.validator_for(dash.generate),
                                 show_progress="minimal", show_progress_on=[status])
        gen.then(dash.history, inputs=browser_id, outputs=history, api_visibility="private", queue=False)
        stop_btn.click(dash.stop, api_name="stop", queue=False)

        load_btn.click(dash.load, inputs=model_id,
                       outputs=[model_info, vector, probe_suffix, layers, layer_info], api_name="load_model",
                       concurrency_id="gpu", concurrency_limit=1)
        for trigger in (vector.change, vector_file.upload):
            trigger(dash.vector_info, inputs=[vector, vector_file], outputs=[layer_info, layers],
                    api_visibility="private", queue=False)
        vector_file.upload(lambda: FILE_VECTOR, outputs=vector, api_visibility="private", queue=False)
        compute_btn.click(dash.compute, inputs=[pairs_text, pairs_file, method, compute_layers],
                          outputs=[vector, vector_file, layer_info, layers], api_name="compute_vector",
                          concurrency_id="gpu", concurrency_limit=1)

        sweep_btn.click(dash.sweep, inputs=[sweep_questions, sweep_file, sweep_coefs, sweep_tokens, vector,
                                            vector_file, layers, scope, browser_id],
                        outputs=[sweep_table, sweep_plot, sweep_files, sweep_status], api_name="sweep",
                        validator=dash.validator_for(dash.sweep),
                        concurrency_id="gpu", concurrency_limit=1).then(
            dash.history, inputs=browser_id, outputs=history, api_visibility="private", queue=False)

        opened = [*run_outputs, prompt, system_prompt, layers, coefs, scope, vector, vector_file]
        open_btn.click(dash.open_run, inputs=[run_id, browser_id], outputs=opened, api_name="open_run").then(
            lambda: gr.Tabs(selected="generate"), outputs=tabs, api_visibility="private", queue=False)
        history.select(_selected_run, inputs=history, outputs=run_id, api_visibility="private", queue=False).then(
            dash.open_run, inputs=[run_id, browser_id], outputs=opened, api_visibility="private").then(
            lambda: gr.Tabs(selected="generate"), outputs=tabs, api_visibility="private", queue=False)
        refresh_btn.click(dash.history, inputs=browser_id, outputs=history, api_visibility="private", queue=False)
        export_jsonl.click(lambda b: dash.export_session(b, "jsonl"), inputs=browser_id, outputs=exported,
                           api_visibility="private")
        export_csv.click(lambda b: dash.export_session(b, "csv"), inputs=browser_id, outputs=exported,
                         api_visibility="private")

        demo.load(dash.on_page_load, inputs=browser_id, outputs=[browser_id, history, *opened, tabs],
                  api_visibility="private")
    return demo


def browser_secret() -> str:
    """The key that encrypts each browser's session id in its local storage, kept across restarts.

    Gradio's default is a new random key per launch, which would give every browser a new, empty
    History after each restart.
    """
    import secrets

    from steer_ui.model.loading import default_cache_dir

    env = os.environ.get("STEER_UI_SECRET")
    if env:
        return env
    path = default_cache_dir() / "browser-secret"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
            except FileExistsError:  # another process made it first: use theirs
                pass
        return path.read_text().strip()
    except OSError:  # an unwritable cache: sessions last until the next restart
        return secrets.token_hex(32)


def _examples(dash: Dashboard) -> list[list]:
    """The examples, with their preset vectors where the loaded model has them (else baseline only)."""
    presets = dash.presets()
    return [ex if ex[1] in presets else [ex[0], NO_VECTOR, "", ex[3], ex[4]] for ex in EXAMPLES]


def _selected_run(table, evt: gr.SelectData) -> str:
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    try:
        return str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table[row][0])
    except (IndexError, KeyError):
        return ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python app.py", description="steer-ui dashboard")
    p.add_argument("--model", default=os.environ.get("STEER_UI_MODEL", BUNDLED_ALIAS),
                   help=f"hub id, local folder or .gguf file (default {BUNDLED_ALIAS}, bundled)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to listen on (0.0.0.0 to serve your network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument("--auth", default=os.environ.get("STEER_UI_AUTH"),
                   help="require a login: 'user:password' (several: 'a:pw1,b:pw2'; default $STEER_UI_AUTH)")
    p.add_argument("--db", default=None, help="session log: path or SQLAlchemy URL (default $STEER_UI_DB)")
    p.add_argument("--hosted", action="store_true", default=os.environ.get("STEER_UI_HOSTED", "") not in ("", "0"),
                   help="a shared server: request caps, a rate limit, a model allow-list, runs private to each "
                        "browser (also $STEER_UI_HOSTED=1; caps from $STEER_UI_MAX_NEW_TOKENS etc.)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode steps (static cache; the first run of each shape compiles: "
                        "~3 minutes for the bundled model on 2 CPU cores)")
    return p


def create_app(model: str = BUNDLED_ALIAS, db: str | None = None, device: str = "auto",
               dtype: str = "auto", limits: Limits | None = None, compile: bool = False) -> tuple[gr.Blocks, Dashboard]:
    """Load the model, open the log and build the app (UserError on bad arguments)."""
    from steer_ui.model.loading import compile_model, load_model
    from steer_ui.log.store import Store

    store = Store(db)  # a bad --db fails before the model loads
    device = gpu.startup_device(device)
    lm = load_model(model, device=device, dtype=dtype)
    if compile:
        compile_model(lm)
    gpu.attach(lm)
    dash = Dashboard(AppContext(lm=lm, store=store, device=device, dtype=dtype, limits=limits))
    gr.set_static_paths(widgets.static_paths())
    return build(dash), dash


def parse_auth(text: str | None) -> list[tuple[str, str]] | None:
    """'user:password[,user2:password2]' as Gradio's auth list; None when empty."""
    if not text or not text.strip():
        return None
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise UserError("--auth wants 'user:password' (several separated by commas), with neither part empty")
        pairs.append((user, password))
    return pairs


def launch_kwargs(limits: Limits | None = None) -> dict:
    kwargs = {"css": CSS, "run_history": False, "show_error": True, "allowed_paths": []}
    if limits is not None:
        kwargs["max_file_size"] = f"{limits.upload_mb}mb"  # Gradio refuses bigger uploads before they land
    return kwargs


def queue_kwargs(limits: Limits | None = None) -> dict:
    return {"default_concurrency_limit": 4, **({"max_size": limits.queue_size} if limits is not None else {})}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    try:
        auth = parse_auth(args.auth)  # a malformed --auth fails before the model loads
        limits = Limits.from_env() if args.hosted else None
        demo, dash = create_app(args.model, args.db, args.device, args.dtype, limits, args.compile)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(dash.ctx.lm.describe(), file=sys.stderr)
    if limits is not None:
        print(f"hosted mode: {limits}", file=sys.stderr)
    demo.queue(**queue_kwargs(limits)).launch(server_name=args.host, server_port=args.port, share=args.share,
                                              auth=auth, **launch_kwargs(limits))
    return 0
