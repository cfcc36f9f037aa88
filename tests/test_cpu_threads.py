"""The CPU thread count gives way to other processes: measured on the real machine with real busy processes
(no timing asserted: only which count the load reading leads to)."""

from __future__ import annotations

import subprocess
import sys
import threading

import torch
from helpers import collect

from steer_ui.engine.run_settings import RunSettings
from steer_ui.model import cpu_threads
from steer_ui.model.cpu_threads import CpuThreads


def test_a_busy_machine_gets_fewer_threads_set_in_the_thread_that_runs_the_model():
    threads = CpuThreads(most=2)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(threads.cores)]
    seen = []

    def model_thread() -> None:  # torch's count is per thread: the one that calls the model sets it
        for _ in range(600):
            threads.tick()
            if threads.wanted == 1:
                break
            threading.Event().wait(0.1)
        seen.append((threads.wanted, torch.get_num_threads()))
        torch.set_num_threads(threads.most)  # new threads start from the last count set anywhere: put it back

    try:
        worker = threading.Thread(target=model_thread)
        worker.start()
        worker.join()
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert seen == [(1, 1)]  # every core busy elsewhere: one thread


def test_runs_give_the_same_tokens_beside_a_busy_process(bundled):
    """The count changes with the load; a greedy run's tokens do not (1 and 2 threads agree to rounding)."""
    s = RunSettings("Is 7 a prime number? Answer yes or no.", max_new_tokens=16, ignore_eos=True, probe_every=4)
    alone = collect(bundled, s)[3]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    most = cpu_threads.shared().most
    try:
        threading.Event().wait(1.0)  # a load reading that sees it
        beside = collect(bundled, s)[3]
        fewer = torch.get_num_threads()  # set by the model's forward pre-hook in this (the running) thread
    finally:
        busy.kill()
        busy.wait()
        torch.set_num_threads(most)
    assert fewer < most or most == 1
    assert [r.token_ids for r in beside.rows] == [r.token_ids for r in alone.rows]
