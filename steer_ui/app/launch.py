"""``python app.py``: the dashboard's command line, loading the model and opening the log, and launching Gradio."""

from __future__ import annotations

import argparse
import os
import signal
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from steer_ui.app import widgets  # noqa: E402
from steer_ui.app.context import AppContext  # noqa: E402
from steer_ui.app.dashboard import Dashboard  # noqa: E402
from steer_ui.app.hosted import Limits  # noqa: E402
from steer_ui.app.layout import CSS, build  # noqa: E402
from steer_ui.app.request_limits import RequestLimits  # noqa: E402
from steer_ui.engine import worker  # noqa: E402
from steer_ui.errors import UserError  # noqa: E402
from steer_ui.experiments.cluster import Cluster  # noqa: E402
from steer_ui.model.known import BUNDLED_ALIAS  # noqa: E402


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
    p.add_argument("--eager", action="store_true",
                   help="no compiled steps at all, even on a GPU (by default a CUDA GPU gets CUDA graphs, warmed in "
                        "the background; runs decode eagerly until their shape is ready)")
    p.add_argument("--compile", action="store_true",
                   help="on CPU, also compile the decode steps (inductor; each shape compiles in the background: "
                        "~3 minutes for the bundled model on 2 CPU cores)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="the Sweep tab runs its questions on Ray workers: a local Ray instance (or RAY_ADDRESS), or "
                        "the cluster at ADDRESS; needs pip install 'steer-ui[ray]'")
    p.add_argument("--workers", type=int, default=None, help="with --ray: how many workers (default: one per GPU; "
                   "1 on CPUs)")
    return p


def create_app(model: str = BUNDLED_ALIAS, db: str | None = None, device: str = "auto", dtype: str = "auto",
               limits: Limits | None = None, compile: bool = False, eager: bool = False, cluster: Cluster | None = None
               ) -> tuple[gr.Blocks, Dashboard]:
    """Load the model, open the log and build the app (UserError on bad arguments). Compiled steps, where
    there are any, warm in the background: runs decode eagerly until their shape is ready. ``cluster``: the
    Sweep tab's questions run on Ray workers there."""
    from steer_ui.log.store import Store
    from steer_ui.model.loading import load_model

    if cluster is not None:
        if limits is not None:  # a hosted server's caps and model time are counted on its own model
            raise UserError("--ray is for a dashboard of your own; hosted mode sweeps on this server's model")
        from steer_ui.experiments.cluster import import_ray

        import_ray()  # without Ray: its one message, before the model loads
    store = Store(db)  # a bad --db fails before the model loads
    device = worker.startup_device(device)
    lm = load_model(model, device=device, dtype=dtype)
    worker.attach(lm)
    ctx = AppContext(lm=lm, store=store, device=device, dtype=dtype, limits=limits, compile_on_cpu=compile,
                     eager=eager or worker.ACTIVE,  # ZeroGPU forks a worker per run: no long-lived graphs there
                     cluster=cluster)
    ctx.prepare(lm)
    dash = Dashboard(ctx)
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
    kwargs = {"css": CSS, "run_history": False, "show_error": True, "allowed_paths": [],
              "app_kwargs": {"middleware": [Middleware(LoginForEveryRoute)]}}
    if limits is not None:
        kwargs["max_file_size"] = f"{limits.upload_mb}mb"  # Gradio refuses bigger uploads before they land
        kwargs["app_kwargs"]["middleware"].append(Middleware(RequestLimits, limits=limits))
    return kwargs


class LoginForEveryRoute:
    """With ``--auth``, Gradio 6.31 checks the login on its routes except ``/gradio_api/cancel`` and
    ``/gradio_api/heartbeat/...``, which answered anyone. This ASGI middleware refuses those without the
    login cookie Gradio set, the same check its other routes make."""

    GUARDED = ("/gradio_api/cancel", "/gradio_api/heartbeat/")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.GUARDED) and not _logged_in(scope):
            from starlette.responses import JSONResponse

            response = JSONResponse({"detail": "Not authenticated"}, status_code=401)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _logged_in(scope) -> bool:
    """True without a login configured, or with a cookie that names a logged-in user."""
    from starlette.requests import Request

    app = scope.get("app")
    if app is None or (getattr(app, "auth", None) is None and getattr(app, "auth_dependency", None) is None):
        return True
    request = Request(scope)
    if app.auth_dependency is not None:
        return False  # a custom dependency: refuse these two routes rather than guess how it decides
    token = request.cookies.get(f"access-token-{app.cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{app.cookie_id}")
    return app.tokens.get(token) is not None


def queue_kwargs(limits: Limits | None = None) -> dict:
    return {"default_concurrency_limit": 4, **({"max_size": limits.queue_size} if limits is not None else {})}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    try:
        auth = parse_auth(args.auth)  # a malformed --auth fails before the model loads
        limits = Limits.from_env() if args.hosted else None
        if args.workers is not None and args.ray is None:
            raise UserError("--workers is for --ray (the Sweep tab's workers on a Ray cluster)")
        cluster = Cluster(args.ray or None, args.workers) if args.ray is not None else None
        demo, dash = create_app(args.model, args.db, args.device, args.dtype, limits, args.compile, args.eager,
                                cluster)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # SIGTERM (docker stop, systemd, a Space restarting) ends the process without atexit, which removes
    # the temp folder: make it an ordinary exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(dash.ctx.lm.describe(), file=sys.stderr)
    if limits is not None:
        print(f"hosted mode: {limits}", file=sys.stderr)
    demo.queue(**queue_kwargs(limits)).launch(server_name=args.host, server_port=args.port, share=args.share,
                                              auth=auth, **launch_kwargs(limits))
    return 0
