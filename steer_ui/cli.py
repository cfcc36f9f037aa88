"""Command line: ``python -m steer_ui generate ...`` for scripts and sweeps.

Argument names are a contract researchers script against (see README); keep them stable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from steer_ui.errors import UserError
from steer_ui.known_models import BUNDLED_ALIAS

# Quiet the libraries before they are imported: stdout is ours (JSONL), stderr is for the user.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream baseline and steered rows with the suffix probe")
    p.add_argument("--model", default=BUNDLED_ALIAS,
                   help=f"hub id, local directory, .gguf file, or {BUNDLED_ALIAS} (bundled, default)")
    p.add_argument("--prompt", required=True, help="the user message (or raw text with --raw)")
    p.add_argument("--raw", action="store_true", help="no chat template: tokenize the prompt as-is")
    p.add_argument("--system", default=None, help="system prompt (default: the template's own)")
    p.add_argument("--vector", default=None, help="steering vector: repeng .gguf or .safetensors")
    p.add_argument("--layers", default="all", help="'12-15', '3,5,7' or 'all' (the vector's layers)")
    p.add_argument("--coef", type=float, action="append", default=[],
                   help="steering coefficient; repeat for several steered rows")
    p.add_argument("--scope", default="all", help="all | generated | kick:N | think | answer")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-suffix", default=None, help="forcing text (default: the model table's)")
    p.add_argument("--probe-choices", default="Yes,No", help="comma-separated; the first is the positive one")
    p.add_argument("--probe-every", type=int, default=4, help="read the probe every K tokens (0 = off)")
    p.add_argument("--probe-min-mass", type=float, default=0.1,
                   help="readings with less probability on the choices are flagged unreliable")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--jsonl", action="store_true", help="one JSON event per line on stdout, nothing else")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steer_ui", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    return parser


def _settings_from_args(args: argparse.Namespace):
    from steer_ui.settings import ProbeSettings, RunSettings, Sampling, Scope, parse_choices, parse_layers
    from steer_ui.vectors import load_vector

    settings = RunSettings(
        prompt=args.prompt, system=args.system, raw=args.raw,
        vector=load_vector(args.vector) if args.vector else None,
        layers=parse_layers(args.layers), coefs=tuple(args.coef), scope=Scope.parse(args.scope),
        max_new_tokens=args.max_new_tokens,
        sampling=Sampling(args.temperature, args.top_p, args.top_k, args.seed),
        probe=ProbeSettings(args.probe_suffix, parse_choices(args.probe_choices), args.probe_every,
                            args.probe_min_mass),
    )
    settings.validate()  # fail on bad arguments before spending seconds loading the model
    return settings


def cmd_generate(args: argparse.Namespace) -> int:
    from steer_ui.engine import run
    from steer_ui.models import load_model
    from steer_ui.printer import JsonlPrinter, SideBySidePrinter

    settings = _settings_from_args(args)
    if not args.jsonl:
        print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    printer = JsonlPrinter(sys.stdout) if args.jsonl else SideBySidePrinter(sys.stdout, sys.stderr)
    cancel = threading.Event()
    events = run(lm, settings, cancel)

    def on_interrupt(signum: int, frame: object) -> None:
        if cancel.is_set():  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        cancel.set()  # the engine stops at its next step and still reports what it produced

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        for event in events:
            printer(event)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 130 if cancel.is_set() else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # retry chatter; our own error line says what went wrong
    try:
        return {"generate": cmd_generate}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head` closed stdout: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
