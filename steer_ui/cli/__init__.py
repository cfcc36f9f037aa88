"""Command line: ``python -m steer_ui generate ...`` for scripts and sweeps.

One module per group of commands (``run_commands``: generate, replay; ``vector_commands``;
``log_commands``: runs, export, import; ``experiment_commands``: sweep, analyze); the run knobs'
options come from their one declaration (``options``). Argument names are a contract researchers
script against (see docs/cli.md); keep them stable.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from steer_ui.errors import UserError

# Quiet the libraries before they are imported: stdout is ours (JSONL), stderr is for the user.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def build_parser() -> argparse.ArgumentParser:
    from steer_ui.cli import experiment_commands, log_commands, run_commands, vector_commands

    prog = "steer-ui" if Path(sys.argv[0]).name == "steer-ui" else "python -m steer_ui"
    parser = argparse.ArgumentParser(
        prog=prog, description="Steer a reasoning model from the command line: stream baseline and steered "
        "rows with the answer probe, make vectors, browse the session log, sweep and analyze.",
        epilog=f"Each command has its own help ({prog} generate --help). The dashboard: python -m steer_ui.app "
        "(python app.py in a clone).")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (run_commands, vector_commands, log_commands, experiment_commands):
        group.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from steer_ui.cli.options import join_negative_lists

    args = build_parser().parse_args(join_negative_lists(sys.argv[1:] if argv is None else argv))
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # retry chatter; our own error line says what went wrong
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head` closed stdout: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
