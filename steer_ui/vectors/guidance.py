"""Numbers that help choose layers and coefficients: separation per layer, norms, logit-lens readout.

Raw coefficients are not portable between models, layers or methods (PCA vectors are unit-norm,
mean_diff vectors are not), so doses are also given relative to the layer's typical activation norm:
``|c| * ||v_L|| / mean ||h_L||``. Around 0.5 is a common sweet spot; past ~1.9 models tend to collapse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from steer_ui.model.loading import LoadedModel, find_final_norm
from steer_ui.vectors.vector import SteeringVector


@dataclass(frozen=True)
class LayerStats:
    layer: int
    pair_accuracy: float  # share of pairs whose positive projects above its negative
    effect_size: float  # Cohen's d between positive and negative projections
    vector_norm: float
    act_norm: float  # mean ||h_L|| over the texts the vector was computed from

    @property
    def relative_norm(self) -> float:
        """||v_L|| / mean ||h_L||: the relative dose of coefficient 1."""
        return self.vector_norm / self.act_norm if self.act_norm > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "relative_norm": self.relative_norm}


def layer_stats(layer: int, states: torch.Tensor, vec: torch.Tensor) -> LayerStats:
    """Separation of [pos0, neg0, pos1, ...] ``states`` along ``vec``."""
    unit = vec / vec.norm().clamp_min(1e-12)
    proj = states @ unit
    pos, neg = proj[0::2], proj[1::2]
    pooled = ((pos.var(unbiased=False) + neg.var(unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    return LayerStats(
        layer=layer,
        pair_accuracy=float((pos > neg).float().mean()),
        effect_size=float((pos.mean() - neg.mean()) / pooled),
        vector_norm=float(vec.norm()),
        act_norm=float(states.norm(dim=-1).mean()),
    )


def suggest_band(stats: Sequence[LayerStats], width: int = 4) -> tuple[int, int]:
    """The contiguous run of ``width`` layers with the best mean separation (effect size)."""
    ordered = sorted(stats, key=lambda s: s.layer)
    if len(ordered) <= width:
        return ordered[0].layer, ordered[-1].layer
    best, best_score = 0, float("-inf")
    for i in range(len(ordered) - width + 1):
        window = ordered[i:i + width]
        if window[-1].layer - window[0].layer != width - 1:
            continue  # not contiguous in the model
        score = sum(s.effect_size for s in window) / width
        if score > best_score:
            best, best_score = i, score
    if best_score == float("-inf"):  # no contiguous window: the single best layer
        top = max(ordered, key=lambda s: s.effect_size)
        return top.layer, top.layer
    return ordered[best].layer, ordered[best + width - 1].layer


def relative_dose(coef: float, stats: LayerStats) -> float:
    return abs(coef) * stats.relative_norm


COLLAPSE_DOSE = 1.9  # hotwire-vllm's report: collapse around 1.9, safe around 0.7


def dose_summary(metadata: dict[str, str], layers: Sequence[int], coefs: Sequence[float]) -> list[str]:
    """One line per coefficient with its relative dose range over ``layers``, from a vector's stored stats."""
    stats = {s["layer"]: s for s in json.loads(metadata.get("layer_stats", "[]"))}
    rel = [stats[x]["relative_norm"] for x in layers if x in stats]
    if not rel:
        return []
    lines = []
    for c in coefs:
        lo, hi = abs(c) * min(rel), abs(c) * max(rel)
        warn = f"  (above {COLLAPSE_DOSE}: expect collapse)" if hi > COLLAPSE_DOSE else ""
        lines.append(f"coef {c:+g}: relative dose {lo:.2f}-{hi:.2f} per layer over {len(rel)} layers{warn}")
    return lines


class _Row(Protocol):
    vector: SteeringVector
    layers: Sequence[int] | None
    coef: float


def dose_lines(rows: Sequence[_Row]) -> list[str]:
    """``dose_summary`` for each steered row, from its own vector's stored stats (rows whose vectors carry
    none are left out); rows of a mixed run are named by their vector."""
    rows = [r for r in rows if r.vector is not None]  # a budget row alone steers nothing
    named = len({id(r.vector) for r in rows}) > 1
    lines = []
    for r in rows:
        layers = r.layers if r.layers is not None else r.vector.layers
        for line in dose_summary(r.vector.metadata, layers, [r.coef]):
            lines.append(f"{r.vector.name}: {line}" if named else line)
    return lines


@torch.inference_mode()
def logit_lens(lm: LoadedModel, vec: torch.Tensor, k: int = 8) -> tuple[list[str], list[str]]:
    """Tokens the direction promotes and suppresses most, read through the final norm and unembedding.

    Tokens are ranked by the cosine between the normed direction and their unembedding row: by raw
    logit, the same few large-norm tokens top the list for almost any direction (the unembedding is
    anisotropic), which says nothing about this vector.
    """
    norm = find_final_norm(lm.model)
    weight = lm.model.get_output_embeddings().weight
    h = vec.to(device=weight.device, dtype=weight.dtype).reshape(1, 1, -1)
    u = (norm(h) if norm is not None else h)[0, 0].float()
    scores = (weight.float() @ u) / weight.float().norm(dim=1).clamp_min(1e-12)
    top = scores.topk(k).indices.tolist()
    bottom = (-scores).topk(k).indices.tolist()

    def show(ids: list[int]) -> list[str]:
        return [lm.tokenizer.decode([i]) for i in ids]

    return show(top), show(bottom)
