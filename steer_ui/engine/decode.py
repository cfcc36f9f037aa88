"""The decode loop: baseline and steered rows in one batch on one KV cache, with a fused suffix probe.

Row 0 is the baseline (nothing added), row i the i-th steered row, each with its own vector, layers and
scope (``plan.RunPlan``). The prompt is prefilled once for all rows; each step feeds every row's last
token. On probe steps the suffix rides along in the same forward (token, then suffix tokens); the
suffix's logits give the reading, the token's logits give the next token (causal attention: the suffix
cannot change them), and the suffix positions are cropped off the cache. So a probe never copies or
re-runs the context, whatever its length.

The engine knows nothing of the CLI, the dashboard or the database: it yields events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from steer_ui.engine.detokenize import Detokenizer
from steer_ui.engine.events import (ChoiceInfo, DoneEvent, Event, FinishReason, ProbeEvent, RowInfo, RowResult,
                                    StartEvent, Timing, TokenEvent)
from steer_ui.engine.forward import Forward
from steer_ui.engine.hooks import Steerer
from steer_ui.engine.plan import RunPlan, plan_run
from steer_ui.engine.probe import ProbeSpec, read
from steer_ui.engine.run_settings import RunSettings
from steer_ui.engine.sampling import Sampler
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
    tail: str = ""  # the last characters, to spot a think tag split over tokens

    def append(self, token_id: int, think_open: str | None, think_close: str | None) -> str:
        piece = self.detok.push(token_id)
        self.last_was_thinking = self.thinking
        if think_open and think_close:
            if self.thinking and _tag_ends_here(self.tail, piece, think_close):
                self.thinking = False  # the closing tag itself still counts as thinking
            elif not self.thinking and _tag_ends_here(self.tail, piece, think_open):
                self.thinking = self.last_was_thinking = True
            self.tail = (self.tail + piece)[-32:]
        self.token_ids.append(token_id)
        self.text.append(piece)
        return piece


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
    n_rows, n_prompt = len(plan.rows), len(plan.prompt_ids)
    yield StartEvent(
        model=lm.model_id, prompt_ids=list(plan.prompt_ids), prompt_text=plan.prompt_text, rows=plan.rows,
        layers=plan.layers, scope=str(next((sc for sc in scopes if sc), Scope())),
        probe_suffix_ids=list(spec.suffix_ids) if spec else [],
        probe_choices=[ChoiceInfo(c.label, list(c.token_ids)) for c in spec.choices] if spec else [],
        probe_every=spec.every if spec else 0, warnings=plan.warnings,
    )
    rows = [_Row(info, Detokenizer(lm.tokenizer), plan.starts_thinking) for info in plan.rows]
    coefs = torch.tensor(plan.coefs, dtype=torch.float32, device=lm.input_device)
    sampler = Sampler(settings, lm.input_device)
    pad = min(plan.eos_ids) if plan.eos_ids else 0
    session = _fast_session(lm, plan)
    if session is not None:
        steerer = session.steering(plan.directions)
    else:
        steerer = Steerer(lm.layers, plan.directions, lm.dtype) if plan.directions else None
    steps = 0
    start = time.perf_counter()
    with _closing(session), steerer or nullcontext():
        forward = Forward(lm, steerer, coefs, plan.cache, plan.max_len, session, pad)
        # Prefill: the prompt (plus the suffix for the step-0 probe) for every row.
        suffix = _suffix_for(spec, plan.starts_thinking) if spec else ()
        masks = [[_steers(sc, sc and sc.steers_prompt_position(p, n_prompt)) for p in range(n_prompt)]
                 + [_steers(sc, sc and sc.steers_probe_suffix)] * len(suffix) for sc in scopes]
        keep: list[list[int]] | int = [[n_prompt - 1, n_prompt - 1 + len(suffix)]] * n_rows if spec else 1
        logits = forward([list(plan.prompt_ids) + list(suffix)] * n_rows, masks, keep, len(suffix))
        if spec:
            yield from _probe_events(read(logits[:, -1], spec), rows, 0, spec)
        tokens = sampler(logits[:, 0]).tolist()
        prefill_s = time.perf_counter() - start
        for s in range(settings.max_new_tokens):
            probed: list[_Row] = []
            for row, tok in zip(rows, tokens):
                if row.finish is not None:
                    continue
                if tok in plan.eos_ids and not settings.ignore_eos:
                    row.finish = "eos"
                    continue
                piece = row.append(tok, profile.think_open, profile.think_close)
                yield TokenEvent(row.info.row, s, tok, piece)
                probed.append(row)
                if len(row.token_ids) >= settings.max_new_tokens:
                    row.finish = "length"
            probe_due = spec is not None and (s + 1) % spec.every == 0 and bool(probed)
            if all(r.finish for r in rows) and not probe_due:
                break
            if cancel is not None and cancel.is_set():
                break
            feed = [r.token_ids[-1] if r.token_ids and r.finish != "eos" else pad for r in rows]
            mask = [_steers(sc, sc and sc.steers_generated(len(r.token_ids) - 1, r.last_was_thinking))
                    for r, sc in zip(rows, scopes)]
            if probe_due:
                suffixes = [_suffix_for(spec, r.thinking) for r in rows]
                # Compiled probe steps have one shape: every row carries the longest suffix there is.
                width = plan.probe_width if session is not None else max(len(x) for x in suffixes)
                ids = [[f, *x] + [pad] * (width - len(x)) for f, x in zip(feed, suffixes)]
                masks = [[m] + [_steers(sc, sc and sc.steers_probe_suffix)] * width for m, sc in zip(mask, scopes)]
                logits = forward(ids, masks, [[0, len(x)] for x in suffixes], width)
                yield from _probe_events(read(logits[:, 1], spec), probed, s + 1, spec)
            else:
                logits = forward([[f] for f in feed], [[m] for m in mask], 1, 0)
            steps += 1
            if all(r.finish for r in rows):
                break
            tokens = sampler(logits[:, 0]).tolist()
    if cancel is not None and cancel.is_set():
        for row in rows:
            row.finish = row.finish or "cancelled"
    for row in rows:
        row.finish = row.finish or "length"
        row.text.append(row.detok.flush())
    yield DoneEvent(
        rows=[RowResult(r.info.row, r.info.label, r.info.coef, r.token_ids, "".join(r.text), r.finish)
              for r in rows],
        timing=Timing(load_s=lm.load_s, prefill_s=prefill_s, decode_s=time.perf_counter() - start - prefill_s,
                      steps=steps, compiled=session is not None),
    )


def _fast_session(lm: LoadedModel, plan: RunPlan):
    """A session on the model's fast path when one is attached, the run may use it, and its shape is warm."""
    fast = getattr(lm, "fast", None)
    if fast is None or plan.settings.eager:
        return None
    return fast.open(fast.shape(len(plan.rows), plan.max_len, plan.probe_width))


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


def _probe_events(readings: list, rows: list[_Row], step: int, spec: ProbeSpec) -> Iterator[ProbeEvent]:
    for row in rows:
        r = readings[row.info.row]
        closed = bool(row.thinking and spec.close_think_ids)
        yield ProbeEvent(row.info.row, step, r.logodds, r.mass, r.logprobs, r.reliable, closed)
