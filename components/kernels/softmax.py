"""Softmax attention: the standard kernel (fused SDPA), the baseline every other kernel is compared with.

    O = softmax(Q K^T / sqrt(d) + M) V,   M_ij = 0 if key j is visible to query i (causal, not padding) else -inf

Runs on PyTorch's fused ``scaled_dot_product_attention`` with ``is_causal`` kept when there is no padding; the
probabilities are materialised only when ``output_attentions=True`` asks for them. As a kernel it carries the model
options that need one: ``qk_layernorm`` (LayerNorm on each head's q and k before RoPE, Wortsman et al. /
Dehghani et al.). With no option it computes exactly what stock ``sdpa`` computes.

Based on Vaswani et al., "Attention Is All You Need" (arXiv 1706.03762). Reference code: transformers'
``integrations/sdpa_attention.py`` (``sdpa_attention_forward``).

Deviations from the reference code: none (GQA key/value heads are repeated before the fused kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from components.kernels.base import AttentionKernel
from registry import register


@register("softmax", version="1.0.0", family="kernel", paper="arXiv:1706.03762",
          summary="Softmax attention on fused SDPA (the baseline kernel; carries the qk-layernorm option).")
@dataclass(frozen=True)
class Softmax(AttentionKernel):
    """Softmax attention (fused SDPA).

    Parameters
    ----------
    (none)
    """

    patchable: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {}
