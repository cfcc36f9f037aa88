"""The fast path on CPU: compiled steps (dynamo with a counting backend: the tracing and guards that CUDA
graphs would replay, without inductor's minutes of code generation) give the eager run's tokens and
readings, and are reused across runs: new vectors, new coefficients and a different number of rows in
the same bucket compile nothing new. The CUDA-graph replay itself is tested on a GPU (tests/gpu/)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from conftest import random_vector
from helpers import Counting, collect, wait_until

from steer_ui.engine.decode import fast_shape, run
from steer_ui.engine.events import TokenEvent
from steer_ui.engine.fast_path import (LENGTH_BUCKETS, FastPath, Shape, attach, common_shapes, length_bucket,
                                       row_bucket, shared_clone)
from steer_ui.engine.plan import plan_run
from steer_ui.engine.run_settings import RunSettings, SteeredRow, steered
from steer_ui.errors import UserError
from steer_ui.model.loading import load_model


@pytest.fixture(scope="module")
def lm(tiny_dirs):
    return load_model(str(tiny_dirs["llama"]), device="cpu", dtype="float32")


@pytest.fixture()
def fast(lm):
    torch._dynamo.reset()
    backend = Counting()
    lm.fast = FastPath(lm, backend=backend)
    lm.fast.backend = backend
    yield lm.fast
    lm.fast = None


def settings(lm, rows, prompt="Is nine a prime number?", n=16, **kw):
    return RunSettings(prompt, rows=rows, max_new_tokens=n, ignore_eos=True, probe_every=3, **kw)


def shape_of(lm, s):
    plan = plan_run(lm, s)
    return fast_shape(lm.fast, plan)


def test_buckets():
    assert [row_bucket(n) for n in (1, 2, 3, 4, 5, 16, 17)] == [1, 4, 4, 4, 8, 16, None]
    assert length_bucket(1) == LENGTH_BUCKETS[0] == 1024 and length_bucket(1025) == 2048
    assert length_bucket(10**9) is None


def test_the_clone_shares_weights_and_keeps_its_hooks_to_itself(lm):
    clone = shared_clone(lm.model)
    for (name, p), (_, q) in zip(lm.model.named_parameters(), clone.named_parameters()):
        assert p.data_ptr() == q.data_ptr(), name
    hooked = []
    clone.model.layers[0].register_forward_hook(lambda *a: hooked.append(1))
    with torch.inference_mode():
        lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert hooked == [] and not lm.model.model.layers[0]._forward_hooks


def test_compiled_steps_give_the_eager_run_and_are_reused(lm, fast):
    vectors = [random_vector(lm, [1, 2], scale=4.0, seed=s) for s in (1, 2, 3)]
    first = settings(lm, steered(vectors[0], (3.0,)))
    second = settings(lm, steered(vectors[1], (-2.0,)), "Is ten even?")
    eager = [collect(lm, replace(s, eager=True)) for s in (first, second)]
    shape = shape_of(lm, first)
    assert shape == Shape(4, 1024, plan_run(lm, first).probe_width)
    fast.warm([shape])
    compiled_after_warm = fast.backend.graphs
    assert compiled_after_warm >= 2  # the plain step and the probe step
    for s, (_, tokens_e, probes_e, done_e) in zip((first, second), eager):
        _, tokens_c, probes_c, done_c = collect(lm, s)
        assert done_c.timing.compiled and not done_e.timing.compiled
        assert [r.token_ids for r in done_c.rows] == [r.token_ids for r in done_e.rows]
        assert [(p.row, p.step) for p in probes_c] == [(p.row, p.step) for p in probes_e]
        assert max(abs(a.logodds - b.logodds) for a, b in zip(probes_c, probes_e)) < 1e-3
    # Another vector, other coefficients, another prompt length: new data, the same graphs.
    collect(lm, settings(lm, steered(vectors[2], (5.0,)), "Yes or no: is the sky green today?"))
    assert fast.backend.graphs == compiled_after_warm


def test_compiled_steps_read_multi_token_answers_as_the_eager_run_does(lm, fast):
    """Multi-token probe answers on the compiled path: their tree's mask and positions are inputs of the
    probe step's graph; tokens and every choice's reading match the eager run, and new answers of the
    same tree size compile nothing new."""
    vec = random_vector(lm, [1, 2], scale=4.0, seed=11)
    s = settings(lm, steered(vec, (3.0,)), probe_choices=("quickly", "seventeen", "seven"))
    shape = shape_of(lm, s)
    assert shape.tree == plan_run(lm, s).probe.tree.size > 0
    fast.warm([shape])
    graphs = fast.backend.graphs
    _, _, probes_c, done_c = collect(lm, s)
    _, _, probes_e, done_e = collect(lm, replace(s, eager=True))
    assert done_c.timing.compiled and not done_e.timing.compiled
    assert [r.token_ids for r in done_c.rows] == [r.token_ids for r in done_e.rows]
    assert [(p.row, p.step, p.final) for p in probes_c] == [(p.row, p.step, p.final) for p in probes_e]
    for a, b in zip(probes_c, probes_e):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
    collect(lm, settings(lm, steered(vec, (-2.0,)), "Is ten even?", probe_choices=("quickly", "seventeen", "seven")))
    assert fast.backend.graphs == graphs


def test_rows_padded_to_a_bucket_leave_the_baseline_alone(lm, fast):
    """Baseline + 1, + 2 and + 3 steered rows (one 4-row bucket): the baseline row is the same in all, and
    each row's tokens are what the eager engine gives."""
    a, b, c = (random_vector(lm, [1, 2], scale=4.0, seed=s) for s in (4, 5, 6))
    runs = [(SteeredRow(a, 3.0),), (SteeredRow(a, 3.0), SteeredRow(b, -3.0, (1,))),
            (SteeredRow(a, 3.0), SteeredRow(b, -3.0, (1,)), SteeredRow(c, 2.0, (2,)))]
    shapes = {shape_of(lm, settings(lm, rows)) for rows in runs}
    assert len(shapes) == 1  # one bucket
    fast.warm(shapes)
    graphs = fast.backend.graphs
    baselines = []
    for rows in runs:
        s = settings(lm, rows)
        _, _, _, done = collect(lm, s)
        _, _, _, eager = collect(lm, settings(lm, rows, eager=True))
        assert done.timing.compiled and not eager.timing.compiled
        assert [r.token_ids for r in done.rows] == [r.token_ids for r in eager.rows]
        baselines.append(done.rows[0].token_ids)
    assert baselines[0] == baselines[1] == baselines[2]
    collect(lm, settings(lm, runs[1][::-1]))  # 3 rows again, other vectors in other rows: nothing new
    assert fast.backend.graphs == graphs


