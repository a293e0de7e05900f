"""ZeroTuning: tune the attention paid to the initial token, per head, without training.

For the target heads, the attention to the initial token is scaled by gamma and each row renormalised:

    a'_0 = gamma * a_0 / D,   a'_j = a_j / D  (j > 0),   D = (gamma - 1) * a_0 + 1

which is exactly adding log(gamma) to the logit of key 0. gamma > 1 flattens attention over the other tokens,
gamma < 1 sharpens it. It runs on every forward (prefill and decoding).

Fast path: a sparse key bias (one key per row) corrected after the fused SDPA kernel from its log-sum-exp
(O(T*D) extra; the kernel keeps ``is_causal``) for gamma >= 1/2; for smaller gamma, and in exported graphs, an extra
head-dim channel carries the bias (dividing by 1 - (1 - gamma) a_0 would amplify float32 rounding when the first
token holds most of the attention, see ``LSE_MIN_BIAS`` in ``components/attention/math.py``).
No attention matrix is materialised.

Based on Han et al., "ZeroTuning: Unlocking the Initial Token's Power to Enhance Large Language Models Without
Training" (arXiv 2505.11739). Reference code: https://github.com/FeijiangHan/ZeroTuning
(``core algorithms/modelling_llama.py``, ``ZeroTuning_Attention``).

Deviations from the reference code: the reference scales column 0 of the post-softmax matrix; with left padding
that column is a pad token, so here "key 0" is each row's first real token (read from the attention mask). The
reference's token-range ablation (``start/end``) is not implemented.

Head search (``ZeroTuningSearch``, run by the head-search flow): head profiling as in the paper, each candidate head
alone at a trial gamma (2.0 by default; ``params={"gamma": ...}`` changes it) labels the head up-effective (the
objective improves) or down-effective (it worsens); the larger group (by count, then by total |gain|) is kept, and one
gamma for that group is searched on a grid (1.5, 2, 3, 4 by default), reciprocals for a down-effective group (those
heads gain from sharpening, gamma < 1). The gamma is kept only if it beats the unpatched model. Deviation: the paper
profiles with a fixed gamma per direction and searches gamma per group on a validation set; here the profiling gamma
is one value and the grid is evaluated on the calibration split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch

from components.attention.types import CallInfo, KeyBias
from components.base import check_range
from components.heads import HeadSet
from components.patches.base import AttentionPatch
from components.search import HeadSearch
from registry import register


def reference_probs(probs: torch.Tensor, first: torch.Tensor, heads: list[int], gamma: float) -> torch.Tensor:
    """The paper's formula on materialised attention, written directly (tests compare every path against it; the
    patch itself never materialises attention).

    Parameters
    ----------
    probs : torch.Tensor
        (B, H, T, S) post-softmax attention of one layer.
    first : torch.Tensor
        (B,) key column of each row's first real token ("key 0"); -1 when a sliding-window cache dropped it.
    heads : list of int
        The edited query heads of this layer.
    gamma : float
        Scale of the first token's attention.

    Returns
    -------
    torch.Tensor
        (B, H, T, S) with a'_0 = gamma a_0 / D and a'_j = a_j / D, D = sum of the row after scaling.
    """
    probs = probs.clone()
    for b in range(probs.shape[0]):
        if first[b] >= 0:  # still in the (sliding-window) cache
            probs[b, heads, :, first[b]] *= gamma  # (|heads|, T) column of key 0
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-300)  # (B, H, T, S) rows renormalised


@dataclass(frozen=True)
class ZeroTuningSearch(HeadSearch):
    """ZeroTuning's head profiling: keep the dominant group of up- or down-effective heads, then search gamma on it
    (reciprocal values for a down-effective group)."""

    def select(self, table: list[dict[str, Any]], min_gain: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        up = [r for r in table if r["gain"] > min_gain]
        down = [r for r in table if r["gain"] < -min_gain]
        weight = (len(up), sum(r["gain"] for r in up)), (len(down), -sum(r["gain"] for r in down))
        group = "up" if weight[0] >= weight[1] else "down"
        return sorted(up if group == "up" else down, key=lambda r: -abs(r["gain"])), {"group": group}

    def grid_points(self, selection: dict[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
        points = super().grid_points(selection, grid)
        if selection.get("group") == "down":  # down-effective heads gain from sharpening: gamma < 1
            points = [{**p, **({"gamma": 1.0 / float(p["gamma"])} if "gamma" in p else {})} for p in points]
        return points


@register("zerotuning", version="1.0.0", family="patch", paper="arXiv:2505.11739",
          summary="Scale attention to the initial token by gamma on chosen heads (log-gamma bias on key 0).")
@dataclass(frozen=True)
class ZeroTuning(AttentionPatch):
    """ZeroTuning: log(gamma) added to the logit of each row's first real token on the target heads.

    Parameters
    ----------
    gamma : float
        Scale of the initial token's attention (> 0; 1 = no-op). Default 2.0.
    heads : HeadSet
        Target (layer, head) pairs. Default ``all``.
    """

    gamma: float = 2.0
    heads: HeadSet = HeadSet.all()

    example: ClassVar[dict[str, str]] = {"gamma": "3.0", "heads": "0:*,1:0"}
    head_search: ClassVar[HeadSearch] = ZeroTuningSearch(trial={"gamma": 2.0}, grid={"gamma": (1.5, 2.0, 3.0, 4.0)})

    def __post_init__(self) -> None:
        check_range("zerotuning.gamma", self.gamma, 0.0, None, lo_open=True)

    def key_bias(self, call: CallInfo) -> KeyBias | None:
        if self.gamma == 1.0 or not self.head_indices(call):
            return None
        coef = self.head_vector(call, on=math.log(self.gamma), off=0.0)  # (H,)
        return KeyBias(coef=coef, index=call.first_real()[:, None])  # index (B, 1)
