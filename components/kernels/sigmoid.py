"""Sigmoid attention with or without row normalisation (the attention-sink ablation of Gu et al.).

Each causal score goes through an element-wise sigmoid instead of a row softmax:

    A = sigmoid(Q K^T / sqrt(d)) * M          (M = causal/padding 0/1 mask, no row sum)
    A_norm = A / (sum_j A_ij + 1e-8)          (normalize=True)
    O = A V

Without normalisation the weights of a row need not sum to 1, so no token has to absorb "spare" attention: Gu et
al. found that no attention sink emerges then, up to 1B parameters. The weights are materialised (B, H, T, S); with
``output_attentions=True`` they are returned as computed (not normalised for ``normalize=False``: sink metrics
row-normalise them first, as the reference's inference code does).

Based on Gu et al., "When Attention Sink Emerges in Language Models: An Empirical View" (ICLR 2025,
arXiv 2410.10781). Reference code: https://github.com/sail-sg/Attention-Sink (``lit_gpt/model_attn_sim.py``,
``eager_scaled_dot_product_attention`` with ``sim="sigmoid"`` and ``attention_normalize``).

Deviations from the reference code: none in the formula (the reference multiplies by a bf16 lower-triangular
0/1 matrix; here the mask is bool and follows padding and KV-cache offsets; no attention dropout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.attention import math as am
from components.kernels.base import AttentionKernel, KernelCall, KernelState, scores
from registry import register

EPS = 1e-8  # as in the reference


@register("sigmoid", version="1.0.0", family="kernel", paper="arXiv:2410.10781",
          summary="Sigmoid attention, optionally row-normalised (no attention sink without normalisation).")
@dataclass(frozen=True)
class Sigmoid(AttentionKernel):
    """Sigmoid attention (element-wise sigmoid of the causal scores, optional row normalisation).

    Parameters
    ----------
    normalize : bool
        Divide each row by its sum (+1e-8). Default False (the no-sink variant).
    """

    normalize: bool = False
    example: ClassVar[dict[str, str]] = {"normalize": "true"}

    def attend(self, state: KernelState, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               call: KernelCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        weights = torch.sigmoid(scores(q, k, call))  # (B, H, T, S)
        weights = weights.masked_fill(~call.visible(q.device), 0.0)
        if self.normalize:
            weights = weights / (weights.sum(-1, keepdim=True) + EPS)
        out = torch.matmul(weights.to(v.dtype), am.repeat_kv(v, q.shape[1] // k.shape[1]))  # (B, H, T, D)
        return out, (weights.to(q.dtype) if call.want_probs else None)
