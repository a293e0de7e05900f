"""MoH: Mixture-of-Head attention. Each token uses the shared heads plus its top-k routed heads, weighted by gates.

Softmax attention per head, then a per-token weighted sum of head outputs instead of a plain concatenation:

    O = sum_i g_i H^i W_O^i
    shared heads (h_s, always on):  g_s = alpha_1 * h_s * softmax(W_s x)
    routed heads (h - h_s):         p = softmax(W_r x); keep the top-k, renormalise over them, times k;
                                    g_r = alpha_2 * that
    [alpha_1, alpha_2] = 2 * softmax(W_h x)
    load balance:  L_b = E^2 * mean_i(P_i f_i) over the E = h - h_s routed heads (P_i = mean gate probability,
                   f_i = share of tokens routed to head i), averaged over layers, weight beta = 0.01

The count factors (h_s, k, 2) keep the mean gate of the active heads at 1. The first ``shared`` heads of each layer
are the shared ones. All heads are still computed and the unselected ones multiplied by 0 (no speed gain on CPU).

Based on Jin et al., "MoH: Multi-Head Attention as Head-of-Mixture Attention" (ICML 2025, arXiv 2410.11842).
Reference code: https://github.com/SkyworkAI/MoH (``MoH-DiT/models.py::MoHAttention``, ``MoH-ViT/attention.py``,
loss weight in ``MoH-ViT/engine.py`` / DiT ``--moh-loss-coeff 0.01``).

Deviations from the reference code: the router reads the attention input (after the layer's RMSNorm) of a causal
LM instead of ViT/DiT tokens; one shared head is allowed (its softmax gate is then 1); the load-balance statistics
include padding tokens of right-padded batches (the reference has no padding). The LLaMA3 variant's
parameter-free router (||q_i||) is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from components.base import ParamError, check_range
from components.kernels.base import AttentionKernel, KernelCall, KernelState
from registry import register


def route(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: probs (..., E) -> (renormalised top-k gates times k (..., E), 0/1 selection (..., E))."""
    top = torch.topk(probs, k, dim=-1).indices  # (..., k)
    chosen = torch.zeros_like(probs).scatter(-1, top, 1.0)  # (..., E)
    gates = probs * chosen
    gates = gates / gates.sum(-1, keepdim=True).clamp_min(torch.finfo(gates.dtype).eps)
    return gates * k, chosen


def balance_loss(probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """E^2 * mean_i(P_i f_i): probs, chosen (N, E) over N tokens."""
    n_routed = probs.shape[-1]
    return (probs.mean(0) * chosen.mean(0)).mean() * n_routed * n_routed


@register("moh", version="1.0.0", family="kernel", paper="arXiv:2410.11842",
          summary="Mixture-of-Head attention: shared heads + top-k routed heads per token, gated, load-balanced.")
@dataclass(frozen=True)
class MoH(AttentionKernel):
    """Mixture-of-Head attention (shared + top-k routed heads, gated outputs).

    Parameters
    ----------
    shared : int
        Shared heads h_s (always active, the first heads of each layer). Default 2.
    top_k : int
        Routed heads each token activates among the other h - h_s. Default 4 (with 8 heads: 75% of heads active).
    balance_weight : float
        Weight beta of the load-balance loss added to the training loss. Default 0.01.
    """

    shared: int = 2
    top_k: int = 4
    balance_weight: float = 0.01

    needs_input: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"shared": "1", "top_k": "1"}

    def __post_init__(self) -> None:
        check_range("moh.shared", self.shared, 0)
        check_range("moh.top_k", self.top_k, 0)
        check_range("moh.balance_weight", self.balance_weight, 0.0)
        if self.shared + self.top_k < 1:
            raise ParamError("moh: shared + top_k must be >= 1 (some head must be active)")

    def check_shape(self, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        routed = n_heads - self.shared
        if routed < 0:
            raise ParamError(f"moh.shared={self.shared} exceeds the model's {n_heads} heads")
        if routed and not 1 <= self.top_k <= routed:
            raise ParamError(f"moh.top_k={self.top_k} must be in [1, {routed}] (the routed heads: {n_heads} heads - "
                             f"{self.shared} shared)")
        if not routed and self.top_k:
            raise ParamError(f"moh.top_k={self.top_k}: all {n_heads} heads are shared, no head is left to route")

    def make_state(self, state: KernelState) -> None:
        routed = state.n_heads - self.shared
        if routed:
            state.router = nn.Linear(state.hidden, routed, bias=False)  # W_r
        if self.shared:
            state.shared_router = nn.Linear(state.hidden, self.shared, bias=False)  # W_s
        if routed and self.shared:
            state.mix = nn.Linear(state.hidden, 2, bias=False)  # W_h

    def gates(self, state: KernelState, x: torch.Tensor, training: bool) -> torch.Tensor:
        """(B, T, C) -> per-head gates (B, T, H); records the load-balance loss while training."""
        parts = []
        if self.shared:
            parts.append(torch.softmax(state.shared_router(x), -1) * self.shared)  # (B, T, h_s)
        if state.n_heads > self.shared:
            probs = torch.softmax(state.router(x), -1)  # (B, T, E)
            routed, chosen = route(probs, self.top_k)  # (B, T, E)
            if training and self.balance_weight:
                state.aux = self.balance_weight * balance_loss(probs.flatten(0, -2), chosen.flatten(0, -2))
            parts.append(routed)
        if len(parts) == 2:
            alpha = 2 * torch.softmax(state.mix(x), -1)  # (B, T, 2)
            parts = [parts[0] * alpha[..., :1], parts[1] * alpha[..., 1:]]
        return torch.cat(parts, dim=-1)  # (B, T, H)

    def finish(self, state: KernelState, out: torch.Tensor, call: KernelCall) -> torch.Tensor:
        g = self.gates(state, state.x, call.training)  # (B, T, H)
        return out * g.transpose(1, 2)[..., None].to(out.dtype)  # (B, H, T, D)
