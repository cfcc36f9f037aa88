"""Compile the fast path's steps while eager runs decode on another thread, in a fresh interpreter.

Run by ``test_fast_path.py`` as ``python tests/compile_beside_eager.py MODEL_DIR [--hide-kernels]``:
``--hide-kernels`` makes transformers find no ``kernels`` package (it then leaves its modules
unwrapped, as on a machine without it), which can only be decided before transformers is imported.
Prints one JSON line: whether the shape compiled (or why not), how many eager runs overlapped the
compile, and whether a compiled run then gave the eager run's tokens.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace

if "--hide-kernels" in sys.argv:
    sys.modules["kernels"] = None  # importlib.util.find_spec then says it is not installed

from helpers import Counting, collect  # noqa: E402

from steer_ui.engine.decode import fast_shape  # noqa: E402
from steer_ui.engine.fast_path import FastPath  # noqa: E402
from steer_ui.engine.plan import plan_run  # noqa: E402
from steer_ui.engine.run_settings import RunSettings  # noqa: E402
from steer_ui.model.loading import load_model  # noqa: E402


def main(model_dir: str) -> None:
    lm = load_model(model_dir, device="cpu", dtype="float32")
    lm.fast = FastPath(lm, backend=Counting())
    s = RunSettings("Is nine a prime number?", max_new_tokens=8, ignore_eos=True, probe_every=2)
    shape = fast_shape(lm.fast, plan_run(lm, s))
    stop, runs = threading.Event(), []  # runs: (start, end) of each eager run, monotonic seconds

    def eager_runs() -> None:
        while not stop.is_set():
            began = time.monotonic()
            collect(lm, replace(s, eager=True))
            runs.append((began, time.monotonic()))

    beside = threading.Thread(target=eager_runs)
    beside.start()
    while not runs:  # eager runs are going before the compile starts
        threading.Event().wait(0.01)
    warm_began = time.monotonic()
    lm.fast.warm_in_background([shape])
    while lm.fast.warming_soon():
        threading.Event().wait(0.05)
    warm_ended = time.monotonic()
    stop.set()
    beside.join()
    # Intervals, not a look at ``warming`` before and after each run: a warm-up shorter than one eager
    # run (the compile cache warm from earlier tests) falls between two looks and was counted as none.
    overlapped = [1 for began, ended in runs if began < warm_ended and ended > warm_began]
    compiled, eager = collect(lm, s)[3], collect(lm, replace(s, eager=True))[3]
    print(json.dumps({
        "kernels": sys.modules.get("kernels") is not None,
        "ready": shape in lm.fast.ready, "failed": lm.fast.failed.get(shape),
        "overlapped": len(overlapped), "compiled": compiled.timing.compiled,
        "same_tokens": [r.token_ids for r in compiled.rows] == [r.token_ids for r in eager.rows],
    }))


if __name__ == "__main__":
    main(sys.argv[1])
