"""Command line: ``python -m steer_ui generate ...`` for scripts and sweeps.

Argument names are a contract researchers script against (see README); keep them stable.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from steer_ui.errors import UserError
from steer_ui.model.known import BUNDLED_ALIAS

COMPILE_HELP = ("torch.compile the decode steps (uses the static cache; the first run of each shape compiles: "
                "~3 minutes for the bundled model on 2 CPU cores; for long runs and sweeps)")

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
    p.add_argument("--vector", default=None,
                   help="vector file (.gguf, .safetensors, .pt, .npy) or a preset name for the bundled model: "
                        "reconsideration, verbosity, confidence")
    p.add_argument("--layers", default="all", help="'12-15', '3,5,7' or 'all' (the vector's layers)")
    p.add_argument("--coef", type=float, action="append", default=[],
                   help="steering coefficient; repeat for several steered rows")
    p.add_argument("--scope", default="all", help="all | generated | kick:N | think | answer")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-new-tokens per row")
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                   help="KV cache: dynamic (grows per token) or static (preallocated for the run; no per-step "
                        "copies; --compile always uses it)")
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
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--jsonl", action="store_true", help="one JSON event per line on stdout, nothing else")
    _add_db(p)
    p.add_argument("--no-log", action="store_true", help="do not record this run in the session log")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None,
                   help="session log: a path or SQLAlchemy URL "
                        "(default $STEER_UI_DB, else ~/.local/share/steer-ui/runs.sqlite)")


def _add_log(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list logged runs, newest first")
    _add_db(p)
    p.add_argument("--session", default=None, help="only this session's runs")
    p.add_argument("--limit", type=int, default=50)

    p = sub.add_parser("export", help="write logged runs as JSONL (one object per run) or CSV tables")
    _add_db(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--session", default=None)
    which.add_argument("--run", default=None)
    p.add_argument("--format", default="jsonl",
                   help="jsonl | csv (writes OUT_runs.csv, OUT_streams.csv, OUT_probes.csv)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("import", help="load a JSONL export into the session log")
    p.add_argument("file")
    _add_db(p)

    p = sub.add_parser("replay", help="run a logged run again with exactly its settings (and stored vector)")
    p.add_argument("run")
    _add_db(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--jsonl", action="store_true")


def _add_vector(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vector", help="compute a steering vector from contrastive pairs or a preset")
    p.add_argument("--model", default=BUNDLED_ALIAS)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help='JSONL file, one {"positive": ..., "negative": ...} a line')
    src.add_argument("--preset", help="a shipped behaviour: reconsideration, verbosity, confidence")
    p.add_argument("--method", default="mean_diff", help="mean_diff | pca_diff | pca_center")
    p.add_argument("--layers", default="all", help="'8-14', '3,5,7' or 'all'")
    p.add_argument("--out", required=True, help="FILE.gguf (repeng / llama.cpp) or FILE.safetensors (with metadata)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")

    q = sub.add_parser("inspect-vector", help="layers, norms, separation and logit-lens tokens of a vector file")
    q.add_argument("file")
    q.add_argument("--model", default=None, help="also check it against this model and show logit-lens tokens")
    q.add_argument("--device", default="auto")
    q.add_argument("--dtype", default="auto")


def _add_experiments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="every question at every coefficient: accuracy and chain-of-thought length")
    p.add_argument("--model", default=BUNDLED_ALIAS)
    p.add_argument("--vector", default=None, help="vector file or preset name (needed for nonzero coefficients)")
    p.add_argument("--layers", default="all")
    p.add_argument("--coefs", required=True, help="comma-separated, e.g. '-4,-2,0,2,4' (0 is the baseline)")
    p.add_argument("--questions", required=True,
                   help='JSONL file of {"question": ..., "answer": ...}, or a generated set: yesno, '
                        "wordproblems (optionally with a size: yesno:40)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--samples", type=int, default=1, help="samples per question and coefficient (needs --temperature)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sample k uses seed + k")
    p.add_argument("--scope", default="all")
    p.add_argument("--system", default=None)
    p.add_argument("--probe-every", type=int, default=1,
                   help="probe cadence on yes/no questions (default every token: the last reading is the forced "
                        "answer; 0 = off)")
    p.add_argument("--out", required=True, help="folder for results.csv, summary.csv/.txt, figure.html/.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    _add_db(p)
    p.add_argument("--no-log", action="store_true", help="do not record the runs in the session log")

    q = sub.add_parser("analyze", help="where did the reasoning go wrong: the probe at each step of a logged run")
    q.add_argument("run")
    q.add_argument("--row", type=int, default=None, help="row to analyse (default: every row)")
    q.add_argument("--commit", type=float, default=2.0, help="|log-odds| at which the answer counts as emerged")
    q.add_argument("--drop", type=float, default=2.0, help="a fall in log-odds this large flags a step")
    q.add_argument("--rollouts", type=int, default=0,
                   help="K continuations sampled from each step to estimate its value (needs --answer)")
    q.add_argument("--rollout-tokens", type=int, default=128)
    q.add_argument("--answer", default=None, help="the right answer, to score rollouts (Yes/No or a number)")
    q.add_argument("--json", default=None, help="also write the analysis to this JSON file")
    q.add_argument("--plot", default=None, help="also write the step chart: FILE.html (or FILE.png with kaleido)")
    q.add_argument("--device", default="auto")
    q.add_argument("--dtype", default="auto")
    _add_db(q)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steer_ui", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_vector(sub)
    _add_log(sub)
    _add_experiments(sub)
    return parser


def _settings_from_args(args: argparse.Namespace):
    from steer_ui.engine.run_settings import ProbeSettings, RunSettings, Sampling, Scope, parse_choices, parse_layers
    from steer_ui.vectors.vector import load_vector

    settings = RunSettings(
        prompt=args.prompt, system=args.system, raw=args.raw,
        vector=load_vector(_vector_path(args.vector, args.model)) if args.vector else None,
        layers=parse_layers(args.layers), coefs=tuple(args.coef), scope=Scope.parse(args.scope),
        max_new_tokens=args.max_new_tokens, ignore_eos=args.ignore_eos, cache=args.cache,
        sampling=Sampling(args.temperature, args.top_p, args.top_k, args.seed),
        probe=ProbeSettings(args.probe_suffix, parse_choices(args.probe_choices), args.probe_every,
                            args.probe_min_mass),
    )
    settings.validate()  # fail on bad arguments before spending seconds loading the model
    return settings


def _vector_path(arg: str, model: str) -> str:
    """A file path as given, or a preset name (no extension, not a file) for the model's shipped vectors."""
    from steer_ui.vectors.presets import preset_vector_path

    if Path(arg).suffix or Path(arg).exists():
        return arg
    return str(preset_vector_path(arg, model.strip().lower()))


