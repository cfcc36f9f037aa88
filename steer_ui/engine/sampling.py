"""Choosing the next token for every row at once, with randomness shared between rows.

Sampling is Gumbel-max: argmax(filtered logits / T + g), with one noise vector g per step used by
every row. That samples each row from its own (top-k/top-p filtered) distribution, yet two rows with
equal logits always pick the same token, so a coefficient-0 row stays identical to the baseline.
"""

from __future__ import annotations

import torch

from steer_ui.engine.run_settings import RunSettings


class Sampler:
    def __init__(self, settings: RunSettings, device: torch.device):
        self.settings = settings
        self._gen: torch.Generator | None = None
        if settings.temperature > 0:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(settings.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token ids, one per row, from ``logits`` (rows x vocab)."""
        if self._gen is None:
            return logits.argmax(dim=-1)
        s = self.settings
        scores = logits.float() / s.temperature
        if s.top_k > 0 and s.top_k < scores.shape[-1]:
            kth = scores.topk(s.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if s.top_p < 1.0:
            scores = _top_p(scores, s.top_p)
        u = torch.rand(scores.shape[-1], generator=self._gen, device=scores.device)
        gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
        return (scores + gumbel).argmax(dim=-1)


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (always at least one)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = (cum - sorted_scores.softmax(dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
