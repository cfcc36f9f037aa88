"""Tiny random models of several architectures, built from configs with a tokenizer trained here.

No network: the tokenizer is a byte-level BPE trained on a few sentences, with ChatML-style special
tokens and a chat template that opens a <think> block (like DeepSeek-R1's), so thinking-phase logic
is exercised too. 'Yes' and 'No' (with and without a leading space) are single tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
CORPUS = [
    "Is seventeen a prime number? Yes it is. So the final answer is Yes.",
    "Is nine a prime number? No it is not. So the final answer is No.",
    "Wait, let me check that again. yes no Yes No YES NO",
    "The quick brown fox jumps over the lazy dog while we think about the answer.",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.add_tokens(THINK)  # like R1/Qwen3: think tags are ordinary (decoded) added tokens
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(arch: str, vocab: int, eos: int, max_positions: int = 512):
    common = dict(vocab_size=vocab, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
    if arch == "llama":
        return LlamaForCausalLM, LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=max_positions, **common)
    if arch == "qwen2":
        return Qwen2ForCausalLM, Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, **common)
    if arch == "gpt2":
        return GPT2LMHeadModel, GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=512, **common)
    if arch == "gpt_neox":
        return GPTNeoXForCausalLM, GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                                 num_attention_heads=4, max_position_embeddings=512, **common)
    raise ValueError(arch)


def build_tiny_model(arch: str, path: Path, seed: int = 0, max_positions: int = 512) -> Path:
    """Save a random ``arch`` model and the tokenizer to ``path``; load it with steer_ui's loader."""
    tok = build_tokenizer()
    cls, cfg = _config(arch, len(tok), tok.convert_tokens_to_ids("<|im_end|>"), max_positions)
    torch.manual_seed(seed)
    model = cls(cfg)
    # Random init gives near-uniform logits; a larger output scale makes greedy choices decisive.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
