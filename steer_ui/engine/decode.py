"""The decode loop: baseline and steered rows in one batch on one KV cache, with a fused suffix probe.

Row 0 is the baseline (coefficient 0: nothing added), row i the i-th coefficient. The prompt is
prefilled once for all rows; each step feeds every row's last token. On probe steps the suffix rides
along in the same forward (token, then suffix tokens); the suffix's logits give the reading, the token's
logits give the next token (causal attention: the suffix cannot change them), and the suffix positions
are cropped off the cache. So a probe never copies or re-runs the context, whatever its length.

The engine knows nothing of the CLI, the dashboard or the database: it yields events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from steer_ui.engine.detokenize import Detokenizer
from steer_ui.errors import UserError
from steer_ui.engine.events import (ChoiceInfo, DoneEvent, Event, FinishReason, ProbeEvent, RowInfo, RowResult,
                             StartEvent, Timing, TokenEvent)
from steer_ui.engine.kv_cache import crop as crop_cache
from steer_ui.engine.kv_cache import new_cache
from steer_ui.model.loading import LoadedModel
from steer_ui.engine.probe import ProbeSpec, build_probe, read
from steer_ui.engine.sampling import Sampler
from steer_ui.engine.run_settings import RunSettings
from steer_ui.engine.hooks import Steerer


@dataclass(frozen=True)
class RunPlan:
    """A validated run: token ids, rows, steering and probe, ready to decode."""

    settings: RunSettings
    prompt_ids: list[int]
    prompt_text: str
    rows: list[RowInfo]
    layers: list[int]
    directions: dict[int, torch.Tensor]
    probe: ProbeSpec | None
    eos_ids: frozenset[int]
    starts_thinking: bool  # the rendered prompt leaves a <think> block open
    cache: str  # "dynamic" or "static"
    max_len: int  # the most positions the cache ever holds: prompt + new tokens + the longest suffix
    warnings: list[str] = field(default_factory=list)


def render_prompt(lm: LoadedModel, settings: RunSettings) -> tuple[str, list[int], list[str]]:
    """The prompt as text and ids: chat template unless raw (or the model has none)."""
    tok = lm.tokenizer
    if not settings.raw and getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": settings.prompt}]
        if settings.system is not None:
            messages.insert(0, {"role": "system", "content": settings.system})
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, tok.encode(text, add_special_tokens=False), []
    warnings = [] if settings.raw else [f"{lm.model_id} has no chat template: the prompt is sent as raw text"]
    return settings.prompt, tok.encode(settings.prompt), warnings


def eos_ids(lm: LoadedModel) -> frozenset[int]:
    ids: set[int] = set()
    for source in (lm.model.generation_config.eos_token_id, lm.tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def plan_run(lm: LoadedModel, settings: RunSettings) -> RunPlan:
    """Check ``settings`` against the model and tokenize; every user mistake is a UserError here."""
    settings.validate()
    profile = lm.profile
    if settings.scope.kind in ("think", "answer") and not profile.has_thinking:
        raise UserError(f"scope '{settings.scope}' needs a model with a thinking block; "
                        f"{lm.model_id} has none (use all, generated or kick:N)")
    layers: list[int] = []
    directions: dict[int, torch.Tensor] = {}
    warnings: list[str] = []
    if settings.vector is not None and settings.coefs:
        layers = settings.vector.check_against(lm.n_layers, lm.hidden_size, settings.layers)
        directions = {x: settings.vector.directions[x] for x in layers}
        hint = settings.vector.model_hint
        model_type = lm.model.config.model_type
        if hint and hint.lower() != model_type.lower():
            warnings.append(f"vector was made for a '{hint}' model, this is '{model_type}'")
    text, ids, render_warnings = render_prompt(lm, settings)
    warnings += render_warnings
    probe = build_probe(lm.tokenizer, profile, settings.probe) if settings.probe.every > 0 else None
    longest_suffix = max(len(probe.suffix_ids), len(probe.close_think_ids or ())) if probe else 0
    limit = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)
    if limit and len(ids) + settings.max_new_tokens + longest_suffix > limit:
        raise UserError(f"prompt ({len(ids)} tokens) + max new tokens ({settings.max_new_tokens}) exceeds "
                        f"the model's context of {limit} tokens")
    cache = "static" if lm.step_forward is not None else settings.cache  # compiled steps need fixed shapes
    if cache == "static":
        _check_static_cache(lm)
    starts_thinking = bool(profile.has_thinking and text.rfind(profile.think_open) > text.rfind(profile.think_close))
    rows = [RowInfo(0, "baseline", 0.0)] + [
        RowInfo(i + 1, f"coef {c:+g}", float(c)) for i, c in enumerate(settings.coefs)
    ]
    max_len = len(ids) + settings.max_new_tokens + longest_suffix
    if lm.step_forward is not None:
        max_len = -(-max_len // 256) * 256  # fewer distinct cache shapes, fewer recompilations
    return RunPlan(settings, ids, text, rows, layers, directions, probe, eos_ids(lm), starts_thinking, cache,
                   max_len, warnings)


def _check_static_cache(lm: LoadedModel) -> None:
    """The static cache's crop rewinds plain layers only; sliding-window layers keep a rolling buffer."""
    cache = StaticCache(config=lm.model.config, max_cache_len=1)
    if any(type(layer) is not StaticLayer for layer in cache.layers):
        raise UserError(f"the static cache does not support {lm.model_id}'s sliding-window attention layers; "
                        "use the default dynamic cache")


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


