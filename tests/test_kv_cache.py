"""The growing dynamic cache: the same contents as transformers' DynamicLayer, without the copies."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from steer_ui.engine.kv_cache import MIN_ROOM, GrowingLayer, crop, new_cache


def test_growing_layer_matches_dynamic_layer_through_appends_crops_and_growth():
    torch.manual_seed(0)
    grow, ref = GrowingLayer(), DynamicLayer()
    rooms = set()
    # A prefill, then steps and probe-like append-then-crop pairs, well past several growths.
    for i in range(120):
        n = 17 if i == 0 else (1 + 5 * (i % 3 == 0))
        k, v = torch.randn(2, 3, n, 8), torch.randn(2, 3, n, 4)  # values may have their own head size
        kg, vg = grow.update(k, v)
        kr, vr = ref.update(k, v)
        assert torch.equal(kg, kr) and torch.equal(vg, vr)
        if n > 1 and i:
            grow.crop(-(n - 1))
            ref.crop(-(n - 1))
        assert grow.get_seq_length() == ref.get_seq_length()
        rooms.add(grow._room_k.shape[-2])
    assert torch.equal(grow.keys, ref.keys) and torch.equal(grow.values, ref.values)
    assert len(rooms) >= 3  # it grew, more than once
    assert max(rooms) <= grow.get_seq_length() * 5 // 4 + MIN_ROOM + 6  # and not far past what it holds


def test_steps_write_in_place_without_copying_the_layer():
    layer = GrowingLayer()
    layer.update(torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 4))
    room = layer._room_k.data_ptr()
    for _ in range(MIN_ROOM):  # all within the room made at the prefill
        k, _ = layer.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
        assert k.data_ptr() == room
    assert layer.get_seq_length() == 10 + MIN_ROOM


def test_new_cache_uses_growing_layers_and_crop_rewinds(bundled):
    cache = new_cache(bundled.model.config, "dynamic", 0)
    assert cache.layers and all(type(layer) is GrowingLayer for layer in cache.layers)
    ids = torch.tensor([bundled.tokenizer.encode("Is 9 prime?")])
    with torch.inference_mode():
        bundled.model(input_ids=ids, **{bundled.cache_arg: cache}, use_cache=True)
        crop(cache, 2)
    assert cache.get_seq_length() == ids.shape[1] - 2
