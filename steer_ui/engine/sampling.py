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
        self._last = self._last_logits = logits
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
        self._last = scores + gumbel
        return self._last.argmax(dim=-1)

    def again(self, row: int, banned: frozenset[int]) -> int:
        """Row ``row``'s choice at the last call with ``banned`` refused: the same noise, so it is the token
        the row would have sampled had the banned ones had no probability (greedy: the runner-up)."""
        scores = self._last[row].clone()
        scores[list(banned)] = float("-inf")
        if torch.isinf(scores).all():  # top-k/top-p left only banned tokens: the likeliest other one
            scores = self._raw_scores(row, banned)
        return int(scores.argmax())

    def _raw_scores(self, row: int, banned: frozenset[int]) -> torch.Tensor:
        scores = self._last_logits[row].float().clone()
        scores[list(banned)] = float("-inf")
        return scores


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (always at least one)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = (cum - sorted_scores.softmax(dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def stop_logprobs(logits: torch.Tensor, thinking: list[bool], ends) -> list[float]:
    """Per row, log p(ending) from the step's next-token ``logits``: the closing tag's first token for a row
    inside its thinking block, end-of-sequence otherwise. No extra forward (the step has these logits), and
    per step one reduction over the vocabulary and one transfer: the end tokens' logits minus logsumexp,
    not a whole log-softmax."""
    logits = logits.float()
    norm = torch.logsumexp(logits, dim=-1)
    eos = sorted(ends.eos)
    at_eos = torch.logsumexp(logits[:, eos], dim=-1) - norm if eos else torch.full_like(norm, float("-inf"))
    if not ends.thinking or ends.close_first is None:
        return at_eos.tolist()
    at_close, at_end = torch.stack([logits[:, ends.close_first] - norm, at_eos]).tolist()
    return [c if t else e for c, e, t in zip(at_close, at_end, thinking)]
