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
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class Pair:
    positive: str
    negative: str


def pairs_hash(pairs: Sequence[Pair]) -> str:
    blob = json.dumps([[p.positive, p.negative] for p in pairs], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_pairs_jsonl(path: str | Path) -> list[Pair]:
    """One ``{"positive": ..., "negative": ...}`` object a line; the error names the bad line."""
    return [parse_pair(obj, where) for where, obj in read_jsonl(path, "pairs", MAX_PAIRS_FILE_BYTES)]


def parse_pair(obj: object, where: str) -> Pair:
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("positive", "negative")):
        raise UserError(f'{where}: expected {{"positive": "...", "negative": "..."}}')
    if not obj["positive"].strip() or not obj["negative"].strip():
        raise UserError(f"{where}: positive and negative texts must not be empty")
    return Pair(obj["positive"], obj["negative"])


class _Enough(Exception):
    """Raised by the hook on the highest wanted layer: the rest of the forward is not needed."""


@torch.inference_mode()
def last_token_states(lm: LoadedModel, texts: Sequence[str], layers: Sequence[int], batch_size: int = 16,
                      progress: Progress | None = None) -> dict[int, torch.Tensor]:
    """``{layer: (len(texts), hidden)}`` float32 states at each text's last non-padding token."""
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
    try:
        for start in range(0, len(texts), batch_size):
            enc = tok(list(texts[start:start + batch_size]), padding=True, return_tensors="pt")
            mask = enc["attention_mask"]
            # Works for left and right padding: the last 1 in the mask is the last real token.
            last_index = mask.shape[1] - 1 - mask.flip(1).argmax(1)
            # A plain forward numbers positions 0..T-1 even under left padding; count real tokens instead.
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            try:
                lm.model(input_ids=enc["input_ids"].to(lm.input_device), attention_mask=mask.to(lm.input_device),
                         position_ids=positions.to(lm.input_device), use_cache=False)
            except _Enough:
                pass
            for layer in layers:
                out[layer].append(captured[layer])
            if progress is not None:
                progress(min(start + batch_size, len(texts)), len(texts))
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
