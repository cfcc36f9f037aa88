"""Random models of real reasoning models' shapes, built from their configs (no download), for GPU runs."""

from __future__ import annotations

import time

import torch

from steer_ui.model import cpu_matmul
from steer_ui.model.loading import LoadedModel, load_model


def random_r1_qwen_shape(device: str, dtype: str) -> LoadedModel:
    """A random model with DeepSeek-R1-Distill-Qwen-1.5B's shape (28 layers, hidden 1536), no download."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from steer_ui.model.known import KNOWN_MODELS
    from steer_ui.model.loading import find_layers, resolve_device_dtype

    dev, dt = resolve_device_dtype(device, dtype)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                      rope_theta=10000.0, tie_word_embeddings=False)
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        model = Qwen2ForCausalLM(cfg).to(dt).eval()
    cpu_matmul.use_where_wanted(model, dev, dt)
    tokenizer = load_model().tokenizer  # any tokenizer whose ids fit the vocabulary
    profile = KNOWN_MODELS["deepseek-ai/deepseek-r1-distill-qwen-1.5b"]
    return LoadedModel(model, tokenizer, "random:r1-distill-qwen-1.5b-shape", profile, find_layers(model), dev, dt,
                       time.perf_counter() - start, "random init")