class _Forward:
    """One model call on the shared cache with this step's steering scale; crops the probe suffix after."""

    def __init__(self, lm: LoadedModel, steerer: Steerer | None, coefs: torch.Tensor, cache: str = "dynamic",
                 max_len: int = 0):
        self.lm, self.steerer, self.coefs = lm, steerer, coefs
        self.cache = new_cache(lm.model.config, cache, max_len)
        self.device = lm.input_device
        self.stepping = False

    @torch.inference_mode()  # here, not around the loop: the loop yields, and grad mode is thread state
    def __call__(self, ids: list[list[int]], mask: list[list[float]], keep: list[list[int]] | int,
                 crop: int) -> torch.Tensor:
        if self.steerer is not None:
            any_steered = any(any(m) for m in mask)
            self.steerer.scale = ((self.coefs[:, None] * torch.tensor(mask, device=self.device)).to(self.lm.dtype)
                                  if any_steered else None)
        keep_arg = keep if isinstance(keep, int) else torch.tensor(keep, device=self.device)
        compiled = self.lm.step_forward is not None and self.stepping
        self.stepping = True  # every call after the prefill is a decode step
        out = (self._compiled_step if compiled else self.lm.model)(
            input_ids=torch.tensor(ids, device=self.device), past_key_values=self.cache, use_cache=True,
            logits_to_keep=keep_arg)
        if self.steerer is not None:
            self.steerer.scale = None
        if crop:
            crop_cache(self.cache, crop)
        return out.logits

    def _compiled_step(self, **inputs):
        try:
            return self.lm.step_forward(**inputs)
        except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError) as err:
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err  # dynamo wraps the real error
            first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
            raise UserError(f"torch.compile failed ({type(cause).__name__}: {first}); run without --compile") from None


def run(lm: LoadedModel, settings: RunSettings, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Validate now (UserError before any event), then return the run's event stream."""
    return decode(lm, plan_run(lm, settings), cancel)


def decode(lm: LoadedModel, plan: RunPlan, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Yield start, token and probe events, then done. Setting ``cancel`` stops within one step."""
    settings, spec, scope = plan.settings, plan.probe, plan.settings.scope
    profile = lm.profile
    n_rows, n_prompt = len(plan.rows), len(plan.prompt_ids)
    yield StartEvent(
        model=lm.model_id, prompt_ids=list(plan.prompt_ids), prompt_text=plan.prompt_text, rows=plan.rows,
        layers=plan.layers, scope=str(scope), probe_suffix_ids=list(spec.suffix_ids) if spec else [],
        probe_choices=[ChoiceInfo(c.label, list(c.token_ids)) for c in spec.choices] if spec else [],
        probe_every=spec.every if spec else 0, warnings=plan.warnings,
    )
    rows = [_Row(info, Detokenizer(lm.tokenizer), plan.starts_thinking) for info in plan.rows]
    coefs = torch.tensor([r.coef for r in plan.rows], dtype=torch.float32, device=lm.input_device)
    steerer = Steerer(lm.layers, plan.directions, lm.dtype) if plan.directions else None
    sampler = Sampler(settings.sampling, lm.input_device)
    pad = min(plan.eos_ids) if plan.eos_ids else 0
    steps = 0
    start = time.perf_counter()
    with steerer or nullcontext():
        forward = _Forward(lm, steerer, coefs, plan.cache, plan.max_len)
        # Prefill: the prompt (plus the suffix for the step-0 probe) for every row.
        suffix = _suffix_for(spec, plan.starts_thinking) if spec else ()
        prompt_mask = [float(scope.steers_prompt_position(p, n_prompt)) for p in range(n_prompt)]
        mask_row = prompt_mask + [float(scope.steers_probe_suffix)] * len(suffix)
        keep: list[list[int]] | int = [[n_prompt - 1, n_prompt - 1 + len(suffix)]] * n_rows if spec else 1
        logits = forward([list(plan.prompt_ids) + list(suffix)] * n_rows, [mask_row] * n_rows, keep, len(suffix))
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
            mask = [float(scope.steers_generated(len(r.token_ids) - 1, r.last_was_thinking)) for r in rows]
            if probe_due:
                suffixes = [_suffix_for(spec, r.thinking) for r in rows]
                width = max(len(x) for x in suffixes)
                ids = [[f, *x] + [pad] * (width - len(x)) for f, x in zip(feed, suffixes)]
                masks = [[m] + [float(scope.steers_probe_suffix)] * width for m in mask]
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
                      steps=steps),
    )


def _suffix_for(spec: ProbeSpec, thinking: bool) -> tuple[int, ...]:
    return spec.close_think_ids if thinking and spec.close_think_ids else spec.suffix_ids


def _probe_events(readings: list, rows: list[_Row], step: int, spec: ProbeSpec) -> Iterator[ProbeEvent]:
    for row in rows:
        r = readings[row.info.row]
        closed = bool(row.thinking and spec.close_think_ids)
        yield ProbeEvent(row.info.row, step, r.logodds, r.mass, r.logprobs, r.reliable, closed)
