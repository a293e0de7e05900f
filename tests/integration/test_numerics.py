"""Reduced-precision loading fails with a clear message when a model's logits are not finite (Gemma-3 in
float16), and passes a model that computes correctly."""

from __future__ import annotations

import pytest
import torch

from components.numerics import NonFiniteLogitsError, check_finite
from tests.helpers.tiny import tiny_model, tokenizer


def _overflowing(dtype):
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    with torch.no_grad():  # the first MLP's output (~2e5) exceeds float16's range (65504) but not bfloat16's
        for w, scale in ((mlp.gate_proj.weight, 100.0), (mlp.up_proj.weight, 100.0), (mlp.down_proj.weight, 1e3)):
            w.mul_(scale)
    return model.to(dtype)


def test_overflow_in_float16_is_named_with_the_fix():
    with pytest.raises(NonFiniteLogitsError, match=r"tiny gives non-finite logits in float16 .*Use --dtype "
                                                   r"float32 or --dtype bfloat16"):
        check_finite(_overflowing(torch.float16), tokenizer(), "float16", "tiny")


def test_finite_models_pass():
    check_finite(_overflowing(torch.bfloat16), tokenizer(), "bfloat16", "tiny")  # same weights, wider range
    check_finite(tiny_model("llama").to(torch.float16), tokenizer(), "float16", "tiny")
