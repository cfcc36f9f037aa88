"""Sweeps on a Ray cluster: the in-process sweep's units, run by Ray actors that each load the model once.

The unit is the in-process sweep's (``sweep.Unit``: a question's sample with all its pending arms as rows
of one batch), run by the same engine and scored by the same function, so a greedy sweep gives the same
rows on Ray as in process. Only this driver writes: results.csv (``sweep_files``), the summary, the
figures, the session log and ``workers.json``.

What travels to a worker: the model by name (a hub id, or a path that exists on the workers), each vector
as the bytes of its own format (``SteeringVector.to_bytes``, once per worker), and per unit the question,
its settings as the session log's JSON (vectors named by content hash) and its arms' names. What comes
back: the engine's events (for the session log), the scored rows and the worker's timing.

Faults: an actor that dies (killed, out of memory, node lost) is restarted by Ray (``WORKER_RESTARTS``)
and its unit retried (``UNIT_RETRIES``); a unit that kills workers past that, or fails for a reason in its
input (an error the engine or the grader raises), is written to failed.jsonl and not retried in this run. Ctrl-C (or
``cancel``) stops the driver: units in flight are dropped with their actors, finished ones are kept, a Ray
instance started here is shut down, and the next run resumes.

Why Ray: it is what the field schedules models with (NDIF, Ray Data LLM, vLLM deployments), it runs on a
laptop, on ``ray start`` machines, on KubeRay and under SkyPilot, and it already restarts dead actors and
retries their calls; a home-made scheduler would have to get all of that right again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer_ui.engine.run_settings import RunSettings
from steer_ui.errors import UserError
from steer_ui.experiments.sweep import Progress, SweepConfig, Unit
from steer_ui.experiments.sweep_files import SweepFolder, SweepResult

RAY_MISSING = ("sweeps on a cluster need Ray: pip install 'steer-ui[ray]' (or pip install -r requirements-ray.txt "
               "from the repository)")
UNIT_RETRIES = 2  # Ray retries a unit whose worker died this many times (on the restarted worker)
# A worker is restarted this many times in a sweep: enough for lost nodes and the odd out-of-memory over days,
# not a loop on a machine where the model can never load.
WORKER_RESTARTS = 8
WAIT_S = 0.5  # how often the driver looks at Ctrl-C / cancel while units run


@dataclass(frozen=True)
class Cluster:
    """Where a sweep runs: ``address`` None is a local Ray instance on this machine (or the cluster in
    ``RAY_ADDRESS``); 'auto', 'ray://host:10001' or 'host:6379' name one. ``workers`` None: one per GPU
    in the cluster, or 1 on CPUs (CPU workers split the cores)."""

    address: str | None = None
    workers: int | None = None


@dataclass
class WorkerStats:
    """What one worker did, for the progress line and workers.json (a slow node shows here)."""

    node: str = ""
    device: str = ""
    gpus: list[str] = field(default_factory=list)  # the GPU ids Ray gave it
    units: int = 0
    tokens: int = 0
    seconds: float = 0.0  # decoding
    overhead_s: float = 0.0  # Ray's part: a unit's time at the driver (sent to result back) minus the worker's

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


class SweepWorker:
    """A Ray actor (``ray.remote(SweepWorker)``): loads the model once, then runs units."""

    def __init__(self, model: str, device: str, dtype: str, vectors: dict[str, bytes],
                 uses: list[tuple[str, list[int] | None]]):
        """``uses``: each (vector hash, layers) the arms steer with, checked against the model here, once,
        instead of failing every unit."""
        import socket

        from steer_ui.engine.fast_path import attach
        from steer_ui.model.loading import load_model
        from steer_ui.vectors.vector import SteeringVector

        self.lm = load_model(model, device=device, dtype=dtype)
        attach(self.lm)  # compiled steps on a GPU, as a sweep in process has them (none on CPUs)
        self.vectors = {h: SteeringVector.from_bytes(b, where=f"vector {h[:12]}") for h, b in vectors.items()}
        for h, layers in uses:
            self.vectors[h].check_against(self.lm.n_layers, self.lm.hidden_size, tuple(layers) if layers else None)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def info(self) -> dict:
        import ray

        return {"name": self.name, "model_id": self.lm.model_id, "device": str(self.lm.device),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, unit: dict) -> dict:
        from steer_ui.engine import worker
        from steer_ui.engine.events import TokenEvent
        from steer_ui.experiments.arms import Arm
        from steer_ui.experiments.questions import Question
        from steer_ui.experiments.sweep import gold_readable, score, without_gold

        began = time.perf_counter()
        q = Question(**unit["question"])
        settings = RunSettings.from_dict(unit["settings"], self.vectors)
        if q.kind != "yesno" and not gold_readable(self.lm, q.answer):
            settings = without_gold(settings)
        rows = iter(settings.rows)
        arms = [Arm(a["name"], next(rows) if a["steered"] else None, a["coef"]) for a in unit["arms"]]
        started = time.perf_counter()
        events = list(worker.stream(self.lm, settings))
        seconds = time.perf_counter() - started
        scored = score(Unit(q, unit["sample"], arms, unit["id"]), settings.seed, events, self.lm.profile.think_close)
        lm = self.lm
        return {"id": unit["id"], "settings": settings.to_dict(), "events": events, "rows": scored,
                "worker": self.name, "seconds": seconds, "run_s": time.perf_counter() - began,
                "tokens": sum(isinstance(e, TokenEvent) for e in events),
                "stamp": {"model_id": lm.model_id, "source": lm.source, "dtype": str(lm.dtype),
                          "device": str(lm.device)}}


def payload(unit: Unit, settings: RunSettings) -> dict:
    """A unit as plain JSON for a worker: nothing in it is unpickled from what a user typed."""
    q = unit.question
    return {"id": unit.id, "sample": unit.sample, "settings": settings.to_dict(),
            "question": {"id": q.id, "question": q.question, "answer": q.answer, "kind": q.kind},
            "arms": [{"name": a.name, "coef": a.coef, "steered": a.row is not None} for a in unit.arms]}


@dataclass
class _Driver:
    """The driver's state for one sweep: the actors, what each runs, and what came back."""

    ray: Any
    folder: SweepFolder
    record: Callable[[dict], str | None]  # logs a unit's events; returns the run id
    stats: dict[str, WorkerStats] = field(default_factory=dict)
    failed: int = 0
    ran: int = 0

    def take(self, unit: Unit, ref, latency: float) -> None:
        """A finished unit's result (or its failure) into results.csv / failed.jsonl; ``latency``: from
        sending it to its result being ready, as the driver saw it."""
        ray = self.ray
        try:
            out = ray.get(ref)
        except ray.exceptions.RayActorError as err:  # its worker died more than UNIT_RETRIES times
            self._fail(unit, f"its worker died {UNIT_RETRIES + 1} times ({type(err).__name__}); out of memory?")
            return
        except ray.exceptions.RayTaskError as err:  # raised in the worker: the input, not the machine
            self._fail(unit, why(err))
            return
        run_id = self.record(out)
        self.folder.append({**r, "run_id": run_id or "", "worker": out["worker"]} for r in out["rows"] or [])
        s = self.stats.setdefault(out["worker"], WorkerStats(node=out["worker"].rsplit(":", 1)[0],
                                                             device=out["stamp"]["device"]))
        s.units, s.tokens, s.seconds = s.units + 1, s.tokens + out["tokens"], s.seconds + out["seconds"]
        s.overhead_s += max(0.0, latency - out["run_s"])
        self.ran += 1

    def _fail(self, unit: Unit, why: str) -> None:
        self.folder.fail(unit.id, unit.question.id, unit.sample, why)
        self.failed += 1

    def line(self) -> str:
        return " | ".join(f"{name}: {s.tokens_per_s:.0f} tok/s" for name, s in sorted(self.stats.items()))


