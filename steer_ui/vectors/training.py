"""Trained steering vectors: one additive bias per layer, learned by gradient descent on examples while
every weight of the model stays frozen ("bias-only adaptation", ../shared/reference/
bias-only-steering-paper-summary.txt), beside the contrastive vectors of ``contrastive``.

The bias of layer L is added to that layer's output at every position: the place and convention of
every other vector here (scope 'all'), so a trained vector at coefficient 1 is exactly what was trained,
and other coefficients scale it like any vector.

Two objectives, told apart by each JSONL line's keys:

- ``{"prompt", "completion"}``: make the completion likely. The loss is the mean negative
  log-likelihood of the completion's tokens, the prompt's masked out.
- ``{"prompt", "chosen", "rejected"}``: prefer chosen over rejected, DPO-style against the unsteered
  model as the reference (as in bi-directional preference optimisation): ``-log sigmoid(beta *
  ((log p(chosen) - log p(rejected)) - the same under the reference))``, with sums of token
  log-probabilities.

Prompts go through the chat template exactly as ``generate`` renders them (``model.chat.render``: the
same default system prompt, the thinking block opened for thinking models); the completion is the
assistant's reply, tokenized on its own after it.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import torch
import torch.nn.functional as F

from steer_ui.errors import UserError
from steer_ui.model.chat import render
from steer_ui.model.loading import LoadedModel
from steer_ui.vectors.examples import Example, examples_hash
from steer_ui.vectors.vector import SteeringVector

MAX_CURVE_POINTS = 200  # the loss curve kept in the vector's metadata (evenly thinned beyond that)
# Defaults measured on the bundled model (docs/vectors.md: trained vectors): 30 examples, 4 layers.
DEFAULT_STEPS, DEFAULT_LR, DEFAULT_BATCH = 40, 0.05, 4
DEFAULT_HOLDOUT, DEFAULT_BETA, DEFAULT_PATIENCE, DEFAULT_EVAL_EVERY = 0.2, 0.1, 4, 5


@dataclass(frozen=True)
class TrainConfig:
    layers: tuple[int, ...]
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    holdout: float = DEFAULT_HOLDOUT  # the share of examples held out for early stopping (0: none)
    beta: float = DEFAULT_BETA  # preference objective only
    eval_every: int = DEFAULT_EVAL_EVERY  # steps between held-out evaluations
    patience: int = DEFAULT_PATIENCE  # evaluations without a better held-out loss before stopping
    max_tokens: int = 1024  # prompt + reply tokens of one example (the reply's end is cut)

    def validate(self, lm: LoadedModel, n_examples: int) -> None:
        checks = [(self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
                  (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
                  (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
                  (0 <= self.holdout < 1, f"--holdout must be in [0, 1), got {self.holdout}"),
                  (self.eval_every >= 1 and self.patience >= 1, "eval_every and patience must be >= 1"),
                  (bool(self.layers), "choose at least one layer to train"),
                  (n_examples >= (2 if self.holdout > 0 else 1),
                   f"need at least {2 if self.holdout > 0 else 1} examples, got {n_examples}")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        bad = [x for x in self.layers if not 0 <= x < lm.n_layers]
        if bad:
            raise UserError(f"layer {bad[0]} is out of range: the model has {lm.n_layers} layers (0-{lm.n_layers - 1})")


@dataclass(frozen=True)
class Progress:
    """What a progress bar or a live chart shows after a step."""

    step: int
    steps: int
    train_loss: float
    heldout_loss: float | None  # None between evaluations
    best_heldout: float | None


@dataclass
class TrainResult:
    vector: SteeringVector
    curve: list[dict] = field(default_factory=list)  # {"step", "train", "heldout"?}
    stopped: str = "steps"  # 'steps' | 'early stop' | 'interrupted' | 'cancelled'
    best_step: int = 0
    baseline_heldout: float | None = None  # the held-out loss with no bias (the unsteered model)
    heldout_loss: float | None = None  # the best held-out loss (the kept vector's)
    train_loss: float | None = None


# --- batches of tokens -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    reply_start: int  # the first reply token's index


def _encode(lm: LoadedModel, prompt: str, reply: str, max_tokens: int) -> _Encoded:
    _, prompt_ids, _ = render(lm, prompt)
    reply_ids = lm.tokenizer.encode(reply, add_special_tokens=False)
    if len(prompt_ids) >= max_tokens:
        raise UserError(f"a prompt of {len(prompt_ids)} tokens leaves no room for its reply (at most "
                        f"{max_tokens} tokens an example)")
    ids = (prompt_ids + reply_ids)[:max_tokens]
    return _Encoded(ids, len(prompt_ids))


def _batch(lm: LoadedModel, items: Sequence[_Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, reply mask) right-padded; the reply mask marks the tokens that are scored."""
    width = max(len(e.ids) for e in items)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    attn = torch.zeros((len(items), width), dtype=torch.long)
    reply = torch.zeros((len(items), width), dtype=torch.bool)
    for i, e in enumerate(items):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        attn[i, :len(e.ids)] = 1
        reply[i, e.reply_start:len(e.ids)] = True
    dev = lm.input_device
    return ids.to(dev), attn.to(dev), reply.to(dev)