def cmd_generate(args: argparse.Namespace) -> int:
    from steer_ui.model.loading import compile_model, load_model

    settings = _settings_from_args(args)
    store = None if args.no_log else _open_store(args.db)  # a bad --db fails before the model loads
    if not args.jsonl:
        print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.compile:
        compile_model(lm)
    if settings.vector is not None and not args.jsonl:
        from steer_ui.vectors.guidance import dose_summary

        layers = settings.layers if settings.layers is not None else settings.vector.layers
        for line in dose_summary(settings.vector.metadata, layers, settings.coefs):
            print(line, file=sys.stderr)
    return _run_and_log(lm, settings, store, args.jsonl)


def _open_store(db: str | None):
    from steer_ui.log.store import Store

    return Store(db)


def _run_and_log(lm, settings, store, jsonl: bool) -> int:
    """Stream one run to the printer and, unless store is None, the session log."""
    from steer_ui.engine.decode import run
    from steer_ui.cli.printer import JsonlPrinter, SideBySidePrinter
    from steer_ui.log.recorder import RunRecorder

    printer = JsonlPrinter(sys.stdout) if jsonl else SideBySidePrinter(sys.stdout, sys.stderr)
    cancel = threading.Event()
    events = run(lm, settings, cancel)
    recorder = None
    if store is not None:
        recorder = RunRecorder(store, store.new_session("cli", " ".join(sys.argv[1:])[:200]), lm, settings)

    def on_interrupt(signum: int, frame: object) -> None:
        if cancel.is_set():  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        cancel.set()  # the engine stops at its next step and still reports what it produced

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        for event in events:
            printer(event)
            if recorder is not None:
                recorder(event)
    except BaseException as err:
        if recorder is not None and not isinstance(err, KeyboardInterrupt):
            recorder.fail(f"{type(err).__name__}: {err}")
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        if recorder is not None:
            recorder.close()
            if recorder.error is not None:
                print(f"warning: the run could not be logged: {recorder.error}", file=sys.stderr)
            else:
                print(f"logged as run {recorder.run_id} in {store.url}", file=sys.stderr)
    return 130 if cancel.is_set() else 0


