"""Trained against mean-difference vectors on the same behaviour and the same held-out examples.

    python scripts/trained_vs_mean_diff.py [assets/examples/in-short.jsonl] [--layers 10-13]

Both vectors see only the training split (the default 80%, seed 0; the held-out 20% is what the trained
vector's early stopping reads and what is scored here). The mean-difference vector comes from pairs of
the same prompt with the completion as written (positive) and with its opening phrase removed
(negative), read at the last token like every contrastive vector ("whole replies"); a second one from
the prompt followed by just the phrase against the prompt followed by the plain answer's first two
words ("openers", the state where the reply's opening is decided). Scored: the held-out completions'
log-likelihood (nats per example) against the unsteered model, at coefficient 1 for the trained vector
and at the best of several coefficients for the mean-difference one, and how many greedy replies to
the held-out prompts open with the phrase.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from steer_ui.engine.decode import run  # noqa: E402
from steer_ui.engine.events import DoneEvent  # noqa: E402
from steer_ui.engine.plan import render_prompt  # noqa: E402
from steer_ui.engine.run_settings import RunSettings, steered  # noqa: E402
from steer_ui.model.loading import load_model  # noqa: E402
from steer_ui.vectors.contrastive import Pair, compute_vector  # noqa: E402
from steer_ui.vectors.examples import read_examples_jsonl  # noqa: E402
from steer_ui.vectors.layers import parse_layers  # noqa: E402
from steer_ui.vectors.training import (  # noqa: E402
    TrainConfig,
    _encode,
    _token_logprobs,
    biased,
    split,
    train_vector,
)

COEFS = (0.5, 1, 2, 4, 8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default="assets/examples/in-short.jsonl")
    ap.add_argument("--layers", default="10-13")
    ap.add_argument("--phrase", default="In short: ")
    args = ap.parse_args()
    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    examples = read_examples_jsonl(args.data)
    layers = parse_layers(args.layers, lm.n_layers)
    train_idx, held_idx = split(len(examples), TrainConfig(layers).holdout, 0)
    held = [examples[i] for i in held_idx]

    started = time.perf_counter()
    trained = train_vector(lm, examples, TrainConfig(layers)).vector
    train_s = time.perf_counter() - started
    whole, opener = [], []
    for i in train_idx:
        e = examples[i]
        text, _, _ = render_prompt(lm, RunSettings(prompt=e.prompt))
        plain = e.completion.removeprefix(args.phrase)
        whole.append(Pair(text + e.completion, text + plain))
        opener.append(Pair(text + args.phrase.strip(), text + " ".join(plain.split()[:2])))
    contrastive = {"whole replies": compute_vector(lm, whole, layers, "mean_diff").vector,
                   "openers": compute_vector(lm, opener, layers, "mean_diff").vector}

    def loglik(vec, coef: float) -> float:
        scaled = {x: coef * v for x, v in vec.directions.items()} if vec is not None else {}
        with torch.no_grad(), biased(lm, scaled):
            return sum(float(_token_logprobs(lm, [_encode(lm, e.prompt, e.completion, 1024)])[0])
                       for e in held) / len(held)

    def opens(vec, coef: float) -> int:
        count = 0
        for e in held:
            settings = RunSettings(e.prompt, rows=steered(vec, (coef,)), max_new_tokens=6, probe_every=0)
            done = [ev for ev in run(lm, settings) if isinstance(ev, DoneEvent)][0]
            count += done.rows[1].text.startswith(args.phrase.strip())
        return count

    base = loglik(None, 0)
    print(f"{len(train_idx)} training and {len(held)} held-out examples, layers {args.layers}; "
          f"training took {train_s:.0f} s")
    print(f"unsteered: held-out log-likelihood {base:.2f} nats per example")
    print(f"trained, coef 1: {loglik(trained, 1) - base:+.2f} nats per example, "
          f"{opens(trained, 1)}/{len(held)} replies open with {args.phrase.strip()!r}")
    for what, vec in contrastive.items():
        for coef in COEFS:
            print(f"mean_diff ({what}), coef {coef}: {loglik(vec, coef) - base:+.2f} nats per example, "
                  f"{opens(vec, coef)}/{len(held)} replies open with {args.phrase.strip()!r}")


if __name__ == "__main__":
    main()