def test_a_cold_shape_runs_eagerly_and_warms_in_the_background(lm, fast):
    s = settings(lm, steered(random_vector(lm, [1, 2], seed=7), (2.0,)))
    assert not collect(lm, s)[3].timing.compiled  # eager now, its shape queued
    wait_until(lambda: shape_of(lm, s) in fast.ready)
    assert shape_of(lm, s) in fast.ready and "ready for: 4 rows x 1024 positions" in fast.status()[0]
    assert collect(lm, s)[3].timing.compiled


def test_on_demand_warms_first_and_says_so(lm, fast):
    said = []
    fast.on_demand = said.append
    s = settings(lm, steered(random_vector(lm, [1, 2], seed=8), (2.0,)))
    assert collect(lm, s)[3].timing.compiled
    assert said[0].startswith("compiling decode steps for 4 rows x 1024 positions") and "ready" in said[1]


def test_one_run_at_a_time_and_an_abandoned_run_gives_it_back(lm, fast):
    s = settings(lm, steered(random_vector(lm, [1, 2], seed=9), (2.0,)), n=30)
    fast.warm([shape_of(lm, s)])
    first = run(lm, s)
    next(e for e in first if isinstance(e, TokenEvent))  # first run holds the fast path...
    assert not collect(lm, s)[3].timing.compiled  # ...so a second one at the same time decodes eagerly
    first.close()  # the consumer goes away
    assert not fast.busy.locked() and collect(lm, s)[3].timing.compiled
    # Steering is cleared after each run: the fast path's copy then gives the plain model's logits.
    with torch.inference_mode():
        ids = torch.tensor([[1, 2, 3, 4]])
        assert torch.equal(fast.model(input_ids=ids).logits, lm.model(input_ids=ids).logits)