def cmd_runs(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    runs = store.list_runs(args.session, args.limit)
    if not runs:
        print(f"no runs in {store.url}", file=sys.stderr)
        return 0
    print(f"{'run':<12}  {'created (UTC)':<19}  {'status':<11}  {'tokens':>6}  {'coefs':<16}  {'model':<22}  prompt")
    for r in runs:
        coefs = ",".join(f"{c:+g}" for c in r.coefs) or "-"
        prompt = r.prompt.replace("\n", " ")
        print(f"{r.id:<12}  {r.created:%Y-%m-%d %H:%M:%S}  {r.status:<11}  {r.tokens:>6}  {coefs[:16]:<16}  "
              f"{r.model_id[:22]:<22}  {prompt[:60]}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from steer_ui.log.archive import export

    paths = export(_open_store(args.db), args.out, args.format, session_id=args.session, run_id=args.run)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from steer_ui.log.archive import import_jsonl

    imported, skipped = import_jsonl(_open_store(args.db), args.file)
    print(f"imported {imported} runs" + (f", skipped {skipped} already present" if skipped else ""), file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from steer_ui.log.archive import replay_settings
    from steer_ui.model.loading import load_model

    store = _open_store(args.db)
    model_id, settings = replay_settings(store, args.run)
    if not args.jsonl:
        print(f"replaying run {args.run}: loading {model_id} ...", file=sys.stderr, flush=True)
    lm = load_model(model_id, device=args.device, dtype=args.dtype)
    return _run_and_log(lm, settings, store, args.jsonl)


def cmd_vector(args: argparse.Namespace) -> int:
    from steer_ui.vectors.presets import build_pairs, load_template
    from steer_ui.vectors.contrastive import METHODS, compute_vector, read_pairs_jsonl
    from steer_ui.model.loading import load_model
    from steer_ui.cli.printer import print_vector_report
    from steer_ui.engine.run_settings import parse_layers

    if args.method not in METHODS:
        raise UserError(f"unknown method {args.method!r}: use {', '.join(METHODS)}")
    if Path(args.out).suffix.lower() not in (".gguf", ".safetensors"):
        raise UserError(f"--out must end in .gguf or .safetensors, got {args.out!r}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    layers = parse_layers(args.layers)
    pairs = read_pairs_jsonl(args.pairs) if args.pairs else None
    template = load_template(args.preset) if args.preset else None
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    if template is not None:
        pairs = build_pairs(lm, template)
    chosen = list(layers) if layers is not None else list(range(lm.n_layers))
    source = f"preset:{args.preset}" if args.preset else Path(args.pairs).name
    with _progress_bar(f"reading {len(pairs) * 2} texts") as progress:
        computed = compute_vector(lm, pairs, chosen, args.method, args.batch_size, progress, source)
    from steer_ui.vectors.vector import save_vector

    path = save_vector(computed.vector, args.out)
    print_vector_report(sys.stdout, computed.vector, lm)
    print(f"wrote {path} ({len(chosen)} layers, {args.method}, {len(pairs)} pairs)", file=sys.stderr)
    return 0


def cmd_inspect_vector(args: argparse.Namespace) -> int:
    from steer_ui.model.loading import load_model
    from steer_ui.cli.printer import print_vector_report
    from steer_ui.vectors.vector import load_vector

    vector = load_vector(args.file)
    lm = load_model(args.model, device=args.device, dtype=args.dtype) if args.model else None
    if lm is not None:
        vector.check_against(lm.n_layers, lm.hidden_size, None)
    print_vector_report(sys.stdout, vector, lm)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from steer_ui.model.loading import compile_model, load_model
    from steer_ui.experiments.questions import load_questions
    from steer_ui.engine.run_settings import Scope, parse_layers
    from steer_ui.experiments.sweep import SweepConfig, run_sweep, summary_table
    from steer_ui.vectors.vector import load_vector

    coefs = tuple(_float_list(args.coefs))
    config = SweepConfig(
        questions=load_questions(args.questions), coefs=coefs, max_new_tokens=args.max_new_tokens,
        vector=load_vector(_vector_path(args.vector, args.model)) if args.vector else None,
        layers=parse_layers(args.layers), scope=Scope.parse(args.scope), samples=args.samples,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, probe_every=args.probe_every,
        system=args.system,
        label={"model": args.model, "vector_source": args.vector, "questions_source": args.questions,
               "title": f"{args.model} | {args.vector or 'no vector'} | {args.questions}"},
    )
    config.validate()
    store = None if args.no_log else _open_store(args.db)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.compile:
        compile_model(lm)
    if config.vector is not None:
        config.vector.check_against(lm.n_layers, lm.hidden_size, config.layers)
    with _progress_bar(f"{len(config.questions)} questions x {len(coefs)} coefs", unit="run") as progress:
        result = run_sweep(lm, config, args.out, store, progress)
    print(summary_table(result.summary))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(p.name for p in result.files)} in {result.out}", file=sys.stderr)
    return 0


def _float_list(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        if part.strip():
            try:
                out.append(float(part))
            except ValueError:
                raise UserError(f"cannot read coefficient {part.strip()!r}: write them like '-4,0,4'") from None
    return out


def cmd_analyze(args: argparse.Namespace) -> int:
    import json as _json

    from steer_ui.experiments.analysis import analyse, report, rollout_values
    from steer_ui.experiments.analysis import figure as step_figure
    from steer_ui.log.archive import record_events, replay_settings, run_record
    from steer_ui.model.loading import load_model
    from steer_ui.experiments.questions import Question, kind_of
    from steer_ui.views.run_view import RunView

    store = _open_store(args.db)
    record = run_record(store, store.get_run(args.run))
    model_id, settings = replay_settings(store, args.run)
    if args.rollouts and not args.answer:
        raise UserError("--rollouts needs --answer (the right answer, to score each continuation)")
    lm = load_model(model_id, device=args.device, dtype=args.dtype)
    view = RunView(args.run, lm.profile.think_close)
    for event in record_events(record, lm.tokenizer):
        view.apply(event)
    rows = view.rows if args.row is None else [r for r in view.rows if r.row == args.row]
    if not rows:
        raise UserError(f"run {args.run} has no row {args.row} (rows 0-{len(view.rows) - 1})")
    out, figures = [], []
    for r in rows:
        result = analyse(r.pieces, r.steps, r.logodds, r.mass, r.reliable, args.commit, args.drop)
        if args.rollouts:
            question = Question("q", settings.prompt, args.answer, kind_of(args.answer))
            with _progress_bar(f"rollouts for {r.display_label}", unit="step") as progress:
                result = rollout_values(lm, record["prompt_text"], result, question, args.rollouts,
                                        args.rollout_tokens, settings, r.coef, progress)
        print(report(result, r.display_label))
        print()
        figures.append(step_figure(result, r.display_label))
        out.append({"row": r.row, "label": r.label, "coef": r.coef, "first_flag": result.first_flag,
                    "emergence": result.emergence, "steps": [s.__dict__ for s in result.steps]})
    if args.json:
        Path(args.json).write_text(_json.dumps({"run": args.run, "rows": out}, indent=1), encoding="utf-8")
    if args.plot:
        _write_plot(figures, Path(args.plot), f"run {args.run}")
    return 0


def _write_plot(figures: list[dict], path: Path, title: str) -> None:
    import plotly.graph_objects as go

    fig = go.Figure(figures[0])
    for extra in figures[1:]:
        fig.add_traces(extra["data"])
    fig.update_layout(title_text=f"{title}: probe at step boundaries (x = flagged step, dashed = answer emerges)")
    if path.suffix.lower() == ".png":
        from steer_ui.experiments.sweep import find_browser

        find_browser()
        try:
            fig.write_image(path, width=1000, height=420, scale=2)
        except Exception as err:  # noqa: BLE001 - kaleido or its browser missing
            raise UserError(f"cannot write {path} ({type(err).__name__}); write .html instead") from None
    else:
        fig.write_html(path, include_plotlyjs=True)
    print(f"wrote {path}", file=sys.stderr)


@contextmanager
def _progress_bar(desc: str, unit: str = "text") -> Iterator[Callable[[int, int], None]]:
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, file=sys.stderr, disable=None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _join_negative_lists(argv: list[str]) -> list[str]:
    """``--coefs -4,0,4`` as ``--coefs=-4,0,4``: argparse takes '-4,0,4' for an option otherwise."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--coefs" and re.match(r"-\d|-\.\d", arg):
            out[-1] = f"--coefs={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_negative_lists(sys.argv[1:] if argv is None else argv))
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # retry chatter; our own error line says what went wrong
    try:
        commands = {"generate": cmd_generate, "vector": cmd_vector, "inspect-vector": cmd_inspect_vector,
                    "runs": cmd_runs, "export": cmd_export, "import": cmd_import, "replay": cmd_replay,
                    "sweep": cmd_sweep, "analyze": cmd_analyze}
        return commands[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head` closed stdout: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
