"""Sweep throughput: question-arm rows per minute in process and on 1 and 2 Ray workers, and Ray's own cost.

Each way runs the same sweep into a fresh folder: ``questions`` yes/no questions on ``arms`` (a question's
arms are one batch), ``new_tokens`` each, greedy, no session log. Measured separately: the start (Ray up,
each worker's model loaded, or the model loaded in process) and the sweep itself; and per unit, Ray's part
of it: the time from sending a unit to its result being back, minus the worker's own time on it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

ARMS = ("baseline", "budget:min=24", "reconsideration=4@15-18")


def _config(questions: int, new_tokens: int):
    from steer_ui.engine.run_settings import RunSettings
    from steer_ui.engine.scope import Scope
    from steer_ui.experiments.arms import arms_from_specs
    from steer_ui.experiments.questions import load_questions
    from steer_ui.experiments.sweep import SweepConfig
    from steer_ui.vectors.presets import resolve_vector

    arms = arms_from_specs(ARMS, lambda name: resolve_vector(name, "smollm2-135m"), None, Scope())
    return SweepConfig(questions=load_questions(f"yesno:{questions}"), coefs=(), extra_arms=tuple(arms),
                       template=RunSettings("", max_new_tokens=new_tokens, probe_every=4, ignore_eos=True))


def sweep_throughput(model: str, questions: int, new_tokens: int, workers: tuple[int, ...] = (1, 2)) -> list[dict]:
    """One line per way of running: start seconds, sweep seconds, rows a minute, Ray's overhead per unit."""
    from steer_ui.experiments.sweep import run_sweep
    from steer_ui.model.loading import load_model

    cfg = _config(questions, new_tokens)
    rows = questions * len(ARMS)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        lm = load_model(model)
        loaded = time.perf_counter()
        run_sweep(lm, cfg, Path(tmp) / "in-process")
        done = time.perf_counter()
        out.append(_line("in process", loaded - started, done - loaded, rows, None))
        del lm
        for n in workers:
            out.append(_on_ray(cfg, model, n, Path(tmp) / f"ray-{n}", rows))
    return out


def _on_ray(cfg, model: str, n: int, folder: Path, rows: int) -> dict:
    import json

    import ray

    from steer_ui.experiments.cluster import Cluster, run_sweep_on_ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    marks: dict[str, float] = {}
    try:
        run_sweep_on_ray(cfg, folder, model, Cluster(workers=n),
                         on_start=lambda line: marks.setdefault("ready", time.perf_counter()))
    finally:
        ray.shutdown()
    ended = time.perf_counter()
    stats = json.loads((folder / "workers.json").read_text())
    units = sum(w["units"] for w in stats.values())
    overhead = sum(w["overhead_s_per_unit"] * w["units"] for w in stats.values() if w["units"]) / max(units, 1)
    return _line(f"Ray, {n} worker{'s' if n > 1 else ''}", marks["ready"] - started, ended - marks["ready"], rows,
                 overhead)


def _line(way: str, start_s: float, sweep_s: float, rows: int, overhead: float | None) -> dict:
    return {"way": way, "start_s": round(start_s, 1), "sweep_s": round(sweep_s, 1),
            "rows_per_min": round(rows / sweep_s * 60, 1), "ray_overhead_ms_per_unit":
            round(overhead * 1000, 1) if overhead is not None else None}


def markdown(lines: list[dict], questions: int, new_tokens: int) -> str:
    head = (f"Sweep throughput: {questions} yes/no questions x {len(ARMS)} arms ({', '.join(ARMS)}), "
            f"{new_tokens} tokens each\n\n| way | start (s) | sweep (s) | question-arm rows / min | Ray's overhead per "
            "unit (ms) |\n|---|---|---|---|---|")
    body = [f"| {x['way']} | {x['start_s']} | {x['sweep_s']} | {x['rows_per_min']} | "
            f"{x['ray_overhead_ms_per_unit'] if x['ray_overhead_ms_per_unit'] is not None else '-'} |" for x in lines]
    return "\n".join([head, *body])