def connect(cluster: Cluster) -> tuple[Any, bool]:
    """Ray, connected; True when this call started a local instance (and must shut it down)."""
    ray = import_ray()
    if ray.is_initialized():  # a notebook's or a test session's own instance
        return ray, False
    address = cluster.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
            return ray, False
        ray.init(include_dashboard=False, log_to_driver=False)
    except ConnectionError as err:
        raise UserError(f"could not reach the Ray cluster at {address}: {str(err).splitlines()[0][:200]}") from None
    return ray, True


def worker_options(ray, workers: int | None) -> tuple[int, dict]:
    """How many workers and each one's resources: a GPU each where the cluster has GPUs, else the cores
    split between them."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if gpus:
        n = workers or gpus
        if n > gpus:
            raise UserError(f"{n} workers asked, and the cluster has {gpus} GPUs (one worker per GPU)")
        return n, {"num_gpus": 1, "num_cpus": 1}
    n = workers or 1
    if n > cpus:
        raise UserError(f"{n} workers asked, and the cluster has {cpus} CPUs (each worker needs at least one)")
    return n, {"num_cpus": cpus // n}


def run_sweep_on_ray(cfg: SweepConfig, out: str | Path, model: str, cluster: Cluster = Cluster(),
                     device: str = "auto", dtype: str = "auto", store=None, progress: Progress | None = None,
                     session_id: str | None = None, cancel: threading.Event | None = None,
                     on_start: Callable[[str], None] | None = None,
                     on_unit: Callable[[dict], None] | None = None) -> SweepResult:
    """``run_sweep``'s units on Ray workers (``Cluster``); the same folder, resume and summary.

    ``on_start`` gets the line saying where it runs; ``on_unit`` gets a progress event per finished unit
    (``{"event": "progress", "done", "total", "failed", "workers": {name: tokens/s}, "line"}``)."""
    cfg.validate()
    import_ray()  # without Ray: its one message, before anything is written
    folder = SweepFolder.open(out, cfg.fingerprint(), cfg.label)
    ray, started = connect(cluster)
    actors: list = []
    try:
        n, options = worker_options(ray, cluster.workers)
        vectors = {h: v.to_bytes() for h, v in steering_vectors(cfg).items()}
        steered = [a.row for a in cfg.arms if a.row is not None and a.row.vector is not None]
        uses = [(h, list(layers) or None)
                for h, layers in sorted({(r.vector.content_hash(), tuple(r.layers or ())) for r in steered})]
        remote = ray.remote(max_restarts=WORKER_RESTARTS, max_task_retries=UNIT_RETRIES)(SweepWorker)
        actors = [remote.options(**options).remote(model, device, dtype, vectors, uses) for _ in range(n)]
        infos = _infos(ray, actors)
        if on_start is not None:
            where = cluster.address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
            on_start(f"on {where}: {n} workers ({', '.join(i['device'] for i in infos)}), "
                     f"{_resources(options)} each")
        return _drive(ray, actors, infos, cfg, folder, store, progress, session_id, cancel, on_unit)
    finally:
        for actor in actors:
            ray.kill(actor)  # units still in flight (Ctrl-C, cancel) are dropped with their workers
        if started:
            ray.shutdown()


def steering_vectors(cfg: SweepConfig) -> dict:
    """The arms' vectors by content hash: what the workers get as bytes, and how the driver reads the
    settings they send back (``RunSettings.from_dict`` names vectors by hash)."""
    return {a.row.vector.content_hash(): a.row.vector for a in cfg.arms if a.row is not None and a.row.vector}


def _infos(ray, actors: list) -> list[dict]:
    try:
        return ray.get([a.info.remote() for a in actors])
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:  # e.g. no such model there
        raise UserError(f"a worker could not start: {why(err)}") from None


def why(err: BaseException) -> str:
    """The one line that says what went wrong in a worker (Ray's message ends with the remote error)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.split("UserError: ", 1)[1] if "UserError: " in last else last[:300]


def _resources(options: dict) -> str:
    """{"num_gpus": 1, "num_cpus": 1} -> '1 GPU and 1 CPU'."""
    parts = [f"{v} {'GPU' if k == 'num_gpus' else 'CPU'}{'s' if v != 1 else ''}" for k, v in options.items()]
    return " and ".join(parts)


def _drive(ray, actors: list, infos: list[dict], cfg: SweepConfig, folder: SweepFolder, store, progress,
           session_id, cancel, on_unit) -> SweepResult:
    from steer_ui.log.recorder import ModelStamp, RunRecorder

    todo = cfg.units(folder.done(), infos[0]["model_id"])
    total = len(cfg.questions) * cfg.samples
    session = (session_id or store.new_session("sweep", str(folder.path)[:200])) if store is not None else None
    vectors = steering_vectors(cfg)

    def record(out: dict) -> str | None:
        if store is None:
            return None
        settings = RunSettings.from_dict(out["settings"], vectors)
        recorder = RunRecorder(store, session, ModelStamp(**out["stamp"]), settings)
        for event in out["events"]:
            recorder(event)
        recorder.close()
        return recorder.run_id

    driver = _Driver(ray, folder, record, {i["name"]: WorkerStats(i["name"].rsplit(":", 1)[0], i["device"],
                                                                       i["gpus"]) for i in infos})
    pending, idle, inflight = list(todo), list(actors), {}
    if progress is not None:
        progress(total - len(todo), total)
    stopped = False
    try:
        while pending or inflight:
            if cancel is not None and cancel.is_set():
                stopped = True
                break
            while idle and pending:
                unit, actor = pending.pop(0), idle.pop(0)
                work = payload(unit, cfg.run_settings(unit.question, unit.sample, unit.arms))
                inflight[actor.run.remote(work)] = (unit, actor, time.perf_counter())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                unit, actor, sent = inflight.pop(ref)
                idle.append(actor)
                driver.take(unit, ref, time.perf_counter() - sent)
                done = total - len(todo) + driver.ran + driver.failed
                if progress is not None:
                    progress(done, total)
                if on_unit is not None:
                    on_unit({"event": "progress", "done": done, "total": total, "failed": driver.failed,
                             "workers": {k: round(s.tokens_per_s, 1) for k, s in driver.stats.items()},
                             "line": driver.line()})
    except KeyboardInterrupt:
        stopped = True
    _write_workers(folder.path, driver.stats)
    notes = [f"{driver.failed} units failed (see failed.jsonl; the next run tries them again)"] if driver.failed else []
    notes.append("workers: " + (driver.line() or "none finished a unit"))
    return folder.finish(cfg.arms, cfg.questions, cfg.label.get("title", ""), total, len(todo),
                         driver.ran + driver.failed if not stopped else driver.ran, notes)


def _write_workers(path: Path, stats: dict[str, WorkerStats]) -> None:
    """workers.json: which worker ran how many units, at what speed (for debugging a slow node)."""
    data = {name: {"node": s.node, "device": s.device, "gpus": s.gpus, "units": s.units, "tokens": s.tokens,
                   "seconds": round(s.seconds, 2), "tokens_per_s": round(s.tokens_per_s, 1),
                   "overhead_s_per_unit": round(s.overhead_s / s.units, 4) if s.units else None}
            for name, s in sorted(stats.items())}
    (path / "workers.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
