"""Probes of training dynamics, measured on a fixed probe batch during training.

- Attention sink (Gu et al., arXiv 2410.10781): with A^{l,h} the attention weights, rows re-normalised to sum to 1
  (so non-softmax kernels are measured like softmax, as the reference's ``attn_weight_normalized``),

      alpha_k^{l,h} = 1/(T - k) * sum_{i >= k} A^{l,h}_{i,k}        (0-indexed; k = 0 is the first token)
      Sink_1^eps = 100 * mean over samples of (1/(L H)) * sum_{l,h} 1[alpha_0^{l,h} > eps]        (eps = 0.3)

  Uniform causal attention at T = 64 gives alpha_0 = H_64 / 64 = 0.074.
  (A self-contained version; the ``sink_metric`` analyzer computes the same quantity for any model.)
- Maximum attention logit (Wortsman et al., arXiv 2309.14322): max over layers, heads and visible (query, key)
  pairs of |q . k| * scaling, with q, k as the kernel sees them (after qk-layernorm and RoPE).
- Output log Z: mean over tokens of log sum_v exp(logit_v) of the LM head (drifts without z-loss).
- LR sensitivity (Wortsman et al.): E_{eta in [a, b]} [min(loss(eta), loss_0) - loss*] over the LR grid points in
  [a, b], loss* the best loss over those points and loss_0 the loss at initialisation (diverged runs count as
  loss_0).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from components.kernels.base import KernelCall, observing, scores

SINK_EPS = 0.3


def row_normalise(weights: torch.Tensor) -> torch.Tensor:
    """(..., T, S) non-negative weights -> rows summing to 1 (all-zero rows stay zero)."""
    w = weights.double().clamp_min(0)
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def first_token_alpha(weights: torch.Tensor) -> torch.Tensor:
    """alpha_0: mean attention the first key receives. weights (..., T, T) -> (...,)."""
    a = row_normalise(weights.tril())
    return a[..., :, 0].mean(-1)  # every query i >= 0 sees key 0


def sink_stats(maps: list[torch.Tensor], eps: float = SINK_EPS) -> dict[str, float]:
    """Sink_1 (%) and mean alpha_0 from per-layer weights (B, H, T, T)."""
    alpha = torch.stack([first_token_alpha(m) for m in maps], dim=1)  # (B, L, H)
    sink = (alpha > eps).double().mean(dim=(1, 2)).mean() * 100.0
    return {"sink1": float(sink), "alpha0": float(alpha.mean())}


@torch.no_grad()
def attention_weights(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer attention weights (B, H, T, T) of one forward (kernels return them for output_attentions)."""
    out = model(input_ids=ids, output_attentions=True)
    if not out.attentions:
        raise ValueError("this attention kernel returns no attention weights (no sink metric for it)")
    return list(out.attentions)


@torch.no_grad()
def logit_stats(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Max |attention logit| (over layers, heads, visible pairs), mean output log Z and the LM loss on ``ids``."""
    peak = torch.zeros((), dtype=torch.float64)

    def observe(_module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, call: KernelCall) -> None:
        nonlocal peak
        s = scores(q, k, call).abs().masked_fill(~call.visible(q.device), 0.0)  # (B, H, T, S)
        peak = torch.maximum(peak, s.max().double())

    with observing(model, observe):
        out = model(input_ids=ids, labels=ids if labels is None else labels)
    log_z = torch.logsumexp(out.logits.float(), dim=-1)  # (B, T)
    return {"max_attn_logit": float(peak), "log_z": float(log_z.mean()), "loss": float(out.loss)}


def lr_sensitivity(losses: dict[float, float], loss_init: float, lo: float | None = None,
                   hi: float | None = None) -> float:
    """E_eta [min(loss(eta), loss_0) - loss*] over grid LRs in [lo, hi]; non-finite losses count as loss_0."""
    pts = {lr: (v if math.isfinite(v) else math.inf) for lr, v in losses.items()
           if (lo is None or lr >= lo) and (hi is None or lr <= hi)}
    if not pts:
        raise ValueError("lr_sensitivity: no learning rate of the grid lies in the range")
    capped = {lr: min(v, loss_init) for lr, v in pts.items()}
    best = min(capped.values())
    return sum(v - best for v in capped.values()) / len(capped)


def uniform_alpha0(t: int) -> float:
    """alpha_0 of uniform causal attention over t tokens: (1/t) sum_i 1/(i+1)."""
    return sum(1.0 / (i + 1) for i in range(t)) / t


def summary(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

