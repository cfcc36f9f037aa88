"""How well does the probe's P(gold) track the rollout value of each reasoning step? (issue #18)

For each question: one greedy run with the question's answer as the probe's gold answer, read at every
token; its steps as ``analyze`` splits them; at each step's end, P(gold) from the run's own reading and
the share of K sampled continuations that end correct. Prints each question's agreement and the pooled
one over every step of every question.

    python scripts/gold_vs_rollouts.py --questions wordproblems:8 --rollouts 4
"""

from __future__ import annotations

import argparse
import math
import time

from steer_ui.engine.decode import run
from steer_ui.engine.run_settings import RunSettings
from steer_ui.experiments.analysis import Analysis, agreement, analyze, rollout_values
from steer_ui.experiments.grading import is_correct, read_answer
from steer_ui.experiments.questions import load_questions
from steer_ui.model.loading import load_model
from steer_ui.views.run_view import RunView


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--questions", default="wordproblems:8")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--rollout-tokens", type=int, default=48)
    args = p.parse_args()
    lm = load_model(args.model, device="cpu", dtype="float32")
    pooled: list[Analysis] = []
    started = time.perf_counter()
    print(f"{'question':<10} {'correct':>7} {'steps':>5} {'final P(gold)':>13} {'Pearson r':>9} {'mean |diff|':>11}")
    for q in load_questions(args.questions):
        settings = RunSettings(q.prompt(), max_new_tokens=args.max_new_tokens, probe_every=1, probe_gold=q.answer)
        view = RunView(q.id, lm.profile.think_close)
        for event in run(lm, settings):
            view.apply(event)
        row = view.rows[0]
        p_gold = [math.exp(lp[q.answer]) for lp in row.logprobs]
        steps = analyze(row.pieces, row.steps, row.logodds, row.mass, row.reliable, p_gold=p_gold)
        valued = rollout_values(lm, _prompt_text(lm, settings), steps, q, args.rollouts,
                                args.rollout_tokens, settings, None)
        pooled.append(valued)
        agree = agreement(valued)
        right = is_correct(read_answer(row.text, q.kind).value, q)
        r = f"{agree.pearson:+.2f}" if agree and agree.pearson is not None else "-"
        diff = f"{agree.mean_abs_diff:.2f}" if agree else "-"
        print(f"{q.id:<10} {str(right):>7} {len(valued.steps):>5} {p_gold[-1]:>13.3f} {r:>9} {diff:>11}",
              flush=True)
    merged = Analysis([s for a in pooled for s in a.steps], None, None, 0, 0)
    agree = agreement(merged)
    r = f"{agree.pearson:+.2f}" if agree.pearson is not None else "- (needs 3 steps and neither constant)"
    print(f"pooled over {agree.n} steps of {len(pooled)} questions: Pearson r {r}, mean |P(gold) - value| "
          f"{agree.mean_abs_diff:.2f}; mean P(gold) {sum(s.p_gold for s in merged.steps) / agree.n:.3f}, "
          f"mean rollout value {sum(s.value for s in merged.steps) / agree.n:.3f} "
          f"({time.perf_counter() - started:.0f} s)")


def _prompt_text(lm, settings: RunSettings) -> str:
    from steer_ui.engine.plan import render_prompt

    return render_prompt(lm, settings)[0]


if __name__ == "__main__":
    main()
