"""Steering hooks: add ``scale[row, pos] * V_L[row]`` to the output of decoder block L, for one run only.

``V_L`` holds one direction per row (rows x hidden), so rows with different vectors, or steering
different layers (a zero direction), share one forward. The hooks hold no schedule of their own:
before each forward the engine sets ``scale`` (rows x positions of that forward, already coefficient x
scope mask), because only the engine knows absolute positions and phases; per-call token indices are
wrong under a KV cache. Hooks exist only inside ``with``: leaving the block (normally, on error, or
when a cancelled generator is closed) removes them all.
"""

from __future__ import annotations

from functools import partial

import torch


class Steerer:
    """Context manager installing per-row steering hooks on the chosen layers."""

    def __init__(self, layers: torch.nn.ModuleList, directions: dict[int, torch.Tensor], dtype: torch.dtype):
        self._layers = layers
        self._directions = directions  # layer -> (rows, hidden)
        self._dtype = dtype
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.scale: torch.Tensor | None = None  # (rows, positions); None = leave this forward alone

    def __enter__(self) -> Steerer:
        try:
            for index, matrix in self._directions.items():
                layer = self._layers[index]
                # Under device_map='auto' layers live on different GPUs: keep each vector beside its layer.
                device = next(layer.parameters()).device
                per_row = matrix.to(device=device, dtype=self._dtype).unsqueeze(1)  # (rows, 1, hidden)
                self._handles.append(layer.register_forward_hook(partial(self._add, per_row)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.scale = None

    def _add(self, per_row: torch.Tensor, module: torch.nn.Module, args: tuple, output: object) -> object:
        scale = self.scale
        if scale is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + scale.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1) * per_row
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
