"""PyramidKV: SnapKV's scores with layer budgets shrinking from the bottom layer to the top one.

Budgets form an arithmetic sequence over the L layers whose first/last ratio is ``beta`` and whose mean is the
uniform budget k:

    k_l = k * 2 / (1 + beta) * (beta - (beta - 1) * l / (L - 1))        (clamped to [1, T])

Scores are SnapKV's (observation-window votes, pooled, per KV head; the window is always kept).

Based on Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"
(arXiv 2406.02069). Reference code: https://github.com/Zefan-Cai/KVCache-Factory (``pyramidkv/pyramidkv_utils.py``);
NVIDIA kvpress ``presses/pyramidkv_press.py``.

Deviations: the reference sets the top layer's budget to window + (k - window) / beta; here the sequence is
defined by k_0 / k_{L-1} = beta around the mean k, and clamping to the prefill length can make the total smaller
than L * k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from components.base import check_range
from components.presses.snapkv import SnapKV
from registry import register


def pyramid_budgets(k: int, n_layers: int, beta: float, length: int) -> list[int]:
    """The layer budgets k_l (a list of L ints)."""
    if n_layers == 1:
        return [max(1, min(length, k))]
    out = []
    for layer in range(n_layers):
        v = k * 2.0 / (1.0 + beta) * (beta - (beta - 1.0) * layer / (n_layers - 1))
        out.append(max(1, min(length, round(v))))
    return out


@register("pyramidkv", version="1.0.0", family="press", paper="arXiv:2406.02069",
          summary="SnapKV scores with pyramid layer budgets (more tokens in lower layers).")
@dataclass(frozen=True)
class PyramidKV(SnapKV):
    """PyramidKV: SnapKV scores, budgets decreasing with depth.

    Parameters
    ----------
    ratio : float
        Mean fraction of the prefill removed per layer and KV head, in [0, 1). Default 0.5.
    budget : int
        Mean tokens kept per row and KV head; overrides ``ratio`` when > 0. Default 0.
    evict_every : int
        Must stay 0 (prefill-only press). Default 0.
    window : int
        Observation window, >= 1. Default 64.
    kernel : int
        Pooling kernel (odd). Default 5.
    pooling : str
        ``avg`` or ``max``. Default ``avg``.
    beta : float
        Ratio of the bottom layer's budget to the top layer's, >= 1. Default 20.
    """

    window: int = 64
    kernel: int = 5
    pooling: Literal["avg", "max"] = "avg"
    beta: float = 20.0
    example: ClassVar[dict[str, str]] = {"ratio": "0.5", "beta": "10"}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pyramidkv.beta", self.beta, 1.0, None)

    def layer_budget(self, layer: int, n_layers: int, length: int) -> int:
        k = self.budget if self.budget > 0 else round(length * (1.0 - self.ratio))
        if self.ratio == 0.0 and self.budget == 0:
            return length
        return pyramid_budgets(k, n_layers, self.beta, length)[layer]
