"""Independent reference computations the engine's results are checked against."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from steer_ui.engine.decode import run
from steer_ui.engine.events import DoneEvent, ProbeEvent, TokenEvent
from steer_ui.model.loading import LoadedModel


def collect(lm: LoadedModel, settings, cancel=None):
    """Run to the end; return (start, tokens, probes, done)."""
    events = list(run(lm, settings, cancel))
    start, done = events[0], events[-1]
    assert isinstance(done, DoneEvent)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    probes = [e for e in events if isinstance(e, ProbeEvent)]
    return start, tokens, probes, done


@contextmanager
def add_everywhere(lm: LoadedModel, directions: dict[int, torch.Tensor], coef: float):
    """The textbook activation addition (repeng-style, every position), written separately from the engine."""
    handles = []

    def make(vec):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + coef * vec, *output[1:])
            return output + coef * vec
        return hook

    for layer, vec in directions.items():
        handles.append(lm.layers[layer].register_forward_hook(make(vec.to(lm.dtype))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def full_forward_reading(lm: LoadedModel, ids: list[int], choices: list[dict]) -> tuple[float, float, dict]:
    """Log-odds, mass and per-choice log-probs from one uncached forward over ``ids``."""
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.input_device), use_cache=False).logits[0, -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    per = {c["label"]: torch.logsumexp(logp[c["token_ids"]], dim=0).item() for c in choices}
    labels = [c["label"] for c in choices]
    mass = sum(torch.exp(torch.tensor(v)).item() for v in per.values())
    return per[labels[0]] - per[labels[1]], mass, per


def generate_greedy(lm: LoadedModel, prompt_ids: list[int], n: int, eos: frozenset[int]) -> list[int]:
    with torch.no_grad():
        out = lm.model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                                pad_token_id=min(eos))
    new = out[0, len(prompt_ids):].tolist()
    for i, t in enumerate(new):
        if t in eos:
            return new[:i]
    return new


def our_hooks(lm: LoadedModel) -> int:
    """Forward hooks on the decoder layers, not counting transformers' own: its output-capturing hooks are
    installed for good on the first forward with ``output_hidden_states=True`` (repeng's training makes
    one, in test_vectors), so a plain count depends on which tests ran before."""
    return sum(1 for layer in lm.layers for hook in layer._forward_hooks.values()
               if not getattr(hook, "__module__", "").startswith("transformers."))


def probe_logits_fingerprint(lm: LoadedModel) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6]]), use_cache=False).logits.clone()


class Counting:
    """A dynamo backend that runs the captured graph as is and counts how many it was given: the tracing
    and guards that CUDA graphs would replay, without inductor's minutes of code generation."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def wait_until(condition, bound_s: float = 300.0, every_s: float = 0.1):
    """Poll ``condition`` until it is true and return its value; fail after ``bound_s``. The bound is for a
    hung test on a busy machine, not a timing: nothing waits a fixed time and then asserts."""
    import time

    deadline = time.monotonic() + bound_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {bound_s:.0f} s: {getattr(condition, '__name__', condition)}")
        time.sleep(every_s)


def compute(dash, *args, **kwargs) -> dict:
    """The dashboard's Compute vector handler run to its end as Gradio runs it (a generator): its last update."""
    return list(dash.vectors.compute(*args, **kwargs))[-1]


def refusal(fn, *args, **kwargs) -> tuple[BaseException | None, float, int]:
    """(what ``fn`` raised, the CPU seconds this thread spent, peak bytes of Python allocations while it ran):
    how a refusal is measured. CPU time, not wall-clock: the work done, whatever else the machine does."""
    import time
    import tracemalloc

    tracemalloc.start()
    started = time.thread_time()
    raised = None
    try:
        fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - the refusal is what is measured
        raised = err
    cpu_s = time.thread_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return raised, cpu_s, peak
