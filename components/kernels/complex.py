"""ComplexFormer CMHA (a reconstruction): RoPE attention with a learned per-head scaling and bias of the phases.

Each head's q and k are read as d/2 complex numbers (first half real, second half imaginary, as Llama's
half-split RoPE pairs them) in polar form, q_c = r^q_c e^(i phi^q_c), and the score is

    s_mn = sum_c r^q_mc r^k_nc cos(delta_{h,c} (phi^q_mc - phi^k_nc) + b_{h,c} + (m - n) g_c) / sqrt(d)

with RoPE frequencies g_c = theta^(-2c/d). With delta = 1 and b = 0 this is exactly RoPE attention. Since
cos(A - B) = cos A cos B + sin A sin B, the score factorises: it is RoPE attention on re-phased vectors

    q'_c = r^q_c e^(i (delta_c phi^q_c + b_c)),    k'_c = r^k_c e^(i delta_c phi^k_c)

so the kernel edits q and k before RoPE (phases from atan2) and keeps the fused softmax SDPA: O(T d) extra work
instead of the reference's (B, H, T, T, d/2) tensor.

Based on Shao et al., "ComplexFormer: Disruptively Advancing Transformer Inference Ability via Head-Specific
Complex Vector Attention" (arXiv 2505.10222, marked withdrawn). Reference code (unofficial, closest public):
https://github.com/shaojintian/complexFormer (``attention/complex_attention.py``,
``ComplexMultiHeadAttentionV2``).

Deviations from the reference code: the exact factorised form above instead of materialising
cos(delta * (phi_q - phi_k) + b + (m - n) g) per key; the usual 1/sqrt(d) scaling (the reference has none) so that
delta = 1, b = 0 is standard RoPE attention; RoPE's own frequencies (theta from the model config) are the g_c; with
grouped KV heads, delta is shared by the query heads of a KV group (one delta per KV head, b per query head). As
in the reference the score is discontinuous in q, k at the atan2 branch cut when delta != 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from components.base import ParamError
from components.kernels.base import AttentionKernel, KernelState
from registry import register

MAG_EPS = 1e-9  # inside the square root, as in the reference


def rephase(y: torch.Tensor, delta: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y (B, T, heads, D), delta (heads, D/2), bias (heads, D/2) or None -> r e^(i (delta phi + b)), half-split."""
    re, im = y.chunk(2, dim=-1)  # (B, T, heads, D/2) each
    r = torch.sqrt(re * re + im * im + MAG_EPS)
    phase = delta * torch.atan2(im, re)
    if bias is not None:
        phase = phase + bias
    return torch.cat([r * torch.cos(phase), r * torch.sin(phase)], dim=-1)  # (B, T, heads, D)


@register("complex", version="1.0.0", family="kernel", paper="arXiv:2505.10222",
          summary="ComplexFormer CMHA (reconstruction): RoPE attention with learned per-head phase scale and bias.")
@dataclass(frozen=True)
class Complex(AttentionKernel):
    """ComplexFormer complex multi-head attention as re-phased RoPE attention.

    Parameters
    ----------
    init : {"reference", "rope"}
        Initial phases: ``reference`` draws delta ~ N(0, (d/2)^-1/2) with b = 0 (the reference's init); ``rope``
        starts at delta = 1, b = 0 (exactly RoPE attention). Default ``reference``.
    """

    init: Literal["reference", "rope"] = "reference"

    transforms: ClassVar[tuple[str, ...]] = ("q", "k")
    patchable: ClassVar[bool] = True  # attention itself stays softmax over (edited) q, k
    example: ClassVar[dict[str, str]] = {"init": "rope"}

    def check_shape(self, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        if head_dim % 2:
            raise ParamError(f"complex: the head dimension {head_dim} must be even (pairs of real/imaginary parts)")

    def make_state(self, state: KernelState) -> None:
        half = state.head_dim // 2
        if self.init == "rope":
            delta = torch.ones(state.n_kv_heads, half)
        else:
            delta = torch.randn(state.n_kv_heads, half) * half**-0.5
        state.delta = nn.Parameter(delta)  # (Hkv, D/2)
        state.bias = nn.Parameter(torch.zeros(state.n_heads, half))  # (H, D/2)

    def transform(self, state: KernelState, kind: str, y: torch.Tensor) -> torch.Tensor:
        if kind == "k":
            return rephase(y, state.delta, None)
        group = state.n_heads // state.n_kv_heads
        return rephase(y, state.delta.repeat_interleave(group, dim=0), state.bias)
