"""The KV caches the engine decodes on, and cutting the probe's suffix back off them.

``dynamic`` is transformers' DynamicCache with its full-attention layers swapped for ``GrowingLayer``:
DynamicLayer appends with ``torch.cat``, copying the whole layer at every step (the copies grow with
the context, ~94 MB per step at 2,048 positions on the bundled model), while a GrowingLayer writes into
spare room and hands attention a view. Sliding-window layers keep transformers' own class.

``static`` is transformers' StaticCache, preallocated for the whole run (fixed shapes for
``torch.compile``).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

from steer_ui.errors import UserError

MIN_ROOM = 32  # positions


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into spare room (grown by a quarter when full) instead of copying."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._room_k: torch.Tensor | None = None
        self._room_v: torch.Tensor | None = None
        self._len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._len + key_states.shape[-2]
        if self._room_k is None or end > self._room_k.shape[-2]:
            self._grow(key_states, value_states, end + max(MIN_ROOM, end // 4))
        self._room_k[..., self._len:end, :] = key_states
        self._room_v[..., self._len:end, :] = value_states
        self._set_length(end)
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, room: int) -> None:
        k = key_states.new_empty((*key_states.shape[:-2], room, key_states.shape[-1]))
        v = value_states.new_empty((*value_states.shape[:-2], room, value_states.shape[-1]))
        if self._len:
            k[..., :self._len, :] = self.keys
            v[..., :self._len, :] = self.values
        self._room_k, self._room_v = k, v

    def _set_length(self, length: int) -> None:
        self._len = length
        self.keys = self._room_k[..., :length, :]
        self.values = self._room_v[..., :length, :]

    def crop(self, tokens_to_remove: int) -> None:
        # The cropped positions stay in the room and are overwritten by the next tokens: nothing is copied.
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized:
            self._set_length(max(0, self._len - abs(tokens_to_remove)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._adopt()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._adopt()

    def _adopt(self) -> None:
        """After an operation that replaced keys and values wholesale, they are the room."""
        if self.is_initialized and self.keys is not None and self.keys.numel():
            self._room_k, self._room_v, self._len = self.keys, self.values, self.keys.shape[-2]


def new_cache(config, kind: str, max_len: int) -> DynamicCache | StaticCache:
    """An empty cache of ``kind`` ("dynamic" or "static", the latter sized ``max_len``) for ``config``."""
    if kind == "static":
        return StaticCache(config=config, max_cache_len=max_len)
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def crop(cache: DynamicCache | StaticCache, n: int) -> None:
    """Forget the last ``n`` positions of every layer."""
    if isinstance(cache, StaticCache):
        # The suffix stays in the buffer past the length: the causal mask hides it from later tokens,
        # which overwrite it. Nothing is copied.
        for layer in cache.layers:
            layer.cumulative_length.sub_(n)
    else:
        cache.crop(-n)


def check_static_cache(config, model_id: str) -> None:
    """The static cache's crop rewinds plain layers only; sliding-window layers keep a rolling buffer."""
    cache = StaticCache(config=config, max_cache_len=1)
    if any(type(layer) is not StaticLayer for layer in cache.layers):
        raise UserError(f"the static cache does not support {model_id}'s sliding-window attention layers; "
                        "use the default dynamic cache")
