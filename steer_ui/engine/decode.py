"""The decode loop: baseline and steered rows in one batch on one KV cache, with a fused suffix probe.

Row 0 is the baseline (nothing added), row i the i-th steered row, each with its own vector, layers and
scope (``plan.RunPlan``). The prompt is prefilled once for all rows; each step feeds every row's last
token. On probe steps the suffix rides along in the same forward (token, then suffix tokens, then the
multi-token answers' trie under a tree-shaped mask: ``engine.probe``); the suffix's and the trie's
logits give the reading, the token's logits give the next token (causal attention: nothing after it
can change them), and everything after the token is cropped off the cache. So a probe never copies or
re-runs the context, whatever its length. A row that ends (end-of-sequence, length, Stop) is read once
more at its last token, marked final; one that ended at end-of-sequence already fed its last token, so
its suffix takes the token's place in that forward.

The engine knows nothing of the CLI, the dashboard or the database: it yields events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from steer_ui.engine.budget_state import BudgetState, choose
from steer_ui.engine.detokenize import Detokenizer
from steer_ui.engine.dynamics import dynamics
from steer_ui.engine.events import (ChoiceInfo, DoneEvent, Event, FinishReason, InterveneEvent, ProbeEvent, RowInfo,
                                    RowResult, StartEvent, Timing, TokenEvent)
from steer_ui.engine.forward import Forward
from steer_ui.engine.hooks import Steerer
from steer_ui.engine.plan import RunPlan, plan_run
from steer_ui.engine.probe import ProbeSpec, Reading, read, tree_parents
from steer_ui.engine.run_settings import RunSettings
from steer_ui.engine.sampling import Sampler, stop_logprobs
from steer_ui.engine.scope import Scope
from steer_ui.model.loading import LoadedModel


@dataclass
class _Row:
    """One row's growing output and its place in the thinking block."""

    info: RowInfo
    detok: Detokenizer
    thinking: bool
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    last_was_thinking: bool = False  # phase of the most recent token (decides think/answer steering)
    finish: FinishReason | None = None
    last_read: tuple[int, Reading, bool] | None = None  # (step, reading, think closed) of the latest reading
    tail: str = ""  # the last characters, to spot a think tag split over tokens
    readings: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, logprobs), for dynamics
    think_start: int | None = None  # index of the first thinking token (0 when the prompt opened the block)
    think_end: int | None = None  # index where the closing tag starts, once it has
    budget: BudgetState | None = None

    def append(self, token_id: int, think_open: str | None, think_close: str | None) -> str:
        piece = self.detok.push(token_id)
        self.last_was_thinking = self.thinking
        self.token_ids.append(token_id)
        self.text.append(piece)
        if think_open and think_close:
            if self.thinking and _tag_ends_here(self.tail, piece, think_close):
                self.thinking = False  # the closing tag itself still counts as thinking
                self.think_end = _tag_start(self.text, think_close)
            elif not self.thinking and _tag_ends_here(self.tail, piece, think_open):
                self.thinking = self.last_was_thinking = True
                self.think_start = len(self.token_ids)
            self.tail = (self.tail + piece)[-32:]
        return piece

    def think_tokens(self, has_thinking: bool) -> int:
        """Thinking tokens so far: before the closing tag; every token on a model without a thinking block."""
        if not has_thinking:
            return len(self.token_ids)
        if self.think_start is None:
            return 0
        return (self.think_end if self.think_end is not None else len(self.token_ids)) - self.think_start


def _tag_start(pieces: list[str], tag: str) -> int:
    """Index of the token where ``tag`` begins: the fewest last pieces that hold it."""
    k = 1
    while k < len(pieces) and tag not in "".join(pieces[-k:]):
        k += 1
    return len(pieces) - k


def _tag_ends_here(tail: str, piece: str, tag: str) -> bool:
    """Whether ``tag`` occurs in the text only now that ``piece`` is added (never counted twice)."""
    return tag in (tail[-(len(tag) - 1):] + piece if len(tag) > 1 else piece)


