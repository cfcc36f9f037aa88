"""``runs``, ``export`` and ``import``: the session log from the command line."""

from __future__ import annotations

import argparse
import sys

from steer_ui.cli.options import add_db
from steer_ui.cli.run_commands import open_store


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list logged runs, newest first")
    add_db(p)
    p.add_argument("--session", default=None, help="only this session's runs")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("export", help="write logged runs as JSONL (one object per run) or CSV tables")
    add_db(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--session", default=None)
    which.add_argument("--run", default=None)
    p.add_argument("--format", default="jsonl",
                   help="jsonl | csv (writes OUT_runs.csv, OUT_streams.csv, OUT_probes.csv)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="load a JSONL export into the session log")
    p.add_argument("file")
    add_db(p)
    p.set_defaults(func=cmd_import)


def cmd_runs(args: argparse.Namespace) -> int:
    store = open_store(args.db)
    runs = store.list_runs(args.session, args.limit)
    if not runs:
        print(f"no runs in {store.url}", file=sys.stderr)
        return 0
    print(f"{'run':<12}  {'created (UTC)':<19}  {'status':<11}  {'tokens/row':>11}  {'vector':<28}  {'coefs':<12}  "
          f"{'layers':<13}  {'model':<16}  prompt")
    for r in runs:
        coefs = ",".join(f"{c:+g}" for c in r.coefs) or "-"
        prompt = r.prompt.replace("\n", " ")
        print(f"{r.id:<12}  {r.created:%Y-%m-%d %H:%M:%S}  {r.status:<11}  {r.tokens_text():>11}  "
              f"{_cut(r.vectors_text(), 28):<28}  {_cut(coefs, 12):<12}  {_cut(r.layers_text(), 13):<13}  "
              f"{_cut(r.model_id, 16):<16}  {_cut(prompt, 50)}")
    return 0


def _cut(text: str, width: int) -> str:
    """``text`` in ``width`` characters, '...' marking what was cut."""
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_export(args: argparse.Namespace) -> int:
    from steer_ui.log.archive import export

    paths = export(open_store(args.db), args.out, args.format, session_id=args.session, run_id=args.run)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from steer_ui.log.archive import import_jsonl

    imported, skipped = import_jsonl(open_store(args.db), args.file)
    print(f"imported {imported} runs" + (f", skipped {skipped} already present" if skipped else ""), file=sys.stderr)
    return 0
