"""SnapKV: the last ``window`` queries vote for the prefix positions they attend to; votes are pooled.

    A = softmax(Q_win K^T / sqrt(d))            (w x T, causal inside the window, pads masked)
    v_j = mean_i A[i, j]                          per query head
    s_j = mean_{h in group} pool_k(v)_j          per KV head (GQA: mean over the query group)
    s_j = +inf for the window's own positions     (always kept)

Only the w x T window attention is computed (queries recomputed from the layer's input), never T x T.

Based on Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation" (arXiv 2404.14469). Reference
code: https://github.com/FasterDecoding/SnapKV (``snapkv/monkeypatch/snapkv_utils.py``); NVIDIA kvpress
``presses/snapkv_press.py``.

Deviations: the reference sums votes and max-pools; here votes are averaged and average-pooled by default
(``pooling="max"`` gives the reference's pooling); the budget includes the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from components.base import check_range
from components.presses import _scoring
from components.presses.base import KVPress, LayerInput
from registry import register


def reference_scores(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, scale: float, window: int,
                     kernel: int, pooling: str = "avg") -> torch.Tensor:
    """Straight formula: q (B, H, w, D) window queries, k (B, Hkv, T, D), valid (B, T) -> (B, Hkv, T)."""
    b, h, w, _ = q.shape
    n_kv, t = k.shape[1], k.shape[2]
    g = h // n_kv
    out = torch.zeros(b, n_kv, t)
    for i in range(b):
        for hh in range(h):
            votes = torch.zeros(t, dtype=torch.float64)
            for r in range(w):
                p = t - w + r  # absolute position of this query
                logits = (k[i, hh // g].double() @ q[i, hh, r].double()) * scale  # (T,)
                ok = valid[i] & (torch.arange(t) <= p)
                logits[~ok] = float("-inf")
                votes += torch.softmax(logits, 0) / w
            pooled = torch.empty(t, dtype=torch.float64)
            for j in range(t):
                lo, hi = max(0, j - kernel // 2), min(t, j + kernel // 2 + 1)
                pooled[j] = votes[lo:hi].max() if pooling == "max" else votes[lo:hi].mean()
            out[i, hh // g] += (pooled / g).float()
    out[..., t - w:] = float("inf")
    return out


@register("snapkv", version="1.0.0", family="press", paper="arXiv:2404.14469",
          summary="Observation-window queries vote for prefix positions (pooled), per KV head.")
@dataclass(frozen=True)
class SnapKV(KVPress):
    """SnapKV: observation-window votes, pooled.

    Parameters
    ----------
    ratio : float
        Fraction of the prefill removed per layer and KV head, in [0, 1). Default 0.5.
    budget : int
        Tokens kept per row and KV head; overrides ``ratio`` when > 0. Default 0.
    evict_every : int
        Must stay 0: the votes need the prefill's queries. Default 0.
    window : int
        Observation window (last queries of the prefill), >= 1. Default 64.
    kernel : int
        Pooling kernel along the keys (odd, >= 1; 1 = no pooling). Default 5.
    pooling : str
        ``avg`` or ``max``. Default ``avg``.
    """

    window: int = 64
    kernel: int = 5
    pooling: Literal["avg", "max"] = "avg"
    example: ClassVar[dict[str, str]] = {"ratio": "0.5", "window": "32"}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(f"{self.component_name}.window", self.window, 1, None)
        check_range(f"{self.component_name}.kernel", self.kernel, 1, None)
        if self.kernel % 2 == 0:
            raise ValueError(f"{self.component_name}.kernel must be odd, got {self.kernel}")

    def score(self, inp: LayerInput) -> torch.Tensor:
        return _scoring.snap_votes(inp, self.window, self.kernel, self.pooling)  # (B, Hkv, T)
