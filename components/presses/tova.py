"""TOVA: keep the positions the last query attends to most, averaged over the layer's heads.

    s_j = mean_h softmax(q_last,h K_h^T / sqrt(d))_j       one score per layer, shared by every KV head

Only one query row is computed (1 x T).

Based on Oren et al., "Transformers are Multi-State RNNs" (arXiv 2401.06104). Reference code:
https://github.com/schwartz-lab-NLP/TOVA; NVIDIA kvpress ``presses/tova_press.py``.

Deviations: TOVA evicts one token per decoding step once the cache is full; here the same score compresses the
prefill in one step (as kvpress evaluates it); decode-time eviction is not offered (it needs each step's query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.presses import _scoring
from components.presses.base import KVPress, LayerInput
from registry import register


def reference_scores(q_last: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """q_last (B, H, D), k (B, Hkv, T, D), valid (B, T) -> (B, Hkv, T), written out per head."""
    b, h, _ = q_last.shape
    n_kv, t = k.shape[1], k.shape[2]
    out = torch.zeros(b, t, dtype=torch.float64)
    for i in range(b):
        for hh in range(h):
            logits = (k[i, hh // (h // n_kv)].double() @ q_last[i, hh].double()) * scale  # (T,)
            logits[~valid[i]] = float("-inf")
            out[i] += torch.softmax(logits, 0) / h
    return out.float()[:, None].expand(-1, n_kv, -1)


@register("tova", version="1.0.0", family="press", paper="arXiv:2401.06104",
          summary="Keep what the last query attends to (mean over the layer's heads).")
@dataclass(frozen=True)
class TOVA(KVPress):
    """TOVA: last-query attention, head-averaged.

    Parameters
    ----------
    ratio : float
        Fraction of the prefill removed per layer and KV head, in [0, 1). Default 0.5.
    budget : int
        Tokens kept per row and KV head; overrides ``ratio`` when > 0. Default 0.
    evict_every : int
        Must stay 0 (prefill-only press here). Default 0.
    """

    example: ClassVar[dict[str, str]] = {"ratio": "0.5"}

    def score(self, inp: LayerInput) -> torch.Tensor:
        probs = _scoring.window_attention(inp, 1)  # (B, H, 1, T)
        s = probs[:, :, 0].mean(1)  # (B, T)
        return s[:, None].expand(-1, inp.keys.shape[1], -1)  # (B, Hkv, T)
