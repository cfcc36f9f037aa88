"""CLI options derived from the knob declarations, and the options every model command shares.

``add_knobs`` gives a subcommand one option per knob (``--max-new-tokens``, ``--top-p``, ``--coef``,
...), with the knob's default and help text; ``form_from_args`` collects them back by knob name, ready
for ``settings_from_form``, which reads and checks them. Option names are a contract researchers
script against: they come from the knob names, so keep those stable.
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from steer_ui.engine.knobs import KNOBS, Knob
from steer_ui.model.known import BUNDLED_ALIAS

COMPILE_HELP = ("on CPU, also compile the decode steps (inductor; each new shape compiles first, minutes on 2 cores); "
                "on a CUDA GPU compiled steps (CUDA graphs) are the default and --eager turns them off")


def add_knobs(p: argparse.ArgumentParser, names: Iterable[str] | None = None,
              defaults: Mapping[str, Any] | None = None) -> None:
    """One option per knob in ``names`` (default: every knob); ``defaults`` overrides a knob's default for
    this command only."""
    wanted = set(names) if names is not None else None
    for knob in KNOBS:
        if wanted is None or knob.name in wanted:
            _add(p, knob, (defaults or {}).get(knob.name, knob.default))


def _add(p: argparse.ArgumentParser, knob: Knob, default: Any) -> None:
    help_text = (knob.flag_help or knob.help) + (f" (default {knob.shown(default)})"
                                                 if _worth_showing(knob, default) else "")
    metavar = knob.metavar or {"int": "N", "float": "X"}.get(knob.kind) or knob.name.upper()
    if knob.kind == "bool":
        p.add_argument(knob.cli_flag, dest=knob.name, action="store_const", const=knob.flag_sets,
                       default=default, help=help_text)
    elif knob.repeat:
        p.add_argument(knob.cli_flag, dest=knob.name, action="append", default=None,
                       help=help_text, metavar=metavar)
    else:
        p.add_argument(knob.cli_flag, dest=knob.name, default=default, help=help_text,
                       required=knob.required, metavar=None if knob.kind == "choice" else metavar)


def _worth_showing(knob: Knob, default: Any) -> bool:
    return knob.kind not in ("bool", "list") and default not in (None, "")


def form_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The knob values of ``args`` by name, as text: the knobs read them (``settings_from_form``), so a bad
    value is one ``error:`` line like any other mistake. A repeated option (``--coef``, ``--row``) is
    joined with ';', which both lists read as a separator."""
    form: dict[str, Any] = {}
    for knob in KNOBS:
        if hasattr(args, knob.name):
            value = getattr(args, knob.name)
            form[knob.name] = ";".join(value) if knob.repeat and value else value
    return form


def add_model(p: argparse.ArgumentParser, model: bool = True) -> None:
    """--model (unless the command takes the model from elsewhere), --device, --dtype."""
    if model:
        p.add_argument("--model", default=BUNDLED_ALIAS,
                       help=f"hub id, local directory, .gguf file, or {BUNDLED_ALIAS} (bundled, default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")


def add_db(p: argparse.ArgumentParser, no_log: bool = False) -> None:
    p.add_argument("--db", default=None,
                   help="session log: a path or SQLAlchemy URL "
                        "(default $STEER_UI_DB, else ~/.local/share/steer-ui/runs.sqlite)")
    if no_log:
        p.add_argument("--no-log", action="store_true", help="do not record runs in the session log")


def join_negative_lists(argv: list[str], options: tuple[str, ...] = ("--coefs", "--coef")) -> list[str]:
    """``--coefs -4,0,4`` as ``--coefs=-4,0,4``: argparse takes '-4,0,4' for an option otherwise."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in options and re.match(r"-\d|-\.\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


@contextmanager
def ctrl_c_sets(cancel: threading.Event) -> Iterator[None]:
    """Ctrl-C sets ``cancel`` (the job stops at its next step and keeps what it made); a second one
    raises KeyboardInterrupt at once."""
    def on_interrupt(signum: int, frame: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def progress_bar(desc: str, unit: str = "text") -> Iterator[Callable[..., None]]:
    """``update(done, total, note="")``: a tqdm bar on a terminal; otherwise (a log file, CI, nohup) a plain
    line every twentieth of the total, so a long job's progress is visible where a bar would be hidden.
    ``note`` (per-worker speed) goes after the count."""
    if not sys.stderr.isatty():
        yield _progress_lines(desc, unit)
        return
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, file=sys.stderr)

    def update(done: int, total: int, note: str = "") -> None:
        bar.total = total
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _progress_lines(desc: str, unit: str) -> Callable[..., None]:
    started, first, shown = time.monotonic(), [None], [-1]

    def update(done: int, total: int, note: str = "") -> None:
        first[0] = done if first[0] is None else first[0]  # a resumed job starts part-way
        every = max(1, math.ceil(total / 20))
        if shown[0] >= 0 and done < total and done - shown[0] < every:
            return
        shown[0] = done
        elapsed, here = time.monotonic() - started, done - first[0]
        line = f"{desc}: {done}/{total} {unit}s"
        if here > 0 and done < total:
            line += f", {elapsed:.0f} s so far, about {elapsed / here * (total - done):.0f} s to go"
        print(line + (f" ({note})" if note else ""), file=sys.stderr, flush=True)

    return update


def attach_fast_path(lm, compile_on_cpu: bool, eager: bool) -> None:
    """Compiled steps for this process's runs (CUDA: by default; CPU: --compile). A shape a run needs is
    compiled when it first comes up, with a line on stderr, then loaded from the on-disk cache."""
    if eager:
        return
    from steer_ui.engine.fast_path import attach

    fast = attach(lm, compile_on_cpu=compile_on_cpu)
    if fast is not None:
        fast.on_demand = lambda message: print(message, file=sys.stderr, flush=True)
