"""Random models of real reasoning models' shapes, built from their configs (no download), for GPU runs.

A GPU machine here has no hub: the weights are random (speed depends on the shape, not the values) and
the tokenizer is any one whose ids fit the vocabulary, by default the bundled model's. On a machine
without the bundled model, save its tokenizer first (3.5 MB) and pass the folder:

    python -c "from steer_ui.model.loading import load_model; load_model().tokenizer.save_pretrained('tok')"
    python -m steer_ui.bench --random-shape r1-distill-llama-8b --tokenizer tok --device cuda
"""

from __future__ import annotations

import time

import torch

from steer_ui.errors import UserError
from steer_ui.model.loading import LoadedModel, find_layers, load_model, ready_for_steering, resolve_device_dtype

# name: (config class, architecture, known-model key, config values)
SHAPES = {
    "r1-distill-qwen-1.5b": ("Qwen2Config", "Qwen2ForCausalLM", "deepseek-ai/deepseek-r1-distill-qwen-1.5b", dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_position_embeddings=131072, rope_theta=10000.0, tie_word_embeddings=False)),
    "r1-distill-llama-8b": ("LlamaConfig", "LlamaForCausalLM", "deepseek-ai/deepseek-r1-distill-llama-8b", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False)),
}


def random_shape(name: str, device: str = "auto", dtype: str = "auto", tokenizer: str | None = None,
                 layers: int | None = None) -> LoadedModel:
    """A random model of ``name``'s shape (``layers`` fewer for quick GPU tests), no download."""
    import transformers
    from transformers import AutoTokenizer

    from steer_ui.model.known import KNOWN_MODELS, profile_for

    if name not in SHAPES:
        raise UserError(f"unknown shape {name!r}: use {', '.join(SHAPES)}")
    config_name, model_name, key, values = SHAPES[name]
    dev, dt = resolve_device_dtype(device, dtype)
    cfg = getattr(transformers, config_name)(**{**values, **({"num_hidden_layers": layers} if layers else {})})
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        model = getattr(transformers, model_name)(cfg).to(dt)
    ready_for_steering(model, dev, dt)
    tok = AutoTokenizer.from_pretrained(tokenizer) if tokenizer else load_model().tokenizer
    if len(tok) > cfg.vocab_size:
        raise UserError(f"the tokenizer has {len(tok)} ids, more than {name}'s vocabulary of {cfg.vocab_size}")
    model.generation_config.eos_token_id = tok.eos_token_id
    profile = KNOWN_MODELS[key] if not layers else profile_for(f"random:{name}", layers, cfg.hidden_size)
    return LoadedModel(model, tok, f"random:{name}-shape", profile, find_layers(model), dev, dt,
                       time.perf_counter() - start, "random init")
