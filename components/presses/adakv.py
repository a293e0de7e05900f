"""AdaKV: head-wise budgets. The layer's total budget (k per KV head) goes to the best scores across all its heads.

    n_h = floor(alpha * k) + #{ j : (h, j) in top_{Hkv*k - Hkv*floor(alpha*k)} of the remaining scores }

with each head first guaranteed its own top floor(alpha * k) (the safeguard). Each head keeps its top n_h positions
of the wrapped press's scores.

Based on Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM
Inference" (arXiv 2407.11550). Reference code: https://github.com/FFY0/AdaKV; NVIDIA kvpress
``presses/adakv_press.py``.

Deviations: a dense cache needs one length per layer, so every head stores max_h n_h slots and the slots beyond a
head's own n_h are masked out of attention (an additive per-head mask); the cache bytes are therefore
max_h n_h / T of the full cache, not k / T (kvpress also masks rather than frees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.base import check_range
from components.presses.base import KVPress, LayerInput
from registry import register


def reference_counts(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """Per-head budgets (B, Hkv) from (B, Hkv, T) scores, written out with sets."""
    b, n_kv, t = scores.shape
    floor_k = int(alpha * k)
    out = torch.zeros(b, n_kv, dtype=torch.long)
    for i in range(b):
        taken = set()
        for h in range(n_kv):
            taken |= {(h, int(j)) for j in scores[i, h].topk(floor_k).indices} if floor_k else set()
        rest = sorted(((float(scores[i, h, j]), h, j) for h in range(n_kv) for j in range(t) if (h, j) not in taken),
                      key=lambda x: -x[0])
        for _, h, j in rest[: n_kv * k - len(taken)]:
            taken.add((h, j))
        for h, _ in taken:
            out[i, h] += 1
    return out


@register("adakv", version="1.0.0", family="press", paper="arXiv:2407.11550",
          summary="Head-wise budgets (AdaKV) around a scoring press: the layer budget goes to the best heads.")
@dataclass(frozen=True)
class AdaKV(KVPress):
    """AdaKV head-wise budget wrapper.

    Parameters
    ----------
    ratio : float
        Fraction of the prefill removed per layer (mean over KV heads), in [0, 1). Default 0.5.
    budget : int
        Mean tokens kept per KV head; overrides ``ratio`` when > 0. Default 0.
    evict_every : int
        Must stay 0 (prefill-only wrapper). Default 0.
    press : str
        The wrapped scoring press, a spec such as ``snapkv`` or ``snapkv(window=32)``. Default ``snapkv``.
    alpha : float
        Safeguard: share of the uniform budget every head keeps, in [0, 1]. Default 0.2.
    """

    press: str = "snapkv"
    alpha: float = 0.2
    example: ClassVar[dict[str, str]] = {"ratio": "0.5", "press": "snapkv"}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("adakv.alpha", self.alpha, 0.0, 1.0)
        from registry.specs import parse

        inner = parse(self.press).create("press")
        if isinstance(inner, AdaKV):
            raise ValueError("adakv.press: cannot wrap adakv itself")
        object.__setattr__(self, "_inner", inner)

    def score(self, inp: LayerInput) -> torch.Tensor:
        return self._inner.score(inp)  # (B, Hkv, T)

    def select(self, scores: torch.Tensor, k: int, inp: LayerInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n_kv, t = scores.shape
        floor_k = int(self.alpha * k)
        guaranteed = torch.zeros_like(scores, dtype=torch.bool)  # (B, Hkv, T)
        if floor_k:
            guaranteed.scatter_(2, scores.topk(floor_k, -1).indices, True)
        rest = scores.masked_fill(guaranteed, float("-inf")).reshape(b, n_kv * t)  # (B, Hkv*T)
        chosen = guaranteed.reshape(b, n_kv * t).clone()
        n_rest = n_kv * k - n_kv * floor_k
        if n_rest:
            chosen.scatter_(1, rest.topk(n_rest, -1).indices, True)
        chosen = chosen.reshape(b, n_kv, t)  # (B, Hkv, T) kept per head
        counts = chosen.sum(-1)  # (B, Hkv)
        m = int(counts.max())
        # each head's top-m by score, chosen positions first (they are its top-n_h)
        rank_key = scores.masked_fill(~chosen, float("-inf")) + 0.0
        idx = torch.where(chosen, rank_key, torch.full_like(scores, -1e30)).topk(m, -1).indices.sort(-1).values
        head_valid = chosen.gather(2, idx)  # (B, Hkv, m)
        return idx, head_valid