def _token_logprobs(lm: LoadedModel, items: Sequence[_Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of the reply tokens' log-probabilities per item, under whatever bias is attached."""
    ids, attn, reply = _batch(lm, items)
    # The base model's hidden states, then the unembedding on the scored positions only: a prompt's
    # positions would cost the vocabulary-sized matmul forward and backward for nothing.
    hidden = lm.model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
    scored = reply[:, 1:]  # token t is predicted at position t-1
    logits = lm.model.get_output_embeddings()(hidden[:, :-1][scored])
    logp = torch.log_softmax(logits.float(), dim=-1).gather(1, ids[:, 1:][scored][:, None])[:, 0]
    rows = torch.arange(len(items), device=ids.device)[:, None].expand_as(scored)[scored]
    total = torch.zeros(len(items), device=logp.device).index_add(0, rows, logp)
    return total, scored.sum(1).clamp_min(1).float()


# --- the bias ----------------------------------------------------------------------------------------------
@contextmanager
def biased(lm: LoadedModel, biases: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add ``biases[L]`` to layer L's output at every position (gradients flow into the biases)."""
    def hook(layer: int):
        def fn(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden + biases[layer].to(hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return fn

    handles = [lm.layers[layer].register_forward_hook(hook(layer)) for layer in biases]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No weight of ``model`` takes gradients (their flags are restored afterwards); grad mode on."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# --- training ----------------------------------------------------------------------------------------------
class _Stopped(Exception):
    """``cancel`` was set inside a pass over the examples (the reference, an evaluation)."""


def _encoded(lm: LoadedModel, examples: Sequence[Example], max_tokens: int) -> list[tuple[_Encoded, ...]]:
    """Each example as the token sequences its objective scores: the completion, or chosen and rejected."""
    if examples[0].objective == "likelihood":
        return [(_encode(lm, e.prompt, e.completion, max_tokens),) for e in examples]
    return [(_encode(lm, e.prompt, e.chosen, max_tokens), _encode(lm, e.prompt, e.rejected, max_tokens))
            for e in examples]


def planned_positions(lm: LoadedModel, examples: Sequence[Example], config: TrainConfig) -> int:
    """How many token positions a training of ``examples`` goes through the model at most, counted with the
    tokenizer before any forward: every step's batch (its backward pass as two more), every held-out
    evaluation, and the preference objective's reference pass. A server caps this (``Limits``)."""
    items = _encoded(lm, examples, config.max_tokens)
    sizes = [sum(len(e.ids) for e in item) for item in items]
    _, held = split(len(items), config.holdout, config.seed)
    mean = sum(sizes) / len(sizes)
    steps = 3 * config.steps * min(config.batch_size, len(items) - len(held)) * mean
    evaluations = (config.steps // config.eval_every + 2) * sum(sizes[i] for i in held)
    reference = sum(sizes) if examples[0].objective == "preference" else 0
    return int(steps + evaluations + reference)


class _Task:
    """The examples encoded once, with the objective's loss on a batch of them. ``cancel`` ends the passes
    over all examples (the reference, evaluations) between batches."""

    def __init__(self, lm: LoadedModel, examples: Sequence[Example], beta: float, max_tokens: int,
                 cancel: threading.Event | None = None):
        self.lm, self.beta, self.cancel = lm, beta, cancel
        self.objective = examples[0].objective
        self.items = _encoded(lm, examples, max_tokens)
        if self.objective == "preference":
            with torch.no_grad():  # the reference: the unsteered model's preference, fixed
                self.reference = []
                for i in range(len(self.items)):
                    self._check()
                    self.reference.append(self._margin([i]).item())

    def _check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _Stopped

    def _margin(self, idx: Sequence[int]) -> torch.Tensor:
        chosen, _ = _token_logprobs(self.lm, [self.items[i][0] for i in idx])
        rejected, _ = _token_logprobs(self.lm, [self.items[i][1] for i in idx])
        return chosen - rejected

    def loss(self, idx: Sequence[int]) -> torch.Tensor:
        if self.objective == "likelihood":
            total, count = _token_logprobs(self.lm, [self.items[i][0] for i in idx])
            return -(total / count).mean()
        ref = torch.tensor([self.reference[i] for i in idx], device=self.lm.input_device)
        return -F.logsigmoid(self.beta * (self._margin(idx) - ref)).mean()

    def mean_loss(self, idx: Sequence[int], batch_size: int) -> float:
        parts = []
        with torch.no_grad():
            for i in range(0, len(idx), batch_size):
                self._check()
                parts.append((self.loss(idx[i:i + batch_size]).item(), len(idx[i:i + batch_size])))
        return sum(v * n for v, n in parts) / max(1, sum(n for _, n in parts))


def split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded shuffle; at least one of each when holding out."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = 0 if holdout <= 0 else min(n - 1, max(1, round(n * holdout)))
    return sorted(order[k:]), sorted(order[:k])


def train_vector(lm: LoadedModel, examples: Sequence[Example], config: TrainConfig, name: str = "trained",
                 progress: Callable[[Progress], None] | None = None,
                 cancel: threading.Event | None = None) -> TrainResult:
    """Learn one bias per layer of ``config.layers`` on ``examples`` (all of one objective); the model's
    weights are left exactly as they were. Returns the vector with the best held-out loss seen (the last
    one without a held-out split). Setting ``cancel`` or a KeyboardInterrupt ends training after the
    current step, keeping the best vector so far."""
    config.validate(lm, len(examples))
    if len({e.objective for e in examples}) > 1:
        raise UserError("the examples mix completion and chosen/rejected objects; use one kind")
    torch.manual_seed(config.seed)
    train_idx, held_idx = split(len(examples), config.holdout, config.seed)
    with frozen(lm.model):
        biases = {layer: torch.zeros(lm.hidden_size, device=lm.layers[layer].parameters().__next__().device,
                                     dtype=torch.float32, requires_grad=True) for layer in config.layers}
        try:
            task = _Task(lm, examples, config.beta, config.max_tokens, cancel)
            act_norms = _activation_norms(lm, task, config.layers)
            baseline = task.mean_loss(held_idx, config.batch_size) if held_idx else None
        except _Stopped:  # before the first step (the reference pass, the unsteered held-out loss)
            result = TrainResult(vector=None, stopped="cancelled")  # type: ignore[arg-type]
            result.vector = _vector(lm, examples, config, name, {k: v.detach().clone() for k, v in biases.items()},
                                    result, {})
            return result
        optimizer = torch.optim.Adam(list(biases.values()), lr=config.lr)
        result = TrainResult(vector=None, baseline_heldout=baseline)  # type: ignore[arg-type]
        best = {k: v.detach().clone() for k, v in biases.items()}
        best_loss, waited = math.inf, 0
        rng = random.Random(config.seed)
        order: list[int] = []
        try:
            for step in range(1, config.steps + 1):
                if cancel is not None and cancel.is_set():
                    result.stopped = "cancelled"
                    break
                if len(order) < config.batch_size:
                    order += rng.sample(train_idx, len(train_idx))
                idx, order = order[:config.batch_size], order[config.batch_size:]
                with biased(lm, biases):
                    loss = task.loss(idx)
                    optimizer.zero_grad()
                    loss.backward()
                optimizer.step()
                point = {"step": step, "train": round(loss.item(), 5)}
                if held_idx and (step % config.eval_every == 0 or step == config.steps):
                    with biased(lm, biases):
                        point["heldout"] = round(task.mean_loss(held_idx, config.batch_size), 5)
                result.curve.append(point)
                score = point.get("heldout", None) if held_idx else point["train"]
                if score is not None:
                    if score < best_loss:
                        best_loss, waited, result.best_step = score, 0, step
                        best = {k: v.detach().clone() for k, v in biases.items()}
                    elif held_idx:
                        waited += 1
                if progress is not None:
                    progress(Progress(step, config.steps, point["train"], point.get("heldout"),
                                      best_loss if held_idx and math.isfinite(best_loss) else None))
                if held_idx and waited >= config.patience:
                    result.stopped = "early stop"
                    break
        except KeyboardInterrupt:
            result.stopped = "interrupted"
        except _Stopped:  # during a held-out evaluation: that step's point is not kept
            result.stopped = "cancelled"
    if not held_idx:  # without a held-out split the last biases are the result
        best = {k: v.detach().clone() for k, v in biases.items()}
        result.best_step = len(result.curve)
    result.heldout_loss = best_loss if held_idx and math.isfinite(best_loss) else None
    result.train_loss = result.curve[-1]["train"] if result.curve else None
    result.vector = _vector(lm, examples, config, name, best, result, act_norms)
    return result


def _activation_norms(lm: LoadedModel, task: _Task, layers: Sequence[int]) -> dict[int, float]:
    """Mean norm of each layer's output over the examples' real tokens (unsteered), the first position
    left out: it is the attention sink, whose norm is several times every other's (on the bundled model
    it pulled the mean of layers 11-13 from ~150 to ~570). The scale a bias is read against."""
    norms: dict[int, torch.Tensor] = {}

    def hook(layer: int):
        def fn(module, args, output):
            norms[layer] = (output[0] if isinstance(output, tuple) else output).detach().float().norm(dim=-1)
        return fn

    handles = [lm.layers[layer].register_forward_hook(hook(layer)) for layer in layers]
    try:
        with torch.no_grad():
            ids, attn, _ = _batch(lm, [item[0] for item in task.items[:8]])
            lm.model(input_ids=ids, attention_mask=attn, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    real = attn.bool().clone()
    real[:, 0] = False
    return {layer: round(float(norms[layer][real].mean()), 4) for layer in layers}


def _thin(curve: list[dict]) -> list[dict]:
    if len(curve) <= MAX_CURVE_POINTS:
        return curve
    keep = {round(i * (len(curve) - 1) / (MAX_CURVE_POINTS - 1)) for i in range(MAX_CURVE_POINTS)}
    keep |= {i for i, p in enumerate(curve) if "heldout" in p}
    return [curve[i] for i in sorted(keep)][-MAX_CURVE_POINTS:]


def _vector(lm: LoadedModel, examples: Sequence[Example], config: TrainConfig, name: str,
            biases: dict[int, torch.Tensor], result: TrainResult, act_norms: dict[int, float]) -> SteeringVector:
    directions = {layer: b.detach().to("cpu", torch.float32).clone() for layer, b in biases.items()}
    meta = {
        "model_id": lm.model_id, "method": "trained", "objective": examples[0].objective,
        "examples": str(len(examples)), "dataset_hash": examples_hash(examples), "steps": str(len(result.curve)),
        "max_steps": str(config.steps), "lr": str(config.lr), "batch_size": str(config.batch_size),
        "seed": str(config.seed), "holdout": str(config.holdout), "stopped": result.stopped,
        "best_step": str(result.best_step), "train_loss": _num(result.train_loss),
        "heldout_loss": _num(result.heldout_loss), "baseline_heldout_loss": _num(result.baseline_heldout),
        "loss_curve": json.dumps(_thin(result.curve), separators=(",", ":")),
        "act_norms": json.dumps({str(k): v for k, v in act_norms.items()}),
        "suggested_band": f"{min(config.layers)}-{max(config.layers)}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if examples[0].objective == "preference":
        meta["beta"] = str(config.beta)
    return SteeringVector(directions, lm.model.config.model_type, name, meta)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.5f}"