def test_the_eager_knob(lm, fast):
    s = settings(lm, steered(random_vector(lm, [1, 2], seed=10), (2.0,)))
    fast.warm([shape_of(lm, s)])
    done = collect(lm, settings(lm, s.rows, eager=True))[3]
    assert not done.timing.compiled and done.timing.path == ""  # asked for: nothing to explain


def broken(gm, example_inputs):
    raise RuntimeError("no C compiler found")


def test_a_failed_compile_is_said_once_in_each_place_and_runs_go_on_eagerly(lm, tiny_dirs, tmp_path, monkeypatch,
                                                                            capsys):
    """The dashboard's model panel and a run's status, the CLI's warm-up line and its timing line: each says
    which shape failed and why, in one line; the runs themselves finish eagerly."""
    import steer_ui.engine.fast_path as fast_path
    from steer_ui.app.context import AppContext
    from steer_ui.app.dashboard import Dashboard
    from steer_ui.cli import main
    from steer_ui.log.store import Store
    from steer_ui.vectors.files import save_vector

    said = "compiling 4 rows x 1024 positions failed (RuntimeError: no C compiler found)"
    torch._dynamo.reset()
    monkeypatch.setattr(fast_path, "FastPath", lambda lm, **kw: FastPath(lm, backend=broken))
    other = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="float32")
    ctx = AppContext(lm=other, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path, compile_on_cpu=True)
    ctx.prepare(other)
    wait_until(lambda: not other.fast.warming_soon())
    dash = Dashboard(ctx)
    panel = dash.model.markdown()
    assert panel.count(said) == 1 and "its runs decode eagerly" in panel
    assert dash.model.tick()["fast_timer"].active is False  # nothing left to poll for
    save_vector(random_vector(other, [1, 2], seed=14), tmp_path / "random.safetensors")
    form = {"prompt": "Is nine a prime number?", "max_new_tokens": 6, "probe_every": 2, "vector": "file",
            "coefs": "2", "layers": "1-2"}
    status = list(dash.generate.generate(vector_file=str(tmp_path / "random.safetensors"), **form))[-1]["status"]
    assert "**finished**" in status and status.count(f"eager: {said}") == 1

    capsys.readouterr()
    code = main(["generate", "--model", str(tiny_dirs["llama"]), "--device", "cpu", "--compile", "--prompt",
                 "Is nine a prime number?", "--max-new-tokens", "6", "--probe-every", "2", "--db",
                 str(tmp_path / "cli.sqlite")])
    err = capsys.readouterr().err
    said = said.replace("4 rows", "1 row")  # the baseline alone
    assert code == 0
    assert err.count(said) == 2  # the warm-up's line, then the run's timing line
    assert f"{said} after " in err and "its runs decode eagerly" in err
    assert [line for line in err.splitlines() if line.startswith("load ")][0].endswith(f"eager: {said})")


