"""``vector`` (compute one from contrastive pairs or a preset) and ``inspect-vector``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steer_ui.cli.options import add_model, progress_bar
from steer_ui.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vector", help="compute a steering vector from contrastive pairs or a preset")
    add_model(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help='JSONL file, one {"positive": ..., "negative": ...} a line')
    src.add_argument("--preset", help="a shipped behaviour: reconsideration, verbosity, confidence")
    p.add_argument("--method", default="mean_diff", help="mean_diff | pca_diff | pca_center")
    p.add_argument("--layers", default="all", help="'8-14', '3,5,7' or 'all'")
    p.add_argument("--out", required=True, help="FILE.gguf (repeng / llama.cpp) or FILE.safetensors (with metadata)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_vector)

    q = sub.add_parser("inspect-vector", help="layers, norms, separation and logit-lens tokens of a vector file")
    q.add_argument("file")
    add_model(q, model=False)
    q.add_argument("--model", default=None, help="also check it against this model and show logit-lens tokens")
    q.set_defaults(func=cmd_inspect_vector)


def cmd_vector(args: argparse.Namespace) -> int:
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
