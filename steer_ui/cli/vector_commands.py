"""``vector`` (compute one from contrastive pairs or a preset) and ``inspect-vector``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steer_ui.cli.options import add_model, progress_bar
from steer_ui.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vector", help="compute a steering vector from contrastive pairs or a preset, or train "
                                      "one from examples (--method trained --data FILE.jsonl)")
    add_model(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help='JSONL file, one {"positive": ..., "negative": ...} a line')
    src.add_argument("--preset", help="a shipped behaviour: reconsideration, verbosity, confidence")
    src.add_argument("--data", help='--method trained: JSONL file, one {"prompt": ..., "completion": ...} or '
                                    '{"prompt": ..., "chosen": ..., "rejected": ...} a line')
    p.add_argument("--method", default="mean_diff", help="mean_diff | pca_diff | pca_center | trained")
    p.add_argument("--layers", default="all", help="'8-14', '3,5,7' or 'all'")
    p.add_argument("--out", required=True, help="FILE.gguf (repeng / llama.cpp) or FILE.safetensors (with metadata)")
    p.add_argument("--batch-size", type=int, default=None, help="texts per forward (default 16); trained: "
                                                                 "examples per step")
    # Trained vectors' defaults are TrainConfig's (steer_ui/vectors/training.py), tuned on the bundled model.
    t = p.add_argument_group("trained vectors (--method trained)")
    t.add_argument("--steps", type=int, help="optimizer steps at most")
    t.add_argument("--lr", type=float, help="Adam's learning rate")
    t.add_argument("--seed", type=int, help="the shuffle, the held-out split and the batches")
    t.add_argument("--holdout", type=float, help="share of examples held out for early stopping (0: none)")
    t.add_argument("--beta", type=float, help="chosen/rejected examples: DPO's beta")
    p.set_defaults(func=cmd_vector)

    q = sub.add_parser("inspect-vector", help="layers, norms, separation and logit-lens tokens of a vector file")
    q.add_argument("file")
    add_model(q, model=False)
    q.add_argument("--model", default=None, help="also check it against this model and show logit-lens tokens")
    q.set_defaults(func=cmd_inspect_vector)


def cmd_vector(args: argparse.Namespace) -> int:
    if args.method == "trained" or args.data:
        return cmd_train_vector(args)
    from steer_ui.cli.printer import print_vector_report
    from steer_ui.model.loading import load_model
    from steer_ui.vectors.contrastive import METHODS, compute_vector, read_pairs_jsonl
    from steer_ui.vectors.files import save_vector
    from steer_ui.vectors.layers import parse_layers
    from steer_ui.vectors.presets import build_pairs, load_template

    if args.method not in METHODS:
        raise UserError(f"unknown method {args.method!r}: use {', '.join(METHODS)}")
    if Path(args.out).suffix.lower() not in (".gguf", ".safetensors"):
        raise UserError(f"--out must end in .gguf or .safetensors, got {args.out!r}")
    args.batch_size = 16 if args.batch_size is None else args.batch_size
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
    with progress_bar(f"reading {len(pairs) * 2} texts") as progress:
        computed = compute_vector(lm, pairs, chosen, args.method, args.batch_size, progress, source)
    path = save_vector(computed.vector, args.out)
    print_vector_report(sys.stdout, computed.vector, lm)
    print(f"wrote {path} ({len(chosen)} layers, {args.method}, {len(pairs)} pairs)", file=sys.stderr)
    return 0


def cmd_train_vector(args: argparse.Namespace) -> int:
    """``vector --method trained --data FILE``: learn one bias per layer; Ctrl-C keeps the best so far."""
    from steer_ui.cli.printer import print_vector_report
    from steer_ui.model.loading import load_model
    from steer_ui.vectors.examples import read_examples_jsonl
    from steer_ui.vectors.files import save_vector
    from steer_ui.vectors.layers import parse_layers
    from steer_ui.vectors.training import TrainConfig

    if args.method != "trained" or not args.data:
        raise UserError("training takes --method trained with --data FILE.jsonl (pairs and presets are for "
                        "mean_diff, pca_diff and pca_center)")
    if Path(args.out).suffix.lower() not in (".gguf", ".safetensors"):
        raise UserError(f"--out must end in .gguf or .safetensors, got {args.out!r}")
    examples = read_examples_jsonl(args.data)
    layers = parse_layers(args.layers)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    chosen = tuple(layers) if layers is not None else tuple(range(lm.n_layers))
    given = {k: getattr(args, k) for k in ("steps", "lr", "batch_size", "seed", "holdout", "beta")}
    config = TrainConfig(chosen, **{k: v for k, v in given.items() if v is not None})
    config.validate(lm, len(examples))
    result = _train_with_bar(lm, examples, config, Path(args.out).stem)
    path = save_vector(result.vector, args.out)
    print_vector_report(sys.stdout, result.vector, lm)
    held = (f", held-out loss {result.heldout_loss:.3f} (unsteered {result.baseline_heldout:.3f})"
            if result.heldout_loss is not None else "")
    print(f"wrote {path} ({len(chosen)} layers, {result.vector.metadata['objective']}, {len(examples)} examples, "
          f"{len(result.curve)} steps, {result.stopped}; best at step {result.best_step}{held})", file=sys.stderr)
    return 130 if result.stopped == "interrupted" else 0


def _train_with_bar(lm, examples, config, name: str):
    from tqdm import tqdm

    from steer_ui.vectors.training import train_vector

    bar = tqdm(total=config.steps, desc=f"training on {len(examples)} examples", unit="step", file=sys.stderr,
               disable=None)
    held = ""

    def show(p) -> None:
        nonlocal held
        if p.heldout_loss is not None:
            held = f"{p.heldout_loss:.3f}"
        bar.update(p.step - bar.n)
        bar.set_postfix_str(f"train {p.train_loss:.3f}" + (f" held-out {held}" if held else ""))

    try:
        return train_vector(lm, examples, config, name, progress=show)
    finally:
        bar.close()


def cmd_inspect_vector(args: argparse.Namespace) -> int:
    from steer_ui.cli.printer import print_vector_report
    from steer_ui.model.loading import load_model
    from steer_ui.vectors.files import load_vector

    vector = load_vector(args.file)
    lm = load_model(args.model, device=args.device, dtype=args.dtype) if args.model else None
    if lm is not None:
        vector.check_against(lm.n_layers, lm.hidden_size, None)
    print_vector_report(sys.stdout, vector, lm)
    return 0
