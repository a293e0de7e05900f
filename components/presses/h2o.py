"""H2O: keep the heavy hitters (largest accumulated attention) plus the most recent tokens.

    acc_j = sum_i softmax(q_i K^T / sqrt(d))_j        over every query i >= j (causal), per query head
    s_j = mean_{h in group} acc_j                     per KV head (GQA)
    s_j = +inf for the last round(recent * k) real positions (the recent window)

The prefill's sums are computed over query blocks (memory O(block x T), never T x T). With ``evict_every`` the
press keeps the running sums while decoding (each step's query adds its attention row) and cuts the cache back to
``budget`` every N steps.

Based on Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"
(arXiv 2306.14048). Reference code: https://github.com/FMInference/H2O (``h2o_hf/utils_real_drop/
modify_llama.py``, ``H2OKVCache_LayerWise``).

Deviations: the reference evicts one token per step from a fixed-size cache; here eviction runs every N steps
(N = 1 is the reference's schedule). Query heads sharing a KV head average their sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.base import check_range
from components.presses import _scoring
from components.presses.base import KVPress, LayerInput, gqa_mean
from registry import register


def reference_accumulated(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """Accumulated attention from the full causal matrix: q (B, H, T, D), k (B, Hkv, T, D) -> (B, Hkv, T)."""
    b, h, t, _ = q.shape
    n_kv = k.shape[1]
    kk = k.double().repeat_interleave(h // n_kv, 1)  # (B, H, T, D)
    logits = q.double() @ kk.transpose(-1, -2) * scale  # (B, H, T, T)
    ok = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & valid[:, None, None, :]
    probs = torch.softmax(logits.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)
    probs = probs * valid[:, None, :, None]
    return probs.sum(2).reshape(b, n_kv, h // n_kv, t).mean(2).float()


@register("h2o", version="1.0.0", family="press", paper="arXiv:2306.14048",
          summary="Heavy hitters (accumulated attention) + recent window; optional decode-time eviction.")
@dataclass(frozen=True)
class H2O(KVPress):
    """H2O: accumulated-attention heavy hitters + recent tokens.

    Parameters
    ----------
    ratio : float
        Fraction of the prefill removed per layer and KV head, in [0, 1). Default 0.5.
    budget : int
        Tokens kept per row and KV head; overrides ``ratio`` when > 0. Default 0.
    evict_every : int
        Decode-time eviction: every N decoding steps cut the cache back to ``budget`` (0 = prefill only). Default 0.
    recent : float
        Share of the budget reserved for the most recent tokens, in [0, 1]. Default 0.5.
    chunk : int
        Query block size of the prefill's column sums, >= 1. Default 256.
    """

    recent: float = 0.5
    chunk: int = 256
    decode_eviction: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"ratio": "0.5", "recent": "0.25"}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("h2o.recent", self.recent, 0.0, 1.0)
        check_range("h2o.chunk", self.chunk, 1, None)

    def accumulated(self, inp: LayerInput) -> torch.Tensor:
        """(B, Hkv, T) accumulated attention: the prefill's block sums, or the running sums while decoding."""
        if "acc" in inp.state and inp.state["acc"].shape[-1] == inp.keys.shape[2]:
            return inp.state["acc"]
        acc = gqa_mean(_scoring.attention_column_sums(inp, self.chunk), inp.keys.shape[1])  # (B, Hkv, T)
        inp.state["acc"] = acc
        return acc

    def score(self, inp: LayerInput) -> torch.Tensor:
        s = self.accumulated(inp).clone()  # (B, Hkv, T)
        t = s.shape[-1]
        k = self.budget if (self.budget and self.evict_every) else self.layer_budget(inp.layer, inp.n_layers, t)
        n_recent = round(self.recent * k)
        if n_recent:
            rev_rank = inp.valid.flip(1).long().cumsum(1).flip(1)  # (B, T) 1 = last real token
            s = s.masked_fill((inp.valid & (rev_rank <= n_recent))[:, None], float("inf"))
        return s

    def on_select(self, inp: LayerInput, idx: torch.Tensor) -> None:
        if "acc" in inp.state:
            inp.state["acc"] = inp.state["acc"].gather(2, idx)  # (B, Hkv, k)

    def on_append(self, inp: LayerInput, n_new: int) -> None:
        if not self.evict_every or "acc" not in inp.state:
            return
        acc = inp.state["acc"]
        acc = torch.cat([acc, acc.new_zeros(*acc.shape[:2], n_new)], -1)  # (B, Hkv, S)
        rows = _scoring.window_attention(inp, n_new)  # (B, H, n_new, S)
        rows = rows * inp.valid[:, None, -n_new:, None]
        inp.state["acc"] = acc + gqa_mean(rows.sum(2), inp.keys.shape[1])