def run(lm: LoadedModel, settings: RunSettings, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Validate now (UserError before any event), then return the run's event stream."""
    return decode(lm, plan_run(lm, settings), cancel)


def decode(lm: LoadedModel, plan: RunPlan, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Yield start, token and probe events, then done. Setting ``cancel`` stops within one step."""
    settings, spec, scopes = plan.settings, plan.probe, plan.scopes
    profile = lm.profile
    yield _start_event(lm, plan)
    rows = [_Row(info, Detokenizer(lm.tokenizer), plan.starts_thinking, think_start=0 if plan.starts_thinking
                 else None, budget=BudgetState(b) if b else None) for info, b in zip(plan.rows, plan.budgets)]
    ends = plan.ends
    coefs = torch.tensor(plan.coefs, dtype=torch.float32, device=lm.input_device)
    sampler = Sampler(settings, lm.input_device)
    pad = _pad(plan)
    session = _fast_session(lm, plan)
    eager_because = session if isinstance(session, str) else ""
    session = None if isinstance(session, str) else session
    if session is not None:
        steerer = session.steering(plan.directions)
    else:
        steerer = Steerer(lm.layers, plan.directions, lm.dtype) if plan.directions else None
    steps = 0
    start = time.perf_counter()
    with _closing(session), steerer or nullcontext():
        forward = Forward(lm, steerer, coefs, plan.cache, plan.max_len, session, pad)
        logits = _prefill(forward, plan)
        if spec:
            yield from _probe_events(read(logits[:, 1:], spec), rows, 0, spec, ())
        tokens, forced, notes, urges = _choose(rows, logits[:, 0], sampler, ends, settings.ignore_eos)
        prefill_s = time.perf_counter() - start
        for s in range(settings.max_new_tokens):
            probed: list[_Row] = []
            ended: list[_Row] = []  # rows that end at this step: each gets a final reading at its last token
            for row, tok, was_forced, note, urge in zip(rows, tokens, forced, notes, urges):
                if row.finish is not None:
                    continue
                if note is not None:
                    yield InterveneEvent(row.info.row, s, *note)
                if tok in plan.eos_ids and not settings.ignore_eos and not was_forced:
                    row.finish = "eos"
                    ended.append(row)
                    continue
                piece = row.append(tok, profile.think_open, profile.think_close)
                yield TokenEvent(row.info.row, s, tok, piece, was_forced, urge)
                probed.append(row)
                if len(row.token_ids) >= settings.max_new_tokens:
                    row.finish = "length"
                    ended.append(row)
            if cancel is not None and cancel.is_set():
                for row in rows:
                    if row.finish is None:
                        row.finish = "cancelled"
                        ended.append(row)
            readers, repeated = _readers(spec, s, probed, ended) if spec else ([], [])
            yield from repeated
            if all(r.finish for r in rows) and not readers:
                break
            feed = [r.token_ids[-1] if r.token_ids and r.finish != "eos" else pad for r in rows]
            mask = [_steers(sc, sc and sc.steers_generated(len(r.token_ids) - 1, r.last_was_thinking,
                                                           r.budget.triggered if r.budget else ()))
                    for r, sc in zip(rows, scopes)]
            if readers:
                # A row that ended at end-of-sequence fed its last token already: its suffix comes first.
                shifted = [r.finish == "eos" and r in readers for r in rows]
                ids, masks, keep, parents = _probe_layout(plan, session is not None, rows, feed, mask, shifted)
                logits = forward(ids, masks, keep, len(ids[0]) - 1, parents)
                yield from _probe_events(read(logits[:, 1:], spec), readers, None, spec, ended)
            else:
                logits = forward([[f] for f in feed], [[m] for m in mask], 1, 0)
            steps += 1
            if all(r.finish for r in rows):
                break
            tokens, forced, notes, urges = _choose(rows, logits[:, 0], sampler, ends, settings.ignore_eos)
    for row in rows:
        row.finish = row.finish or "length"
        row.text.append(row.detok.flush())
    yield DoneEvent(
        rows=[RowResult(r.info.row, r.info.label, r.info.coef, r.token_ids, "".join(r.text), r.finish,
                        r.think_tokens(ends.thinking), r.budget.interventions if r.budget else 0,
                        dynamics(r.readings, len(r.token_ids)) if spec else None) for r in rows],
        timing=Timing(load_s=lm.load_s, prefill_s=prefill_s, decode_s=time.perf_counter() - start - prefill_s,
                      steps=steps, compiled=session is not None, eager_because=eager_because),
    )


def _choose(rows: list[_Row], logits: torch.Tensor, sampler: Sampler, ends, ignore_eos: bool):
    """Each row's next token (the model's, or its budget's), whether it was forced, the intervention to
    report (kind, text) and the urge to stop where it was chosen."""
    tokens = sampler(logits).tolist()
    urges = stop_logprobs(logits, [r.thinking for r in rows], ends)
    forced, notes = [False] * len(rows), [None] * len(rows)
    for i, row in enumerate(rows):
        if row.budget is not None and row.finish is None:
            thinking = row.thinking if ends.thinking else True
            tokens[i], forced[i], notes[i] = choose(row.budget, tokens[i], row.think_tokens(ends.thinking),
                                                    len(row.token_ids), thinking, ends, ignore_eos,
                                                    lambda banned, i=i: sampler.again(i, banned))
    return tokens, forced, notes, [u if r.thinking or not ends.thinking else None for u, r in zip(urges, rows)]


def _start_event(lm: LoadedModel, plan: RunPlan) -> StartEvent:
    spec = plan.probe
    return StartEvent(
        model=lm.model_id, prompt_ids=list(plan.prompt_ids), prompt_text=plan.prompt_text, rows=plan.rows,
        layers=plan.layers, scope=str(next((sc for sc in plan.scopes if sc), Scope())),
        probe_suffix_ids=list(spec.suffix_ids) if spec else [],
        probe_choices=[ChoiceInfo(c.label, list(c.token_ids), [list(v) for v in c.variants])
                       for c in spec.choices] if spec else [],
        probe_every=spec.every if spec else 0, probe_gold=spec.choices[0].label if spec and spec.gold else None,
        warnings=plan.warnings,
    )


def _prefill(forward: Forward, plan: RunPlan) -> torch.Tensor:
    """The prompt for every row, with the step-0 probe (suffix, then the choices' tree) riding along.
    Logits: the next token's, then the probe's positions (none without a probe)."""
    spec, n_prompt, n_rows = plan.probe, len(plan.prompt_ids), len(plan.rows)
    suffix = _suffix_for(spec, plan.starts_thinking) if spec else ()
    tree = spec.tree if spec else None
    nodes = list(tree.tokens) if tree else []
    masks = [[_steers(sc, sc and sc.steers_prompt_position(p, n_prompt)) for p in range(n_prompt)]
             + [_steers(sc, sc and sc.steers_probe_suffix)] * (len(suffix) + len(nodes)) for sc in plan.scopes]
    ids = list(plan.prompt_ids) + list(suffix) + nodes
    if not spec:
        return forward([ids] * n_rows, masks, 1, 0)
    end = n_prompt - 1 + len(suffix)
    keep = [n_prompt - 1, end, *range(end + 1, end + 1 + len(nodes))]
    parents = tree_parents(n_prompt + len(suffix), tree, len(ids)) if nodes else None
    return forward([ids] * n_rows, masks, [keep] * n_rows, len(suffix) + len(nodes),
                   [parents] * n_rows if parents else None)


def _probe_layout(plan: RunPlan, compiled: bool, rows: list[_Row], feed: list[int], mask: list[float],
                  shifted: list[bool]):
    """A probe step's ids, steering masks, kept positions and tree (None: plain causal) for every row:
    its token, its suffix, the choices' tree, padding to a common width. A shifted row has no token
    (it ended at end-of-sequence): its suffix starts at position 0."""
    spec = plan.probe
    tree = spec.tree
    suffixes = [_suffix_for(spec, r.thinking) for r in rows]
    # Compiled probe steps have one shape: every row carries the longest suffix there is.
    width = (plan.probe_width if compiled else max(len(x) for x in suffixes)) + 1 + tree.size
    ids, masks, keep, parents = [], [], [], []
    for f, x, m, shift, sc in zip(feed, suffixes, mask, shifted, plan.scopes):
        lead = [] if shift else [f]
        chain = len(lead) + len(x)
        row_ids = lead + list(x) + list(tree.tokens)
        ids.append(row_ids + [_pad(plan)] * (width - len(row_ids)))
        suffix_steer = _steers(sc, sc and sc.steers_probe_suffix)
        masks.append(([] if shift else [m]) + [suffix_steer] * (width - len(lead)))
        keep.append([0, chain - 1, *range(chain, chain + tree.size)])
        parents.append(tree_parents(chain, tree, width) if tree.size else None)
    return ids, masks, keep, parents if tree.size else None


def _pad(plan: RunPlan) -> int:
    return min(plan.eos_ids) if plan.eos_ids else 0


def _fast_session(lm: LoadedModel, plan: RunPlan):
    """A session on the model's fast path when one is attached, the run may use it, and its shape is warm;
    else why not in one line (empty where nothing was expected: no fast path, or ``eager`` asked for)."""
    fast = getattr(lm, "fast", None)
    if fast is None or plan.settings.eager:
        return ""
    return fast.open(fast_shape(fast, plan))


def fast_shape(fast, plan: RunPlan):
    """The compiled steps' shape ``plan`` decodes on (its rows, length and probe, bucketed)."""
    return fast.shape(len(plan.rows), plan.max_len, plan.probe_width, plan.probe.tree.size if plan.probe else 0)


@contextmanager
def _closing(session) -> Iterator[None]:
    """Give the fast path back however the run ends (finished, failed, or abandoned by its consumer)."""
    try:
        yield
    finally:
        if session is not None:
            session.close()


def _steers(scope, yes: bool | None) -> float:
    """1.0 where a steered row's scope adds its vector at this position; the baseline (no scope) never."""
    return float(bool(scope is not None and yes))


def _suffix_for(spec: ProbeSpec, thinking: bool) -> tuple[int, ...]:
    return spec.close_think_ids if thinking and spec.close_think_ids else spec.suffix_ids


def _probe_events(readings: list[Reading], rows: list[_Row], step: int | None, spec: ProbeSpec,
                  ended: Sequence[_Row]) -> Iterator[ProbeEvent]:
    """Events for ``rows``, each read after its own tokens (``step``, or where the row is); a row in
    ``ended`` is read at its last token, final."""
    for row in rows:
        r = readings[row.info.row]
        closed = bool(row.thinking and spec.close_think_ids)
        at = len(row.token_ids) if step is None else step
        row.last_read = (at, r, closed)
        row.readings.append((at, r.logprobs))
        yield ProbeEvent(row.info.row, at, r.logodds, r.mass, r.logprobs, r.reliable, closed, final=row in ended)


def _readers(spec: ProbeSpec, s: int, probed: list[_Row], ended: list[_Row]
             ) -> tuple[list[_Row], list[ProbeEvent]]:
    """The rows this step's forward reads: on the cadence every row that made a token, and every row that
    ended, at its last token. A row the cadence already read there gets that reading again, final."""
    readers = list(probed) if (s + 1) % spec.every == 0 else []
    repeated = []
    for row in ended:
        if row.last_read is not None and row.last_read[0] == len(row.token_ids):
            repeated.append(_final_again(row))
        elif row not in readers:
            readers.append(row)
    return readers, repeated


def _final_again(row: _Row) -> ProbeEvent:
    """The reading a row already had at its last token, now marked final (the row ended there)."""
    at, r, closed = row.last_read
    return ProbeEvent(row.info.row, at, r.logodds, r.mass, r.logprobs, r.reliable, closed, final=True)
