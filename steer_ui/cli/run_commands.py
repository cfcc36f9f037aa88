"""``generate`` and ``replay``: one run streamed to a printer (JSONL or side by side) and the session log."""

from __future__ import annotations

import argparse
import sys
import threading

from steer_ui.cli.options import (COMPILE_HELP, add_db, add_knobs, add_model, attach_fast_path, ctrl_c_sets,
                                  form_from_args)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream baseline and steered rows with the suffix probe")
    add_model(p)
    add_knobs(p)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--jsonl", action="store_true", help="one JSON event per line on stdout, nothing else")
    add_db(p, no_log=True)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("replay", help="run a logged run again with exactly its settings (and stored vectors)")
    p.add_argument("run")
    add_db(p)
    add_model(p, model=False)
    p.add_argument("--jsonl", action="store_true")
    p.set_defaults(func=cmd_replay)


def settings_from_args(args: argparse.Namespace):
    """The run's settings, checked before any model loads (presets are the bundled model's)."""
    from steer_ui.engine.run_settings import settings_from_form
    from steer_ui.vectors.presets import resolve_vector

    form = form_from_args(args)
    nothing_steered = not form["coefs"] and not form["rows"]
    if nothing_steered and (form["vector"] or form["layers"] is not None):
        given = " and ".join(f for f, k in (("--vector", "vector"), ("--layers", "layers")) if form[k] is not None)
        print(f"note: {given} given without --coef or --row: nothing is steered, only the baseline runs "
              "(add --coef C for a steered row)", file=sys.stderr)
    return settings_from_form(form, lambda spec: resolve_vector(spec, args.model))


def cmd_generate(args: argparse.Namespace) -> int:
    from steer_ui.model.loading import load_model

    settings = settings_from_args(args)
    store = None if args.no_log else open_store(args.db)  # a bad --db fails before the model loads
    if not args.jsonl:
        print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    attach_fast_path(lm, args.compile, getattr(args, "eager", False))
    if not args.jsonl:
        from steer_ui.vectors.guidance import dose_lines

        for line in dose_lines(settings.rows):
            print(line, file=sys.stderr)
    return run_and_log(lm, settings, store, args.jsonl)


def open_store(db: str | None):
    from steer_ui.log.store import Store

    return Store(db)


def run_and_log(lm, settings, store, jsonl: bool) -> int:
    """Stream one run to the printer and, unless store is None, the session log."""
    from steer_ui.cli.printer import JsonlPrinter, SideBySidePrinter
    from steer_ui.engine.decode import run
    from steer_ui.log.recorder import RunRecorder

    printer = JsonlPrinter(sys.stdout) if jsonl else SideBySidePrinter(sys.stdout, sys.stderr)
    cancel = threading.Event()
    events = run(lm, settings, cancel)
    recorder = None
    if store is not None:
        recorder = RunRecorder(store, store.new_session("cli", " ".join(sys.argv[1:])[:200]), lm, settings)

    try:
        with ctrl_c_sets(cancel):  # the engine stops at its next step and still reports what it produced
            for event in events:
                printer(event)
                if recorder is not None:
                    recorder(event)
    except BaseException as err:
        if recorder is not None and not isinstance(err, KeyboardInterrupt):
            recorder.fail(f"{type(err).__name__}: {err}")
        raise
    finally:
        if recorder is not None:
            recorder.close()
            if recorder.error is not None:
                print(f"warning: the run could not be logged: {recorder.error}", file=sys.stderr)
            else:
                print(f"logged as run {recorder.run_id} in {store.url}", file=sys.stderr)
    return 130 if cancel.is_set() else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from steer_ui.log.archive import replay_settings
    from steer_ui.model.loading import load_model

    store = open_store(args.db)
    model_id, settings = replay_settings(store, args.run)
    if not args.jsonl:
        print(f"replaying run {args.run}: loading {model_id} ...", file=sys.stderr, flush=True)
    lm = load_model(model_id, device=args.device, dtype=args.dtype)
    return run_and_log(lm, settings, store, args.jsonl)
