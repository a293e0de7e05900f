"""Tiny models and tokenizers built from configs for tests (no downloads)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from transformers import (GPT2Config, GPT2LMHeadModel, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from components.benchmarks import _text
from components.lm.tokenizer import train_tokenizer

FAMILIES = ("llama", "qwen2", "mistral", "gpt2")
# The architectures of the real models (tests/integration/test_real_architectures.py): Gemma-3 (sliding window on
# all but every third layer here, query_pre_attn_scalar scaling, one KV head, q/k norms) and Llama with GQA 9:3.
REAL_ARCHS = ("gemma3", "llama_gqa")


@functools.lru_cache(maxsize=1)
def _trained_tokenizer():
    corpus = _text.stories(0, 300) + [f"abc:{i:03d} xyz:{i * 7 % 1000:03d}." for i in range(300)]
    return train_tokenizer(corpus, vocab_size=320)


def tokenizer():
    """The tests' 320-token tokenizer: a fresh copy each call, so a test that adds tokens changes no other test."""
    return copy.deepcopy(_trained_tokenizer())


def tiny_model(family: str = "llama", seed: int = 0, vocab_size: int = 320, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, hidden: int = 64, bidirectional: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=kv_heads, **common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=kv_heads, **common))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(num_key_value_heads=kv_heads, sliding_window=12, **common))
    elif family == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            num_key_value_heads=1, head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
            layer_types=["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(layers)],
            use_bidirectional_attention=bidirectional, **common))
    elif family == "llama_gqa":  # SmolLM2's head layout: 9 query heads sharing 3 KV heads
        model = LlamaForCausalLM(LlamaConfig(**{**common, "num_attention_heads": 9, "hidden_size": 72,
                                                 "num_key_value_heads": 3}))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                                           n_positions=512, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        raise ValueError(family)
    # larger random weights than the default init so attention patterns are far from uniform
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("q_proj" in name or "k_proj" in name or "c_attn" in name):
                p.mul_(8.0)
    return model.eval()


def save_tiny(path: Path, family: str = "llama", **kw) -> Path:
    model = tiny_model(family, **kw)
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
