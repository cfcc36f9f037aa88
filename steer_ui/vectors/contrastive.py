"""Computing steering vectors from contrastive pairs: hidden states at the last token, then a direction.

Same conventions as the engine and repeng: layer L is the output of decoder block L, read at the last
non-padding token of each text tokenized with the tokenizer's defaults. Methods follow repeng:
``pca_diff`` is the first principal component of (positive - negative), ``pca_center`` of the states
centred on each pair's midpoint (both unit-norm); ``mean_diff`` is the mean of (positive - negative)
and keeps its natural norm. The sign is flipped so positives project higher in most pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch

from steer_ui.errors import UserError
from steer_ui.jsonl import read_jsonl
from steer_ui.model.loading import LoadedModel
from steer_ui.vectors.guidance import LayerStats, layer_stats, suggest_band
from steer_ui.vectors.layers import check_layers
from steer_ui.vectors.vector import SteeringVector

Method = Literal["mean_diff", "pca_diff", "pca_center"]
METHODS: tuple[str, ...] = ("mean_diff", "pca_diff", "pca_center")
Progress = Callable[[int, int], None]  # (texts done, texts total)
MAX_PAIRS_FILE_BYTES = 64 * 1024 * 1024
MAX_CONTEXT_TOKENS = 4096  # the most tokens of one text a vector is computed from (its end)
BATCH_TOKENS = 16384  # padded tokens in one forward: rows x the longest text
CHARS_PER_TOKEN = 32  # no token is longer; a text over CHARS_PER_TOKEN x the limit is cut before tokenizing


@dataclass(frozen=True)
class Pair:
    positive: str
    negative: str


def pairs_hash(pairs: Sequence[Pair]) -> str:
    blob = json.dumps([[p.positive, p.negative] for p in pairs], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_pairs_jsonl(path: str | Path, max_chars: int | None = None, name: str | None = None) -> list[Pair]:
    """One ``{"positive": ..., "negative": ...}`` object a line; the error names the bad line (by ``name``,
    when given, instead of the path). ``max_chars`` refuses a longer text (see ``parse_pair``)."""
    return [parse_pair(obj, where, max_chars)
            for where, obj in read_jsonl(path, "pairs", MAX_PAIRS_FILE_BYTES, name=name)]


def parse_pair(obj: object, where: str, max_chars: int | None = None) -> Pair:
    """A pair from one parsed line; with ``max_chars`` a text longer than that is refused here, before any
    model work (the model only ever reads the end of a text, up to ``context_limit`` tokens)."""
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("positive", "negative")):
        raise UserError(f'{where}: expected {{"positive": "...", "negative": "..."}}')
    if not obj["positive"].strip() or not obj["negative"].strip():
        raise UserError(f"{where}: positive and negative texts must not be empty")
    if max_chars is not None:
        for key in ("positive", "negative"):
            if len(obj[key]) > max_chars:
                raise UserError(f"{where}: the {key} text is {len(obj[key]):,} characters; the limit is "
                                f"{max_chars:,} characters per text")
    return Pair(obj["positive"], obj["negative"])


def context_limit(lm: LoadedModel) -> int:
    """The most tokens of one text the model reads: its context (``max_position_embeddings``), at most
    ``MAX_CONTEXT_TOKENS``."""
    n = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)
    return min(n, MAX_CONTEXT_TOKENS) if isinstance(n, int) and n > 0 else MAX_CONTEXT_TOKENS


def planned_positions(lm: LoadedModel, pairs: Sequence[Pair]) -> int:
    """The token positions computing a vector from ``pairs`` puts through the model (each text read up to
    ``context_limit``), counted with the tokenizer before any forward. A server caps this (``Limits``)."""
    limit = context_limit(lm)
    return sum(len(text_ids(lm.tokenizer, text, limit)) for pair in pairs for text in (pair.positive, pair.negative))


def text_ids(tokenizer, text: str, limit: int) -> list[int]:
    """``text``'s token ids (the tokenizer's defaults) cut to its last ``limit`` tokens, keeping a leading
    BOS the tokenizer adds: the state is read at the last token, so the end is what matters. A text longer
    than ``CHARS_PER_TOKEN`` characters a token of ``limit`` is cut to its end before tokenizing."""
    if len(text) > limit * CHARS_PER_TOKEN:
        text = text[-limit * CHARS_PER_TOKEN:]
    ids = list(tokenizer(text)["input_ids"])
    if len(ids) <= limit:
        return ids
    bos = getattr(tokenizer, "bos_token_id", None)
    head = ids[:1] if bos is not None and ids[0] == bos and limit > 1 else []
    return head + ids[len(ids) - (limit - len(head)):]


def _batches(tokenizer, texts: Sequence[str], batch_size: int, limit: int) -> Iterator[list[list[int]]]:
    """The texts' ids in order, in batches of at most ``batch_size`` texts and ``BATCH_TOKENS`` padded tokens
    (a batch of long texts is smaller: its padded length times its rows is what a forward holds)."""
    batch: list[list[int]] = []
    for text in texts:
        ids = text_ids(tokenizer, text, limit)
        width = max([len(ids), *(len(b) for b in batch)])
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > BATCH_TOKENS):
            yield batch
            batch = []
        batch.append(ids)
    if batch:
        yield batch


def _padded(batch: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) padded on ``side``, as the tokenizer's own padding does."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        at = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        input_ids[i, at] = torch.tensor(ids, dtype=torch.long)
        mask[i, at] = 1
    return input_ids, mask


class _Enough(Exception):
    """Raised by the hook on the highest wanted layer: the rest of the forward is not needed."""


@torch.inference_mode()
def last_token_states(lm: LoadedModel, texts: Sequence[str], layers: Sequence[int], batch_size: int = 16,
                      progress: Progress | None = None, max_tokens: int | None = None) -> dict[int, torch.Tensor]:
    """``{layer: (len(texts), hidden)}`` float32 states at each text's last non-padding token.

    Each text is read up to its last ``context_limit(lm)`` tokens (or ``max_tokens``, when lower), and a
    batch holds at most ``BATCH_TOKENS`` padded tokens, so the memory of a forward is bounded whatever the
    texts' lengths."""
    tok = lm.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out; any id will do
    top = max(layers)
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    captured: dict[int, torch.Tensor] = {}
    last_index = torch.empty(0, dtype=torch.long)

    def hook(layer: int):
        def fn(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            captured[layer] = hidden[rows, last_index.to(hidden.device)].float().cpu()
            if layer == top:
                raise _Enough
        return fn

    handles = [lm.layers[layer].register_forward_hook(hook(layer)) for layer in layers]
    limit = context_limit(lm) if max_tokens is None else max(1, min(max_tokens, context_limit(lm)))
    done = 0
    try:
        for batch in _batches(tok, texts, batch_size, limit):
            input_ids, mask = _padded(batch, tok.pad_token_id, getattr(tok, "padding_side", "right"))
            # Works for left and right padding: the last 1 in the mask is the last real token.
            last_index = mask.shape[1] - 1 - mask.flip(1).argmax(1)
            # A plain forward numbers positions 0..T-1 even under left padding; count real tokens instead.
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            try:
                lm.model(input_ids=input_ids.to(lm.input_device), attention_mask=mask.to(lm.input_device),
                         position_ids=positions.to(lm.input_device), use_cache=False)
            except _Enough:
                pass
            for layer in layers:
                out[layer].append(captured[layer])
            done += len(batch)
            if progress is not None:
                progress(done, len(texts))
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def _first_component(x: torch.Tensor) -> torch.Tensor:
    """First principal component (scikit-learn's PCA: centred, unit-norm)."""
    centred = x.double() - x.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[0].float()


def direction(states: torch.Tensor, method: Method) -> torch.Tensor:
    """One layer's direction from states ordered [pos0, neg0, pos1, neg1, ...]."""
    pos, neg = states[0::2], states[1::2]
    if method == "mean_diff":
        return (pos - neg).mean(dim=0)
    if method == "pca_diff":
        d = _first_component(pos - neg)
    elif method == "pca_center":
        center = (pos + neg) / 2
        d = _first_component(torch.cat([pos - center, neg - center]))
    else:
        raise UserError(f"unknown method {method!r}: use {', '.join(METHODS)}")
    proj_pos, proj_neg = pos @ d, neg @ d
    # repeng's rule: flip when positives project lower in more pairs than they project higher.
    if (proj_pos < proj_neg).float().mean() > (proj_pos > proj_neg).float().mean():
        d = -d
    return d


def interleave(pairs: Sequence[Pair]) -> list[str]:
    return [t for p in pairs for t in (p.positive, p.negative)]


@dataclass
class ComputedVector:
    vector: SteeringVector
    stats: list[LayerStats]
    band: tuple[int, int]


def compute_vector(lm: LoadedModel, pairs: Sequence[Pair], layers: Sequence[int], method: Method,
                   batch_size: int = 16, progress: Progress | None = None, source: str = "") -> ComputedVector:
    """A vector on ``layers`` from ``pairs``, with per-layer separation and norms in its metadata."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: use {', '.join(METHODS)}")
    if len(pairs) < 2:
        raise UserError(f"need at least 2 pairs to compute a vector, got {len(pairs)}")
    check_layers(tuple(layers), lm.n_layers)
    states = last_token_states(lm, interleave(pairs), layers, batch_size, progress)
    directions = {layer: direction(states[layer], method) for layer in layers}
    stats = [layer_stats(layer, states[layer], directions[layer]) for layer in layers]
    band = suggest_band(stats)
    meta = {
        "model_id": lm.model_id, "method": method, "pairs": str(len(pairs)), "dataset_hash": pairs_hash(pairs),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source,
        "suggested_band": f"{band[0]}-{band[1]}", "layer_stats": json.dumps([s.to_dict() for s in stats]),
    }
    vector = SteeringVector(directions, lm.model.config.model_type, source or method, meta)
    return ComputedVector(vector, stats, band)
