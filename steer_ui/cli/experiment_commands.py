"""``sweep`` (every question at every coefficient) and ``analyze`` (where a logged run's reasoning went wrong)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steer_ui.cli.options import (COMPILE_HELP, add_db, add_knobs, add_model, attach_fast_path, ctrl_c_sets,
                                  form_from_args, progress_bar)
from steer_ui.cli.run_commands import open_store
from steer_ui.engine.knobs import KNOBS
from steer_ui.errors import UserError

# Sweeps read the probe at every token: Yes/No for yes/no questions, P(gold) for the others.
SWEEP_DEFAULTS = {"probe_every": 1}
# Knobs a sweep sets itself (the question, its gold answer, --coefs) or does not take.
PER_QUESTION = ("prompt", "probe_gold", "coefs", "rows")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="every question on every arm (coefficients, budgets): accuracy and "
                       "chain-of-thought length, paired against the baseline")
    add_model(p)
    p.add_argument("--coefs", default=None, help="comma-separated, e.g. '-4,-2,0,2,4' (0 is the baseline): "
                   "shorthand for the arms of --vector at each coefficient")
    p.add_argument("--arm", action="append", default=[], metavar="SPEC",
                   help="an arm (repeat): baseline, VECTOR=COEF[@LAYERS][/SCOPE], budget:min=N[,wait=TEXT], "
                        "budget:max=N[,cue=TEXT], or both: VECTOR=COEF/SCOPE+budget:min=N")
    p.add_argument("--questions", required=True,
                   help='JSONL file of {"question": ..., "answer": ...}, or a generated set: yesno, '
                        "wordproblems (optionally with a size: yesno:40)")
    p.add_argument("--samples", type=int, default=1, help="samples per question and coefficient (needs --temperature)")
    add_knobs(p, [k.name for k in KNOBS if k.name not in PER_QUESTION], SWEEP_DEFAULTS)
    p.add_argument("--out", required=True, help="folder for results.csv, summary.csv/.txt/.json, figure.html/.png "
                   "(per coefficient) and pareto.html/.png (accuracy against tokens, per arm)")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the questions on Ray workers, each holding the model: a local Ray instance (or the "
                        "cluster in RAY_ADDRESS), or the cluster at ADDRESS (auto, ray://host:10001, host:6379); "
                        "needs pip install 'steer-ui[ray]'")
    p.add_argument("--workers", type=int, default=None,
                   help="with --ray: how many workers (default: one per GPU in the cluster; 1 on CPUs, which the "
                        "workers split between them)")
    p.add_argument("--jsonl", action="store_true",
                   help="stdout: a JSON progress event per finished question ({event, done, total}; on Ray also "
                        "failed and each worker's tokens/s), then the summary as one event")
    add_db(p, no_log=True)
    p.set_defaults(func=cmd_sweep)

    q = sub.add_parser("analyze", help="where did the reasoning go wrong: the probe at each step of a logged run")
    q.add_argument("run")
    q.add_argument("--row", type=int, default=None, help="row to analyze (default: every row)")
    q.add_argument("--commit", type=float, default=2.0, help="|log-odds| at which the answer counts as emerged")
    q.add_argument("--drop", type=float, default=2.0, help="a fall in log-odds this large flags a step")
    q.add_argument("--rollouts", type=int, default=0,
                   help="K continuations sampled from each step to estimate its value (needs a right answer)")
    q.add_argument("--rollout-tokens", type=int, default=128)
    q.add_argument("--answer", default=None, help="the right answer, to score rollouts and read P(gold) (default: "
                   "the run's gold answer, when it was run with --gold)")
    q.add_argument("--collapse", type=float, default=0.5,
                   help="P(gold) collapses where it falls below this share of its peak so far")
    q.add_argument("--json", default=None, help="also write the analysis to this JSON file")
    q.add_argument("--plot", default=None, help="also write the step chart: FILE.html (or FILE.png with kaleido)")
    add_model(q, model=False)
    add_db(q)
    q.set_defaults(func=cmd_analyze)


def sweep_config(args: argparse.Namespace):
    """The sweep the arguments describe, checked before any model loads."""
    from steer_ui.engine.knobs import BY_NAME, parse_coefs
    from steer_ui.engine.run_settings import settings_from_form
    from steer_ui.experiments.arms import arms_from_specs
    from steer_ui.experiments.questions import load_questions
    from steer_ui.experiments.sweep import SweepConfig
    from steer_ui.vectors.presets import resolve_vector

    # --coefs is the sweep's own option (one text), not the coefs knob: the template has no steered rows.
    form = {k: v for k, v in form_from_args(args).items() if k not in PER_QUESTION}
    template = settings_from_form({**form, "prompt": "(each question)", "vector": None}, lambda spec: None)
    layers, scope = BY_NAME["layers"].read(form["layers"]), BY_NAME["scope"].read(form["scope"])
    return SweepConfig(
        questions=load_questions(args.questions), coefs=parse_coefs(args.coefs), template=template,
        vector=resolve_vector(form["vector"], args.model) if form["vector"] else None,
        layers=layers, scope=scope, samples=args.samples,
        extra_arms=tuple(arms_from_specs(args.arm, lambda name: resolve_vector(name, args.model), layers, scope)),
        label={"model": args.model, "vector_source": form["vector"], "questions_source": args.questions,
               "title": f"{args.model} | {form['vector'] or 'no vector'} | {args.questions}"})


def cmd_sweep(args: argparse.Namespace) -> int:
    import threading

    from steer_ui.experiments.sweep_report import summary_table

    config = sweep_config(args)
    config.validate()
    if args.workers is not None and args.ray is None:
        raise UserError("--workers is for --ray (workers on a Ray cluster)")
    store = None if args.no_log else open_store(args.db)
    cancel = threading.Event()
    desc = f"{len(config.questions)} questions x {len(config.arms)} arms"
    with progress_bar(desc, unit="run") as bar, ctrl_c_sets(cancel):
        def progress(event: dict) -> None:
            """A question finished (or the count at the start): the bar, and with --jsonl the event."""
            bar(event["done"], event["total"], event.get("line", ""))
            if args.jsonl:
                print(json.dumps({k: v for k, v in event.items() if k != "line"}), flush=True)

        result = (_sweep_on_ray(args, config, store, progress, cancel) if args.ray is not None
                  else _sweep_here(args, config, store, progress, cancel))
    if args.jsonl:
        print(json.dumps({"event": "summary", **json.loads((result.out / "summary.json").read_text())}))
    else:
        print(summary_table(result.summary))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(p.name for p in result.files)} in {result.out}", file=sys.stderr)
    return 130 if cancel.is_set() else 0


def _sweep_here(args: argparse.Namespace, config, store, progress, cancel):
    from steer_ui.experiments.sweep import run_sweep
    from steer_ui.model.loading import load_model

    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    attach_fast_path(lm, args.compile, getattr(args, "eager", False))
    if config.vector is not None:
        config.vector.check_against(lm.n_layers, lm.hidden_size, config.layers)
    return run_sweep(lm, config, args.out, store,
                     lambda done, total: progress({"event": "progress", "done": done, "total": total}), cancel=cancel)


def _sweep_on_ray(args: argparse.Namespace, config, store, progress, cancel):
    from steer_ui.experiments.cluster import Cluster, run_sweep_on_ray

    if args.compile:
        raise UserError("--compile (compiled steps on CPU) is for a sweep in this process; Ray workers use "
                        "compiled steps on GPUs, as a sweep in process does, and decode eagerly on CPUs")
    print(f"starting Ray workers for {args.model} ...", file=sys.stderr, flush=True)
    return run_sweep_on_ray(config, args.out, args.model, Cluster(args.ray or None, args.workers), args.device,
                            args.dtype, store, cancel=cancel,
                            on_start=lambda line: print(f"sweep {line}", file=sys.stderr, flush=True),
                            on_unit=progress)


def cmd_analyze(args: argparse.Namespace) -> int:
    from steer_ui.experiments.analysis import agreement, analyze, no_rollouts, report, rollout_values
    from steer_ui.experiments.analysis import figure as step_figure
    from steer_ui.experiments.questions import Question, kind_of
    from steer_ui.log.archive import record_events, replay_settings, run_record
    from steer_ui.model.loading import load_model
    from steer_ui.views.run_view import RunView

    store = open_store(args.db)
    record = run_record(store, store.get_run(args.run))
    model_id, settings = replay_settings(store, args.run)
    answer = args.answer or settings.probe_gold
    if args.rollouts and not answer:
        raise UserError("--rollouts needs --answer (the right answer, to score each continuation), or a run "
                        "logged with --gold")
    lm = load_model(model_id, device=args.device, dtype=args.dtype)
    view = RunView(args.run, lm.profile.think_close)
    for event in record_events(record, lm.tokenizer):
        view.apply(event)
    rows = view.rows if args.row is None else [r for r in view.rows if r.row == args.row]
    if not rows:
        raise UserError(f"run {args.run} has no row {args.row} (rows 0-{len(view.rows) - 1})")
    if answer and _p_gold(rows[0], answer) is None:
        print(f"note: this run's probe did not read {answer!r}, so there is no P(gold) curve; log the run with "
              f"--gold {answer!r} to get one", file=sys.stderr)
    out, figures = [], []
    for r in rows:
        result = analyze(r.pieces, r.steps, r.logodds, r.mass, r.reliable, args.commit, args.drop,
                         _p_gold(r, answer) if answer else None, args.collapse)
        steered = settings.rows[r.row - 1] if r.row > 0 else None
        if args.rollouts and no_rollouts(steered) is not None:
            print(f"note: no rollouts for {r.display_label}: {no_rollouts(steered)}", file=sys.stderr)
        elif args.rollouts:
            question = Question("q", settings.prompt, answer, kind_of(answer))
            with progress_bar(f"rollouts for {r.display_label}", unit="step") as progress:
                result = rollout_values(lm, record["prompt_text"], result, question, args.rollouts,
                                        args.rollout_tokens, settings, steered, progress)
        print(report(result, r.display_label))
        print()
        figures.append(step_figure(result, r.display_label))
        agree = agreement(result)
        out.append({"row": r.row, "label": r.label, "coef": r.coef, "first_flag": result.first_flag,
                    "emergence": result.emergence, "collapse": result.collapse,
                    "agreement": agree.__dict__ if agree else None, "steps": [s.__dict__ for s in result.steps]})
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "rows": out}, indent=1), encoding="utf-8")
    if args.plot:
        _write_plot(figures, Path(args.plot), f"run {args.run}")
    return 0


def _p_gold(row, answer: str) -> list[float] | None:
    """The probability of ``answer`` at each of ``row``'s readings (None when the probe did not read it)."""
    import math

    key = answer.strip().lower()
    labels = {label.strip().lower(): label for label in (row.logprobs[0] if row.logprobs else {})}
    if key not in labels:
        return None
    return [math.exp(lp[labels[key]]) for lp in row.logprobs]


def _write_plot(figures: list[dict], path: Path, title: str) -> None:
    import plotly.graph_objects as go

    fig = go.Figure(figures[0])
    for extra in figures[1:]:
        fig.add_traces(extra["data"])
    fig.update_layout(title_text=f"{title}: probe at step boundaries (x = flagged step, dashed = answer emerges)")
    if path.suffix.lower() == ".png":
        from steer_ui.experiments.sweep_report import find_browser

        find_browser()
        try:
            fig.write_image(path, width=1000, height=420, scale=2)
        except Exception as err:  # noqa: BLE001 - kaleido or its browser missing
            raise UserError(f"cannot write {path} ({type(err).__name__}); write .html instead") from None
    else:
        fig.write_html(path, include_plotlyjs=True)
    print(f"wrote {path}", file=sys.stderr)
