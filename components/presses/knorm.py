"""Knorm: keep the keys with the smallest L2 norm.

    s_j = -||k_j||_2        per KV head

Low-norm keys tend to receive high attention (Devoto et al.); the score needs only the cache, so decode-time
eviction is available.

Based on Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
(arXiv 2406.11430). Reference code: https://github.com/alessiodevoto/l2compress; NVIDIA kvpress
``presses/knorm_press.py``.

Deviations: the reference skips compression in the first two layers; here every layer is compressed (as in
kvpress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.presses.base import KVPress, LayerInput
from registry import register


def reference_scores(keys: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, T, D) keys -> (B, Hkv, T) negative L2 norms, written out."""
    return -torch.sqrt((keys.double() ** 2).sum(-1)).float()


@register("knorm", version="1.0.0", family="press", paper="arXiv:2406.11430",
          summary="Keep the keys with the smallest L2 norm (no attention needed).")
@dataclass(frozen=True)
class Knorm(KVPress):
    """Knorm: lowest key norms kept.

    Parameters
    ----------
    ratio : float
        Fraction of the prefill removed per layer and KV head, in [0, 1). Default 0.5.
    budget : int
        Tokens kept per row and KV head; overrides ``ratio`` when > 0. Default 0.
    evict_every : int
        Decode-time eviction: every N decoding steps cut the cache back to ``budget`` (0 = prefill only). Default 0.
    """

    decode_eviction: ClassVar[bool] = True
    needs_hidden: ClassVar[bool] = False
    example: ClassVar[dict[str, str]] = {"ratio": "0.5"}

    def score(self, inp: LayerInput) -> torch.Tensor:
        return -inp.keys.float().norm(dim=-1)  # (B, Hkv, T)