def test_attach_only_where_there_is_a_fast_path(lm, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert attach(lm, compile_on_cpu=False, cache_dir=tmp_path) is None and lm.fast is None
    fast = attach(lm, compile_on_cpu=True, backend=Counting(), cache_dir=tmp_path)
    try:
        assert lm.fast is fast and (tmp_path / "inductor").is_dir()
        import os

        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
        shapes = common_shapes(lm)
        assert [(s.rows, s.length) for s in shapes] == [(4, 1024), (4, 4096)]
    finally:
        lm.fast = None


def test_too_many_rows_for_a_bucket_decode_eagerly(lm, fast):
    vec = random_vector(lm, [1, 2], seed=11)
    s = settings(lm, steered(vec, tuple(float(c) for c in range(1, 17))), n=4)  # 17 rows: past the last bucket
    assert shape_of(lm, s) is None and not collect(lm, s)[3].timing.compiled


def test_compile_errors_are_one_message(lm, monkeypatch):
    """A compile error that surfaces in a step (not at warm-up) ends the run with one UserError."""
    torch._dynamo.reset()
    lm.fast = FastPath(lm, backend=Counting())
    try:
        s = settings(lm, steered(random_vector(lm, [1, 2], seed=12), (2.0,)), n=6)
        lm.fast.warm([shape_of(lm, s)])

        def broken_step(**inputs):
            raise torch._dynamo.exc.InternalTorchDynamoError("the backend gave up")

        monkeypatch.setattr(lm.fast, "step", broken_step)
        with pytest.raises(UserError, match="torch.compile failed .*run with --eager"):
            collect(lm, s)
        assert not lm.fast.busy.locked()
    finally:
        lm.fast = None


def test_the_dashboard_warms_in_the_background_and_says_which_path_ran(lm, tmp_path, monkeypatch):
    """The model panel says what is compiling; runs decode eagerly until their shape is ready, then compiled."""
    import steer_ui.engine.fast_path as fast_path
    from steer_ui.app.context import AppContext
    from steer_ui.app.dashboard import Dashboard
    from steer_ui.log.store import Store

    torch._dynamo.reset()
    monkeypatch.setattr(fast_path, "FastPath", lambda lm, **kw: FastPath(lm, backend=Counting()))
    ctx = AppContext(lm=lm, store=Store(str(tmp_path / "log.sqlite")), files=tmp_path, compile_on_cpu=True)
    try:
        ctx.prepare(lm)
        dash = Dashboard(ctx)
        assert lm.fast is not None and ("compiling decode steps" in dash.model.markdown()
                                        or "ready for" in dash.model.markdown())
        wait_until(lambda: not lm.fast.warming_soon())
        assert "ready for: 4 rows x 1024 positions, 4 rows x 4096 positions" in dash.model.markdown()
        assert dash.model.tick()["fast_timer"].active is False  # the panel stops polling once ready
        form = {"prompt": "Is nine a prime number?", "max_new_tokens": 6, "probe_every": 2}
        status = list(dash.generate.generate(**form))[-1]["status"]
        assert "compiled steps" not in status  # baseline alone: the 1-row bucket was not warmed, so eager
        status = list(dash.generate.generate(**form))[-1]["status"]  # ...and it was queued: warm now
        wait_until(lambda: not lm.fast.warming_soon())
        assert "compiled steps" in list(dash.generate.generate(**form))[-1]["status"]
        eager = list(dash.generate.generate(**form, eager=True))[-1]["status"]
        assert "finished" in eager and "compiled steps" not in eager
    finally:
        lm.fast = None


@pytest.mark.parametrize("kernels", ["as installed", "hidden"])
def test_a_shape_compiles_while_eager_runs_go_on(tiny_dirs, kernels):
    """The dashboard's case: a shape warms on the fast path's thread while visitors' runs decode eagerly.
    With transformers 5.25's ``kernels`` wrapper each eager call wrote a process-wide value dynamo guards
    on (torch 2.13 says ``is_compiling()`` to every thread during a compile), and the warm-up failed;
    without ``kernels`` there is no wrapper. Fresh interpreters: whether transformers wraps its modules
    is decided when it is imported."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    args = [sys.executable, str(here / "compile_beside_eager.py"), str(tiny_dirs["llama"])]
    out = subprocess.run(args + (["--hide-kernels"] if kernels == "hidden" else []), capture_output=True,
                         text=True, timeout=900, cwd=here.parent, env={**os.environ, "PYTHONPATH": str(here)})
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    import importlib.util

    assert seen["kernels"] is (kernels == "as installed" and importlib.util.find_spec("kernels") is not None)
    assert seen["overlapped"] >= 1  # eager runs really went on during the compile
    assert seen["ready"] and seen["failed"] is None
    assert seen["compiled"] and seen["same_tokens"]


def test_the_cache_goes_by_the_name_transformers_asks_for(lm):
    """transformers 5.25 renamed forward's ``past_key_values`` to ``cache`` and warns on the old name
    (gone in 5.40); the suite turns that warning into an error (pyproject), and this run would raise."""
    import inspect

    assert lm.cache_arg in inspect.signature(lm.model.forward).parameters
    collect(lm, settings(lm, steered(random_vector(lm, [1, 2], seed=13), (2.0,)), n=4, eager=True))
