"""Linear layers for the few-row products of batched decode steps on CPU.

A decode step multiplies every weight by one row per stream (two for baseline + steered, four when the
probe's last positions reach the lm_head). For ``F.linear`` with 2-8 rows, MKL repacks the whole weight
on every call; on the 2-core development machine a pass over all of SmolLM2-135M's weights took
~95 ms at 2 rows against ~57 ms at 1, so a second stream cost more than a second model. The same
product computed as ``weight @ x.T`` streams the weight once: ~30 ms for the pass at 2 rows, ~37 ms at
4 (``python -m steer_ui.bench.__main__`` measures the effect end to end, and ``STEER_UI_PLAIN_LINEAR=1`` turns
it off to compare). One row (``generate``, a single stream) and long inputs (prompts, probe suffixes)
keep ``F.linear``, which is as fast or faster there.

The result is the same product with a different summation order, so it agrees with ``F.linear`` to
float32 rounding, not bit for bit.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

MIN_ROWS, MAX_ROWS = 2, 8
OPT_OUT_ENV = "STEER_UI_PLAIN_LINEAR"


class FewRowLinear(torch.nn.Linear):
    """``nn.Linear`` that computes 2-8 input rows as ``weight @ x.T`` (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not MIN_ROWS <= rows <= MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        # x.T must stay a transposed view (MKL takes it as column-major) and the output must be made
        # contiguous: a strided output sends attention to its slow kernel and the next layer's input
        # into the slow layout.
        out = (self.weight @ x.reshape(rows, x.shape[-1]).T).T.contiguous()
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def use_where_wanted(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> int:
    """Swap in few-row linears for a CPU float32 model (unless ``STEER_UI_PLAIN_LINEAR=1``); how many."""
    if device.type != "cpu" or dtype != torch.float32 or os.environ.get(OPT_OUT_ENV, "") == "1":
        return 0
    return use_few_row_linears(model)


def use_few_row_linears(model: torch.nn.Module) -> int:
    """Turn every plain ``nn.Linear`` in ``model`` into a ``FewRowLinear`` in place; how many were.

    Subclasses (quantized linears, adapters) are left alone: their forward is not ``F.linear``.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = FewRowLinear
            swapped += 1
    return swapped


def in_use(model: torch.nn.Module) -> bool:
    return any(isinstance(m, FewRowLinear) for m in model.modules())
