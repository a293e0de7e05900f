"""Head masking: switch chosen attention heads off, the causal test of the Retrieval Head paper.

Two modes:

- ``uniform`` (Retrieval Head, Wu et al. 2024, arXiv 2404.15574): the head's pre-softmax logits are set to zero,
  so it attends uniformly to every visible token: A'_ij = 1 / |{j visible to i}|. Implemented on the fused path by
  zeroing the head's query (q_h = 0 gives q_h . k_j = 0 for every key), exactly what the reference code does on
  its FlashAttention path.
- ``zero`` (head ablation as in Michel et al. 2019, arXiv 1905.10650): the head's output (its context vector
  before the output projection) is multiplied by 0. A per-head gate after SDPA, free.

``phase`` restricts masking to the prompt forward (``prefill``) or to generated tokens (``decode``); the Retrieval
Head masking experiment masks during decoding only.

Reference code: https://github.com/nightdessert/Retrieval_Head (``faiss_attn/source/modeling_llama.py``,
``block_list``). Deviations: the reference masks during decoding only and always in ``uniform`` form; here both the
phase and the form are parameters (defaults ``all`` and ``uniform``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from components.attention.types import CallInfo
from components.base import ParamError
from components.heads import HeadSet
from components.patches.base import AttentionPatch
from components.search import HeadSearch
from registry import register


def reference_uniform(probs: torch.Tensor, visible: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """``mode=uniform`` on materialised attention, written directly (tests compare every path against it).

    probs (B, H, T, S) post-softmax attention of one layer; visible (B, 1, T, S) bool, the keys each query sees;
    heads: the masked query heads. Returns (B, H, T, S) with A'_ij = 1 / |{j visible to i}| on those heads.
    """
    probs = probs.clone()
    vis = visible.expand(-1, len(heads), -1, -1).to(probs.dtype)  # (B, |heads|, T, S)
    probs[:, heads] = vis / vis.sum(-1, keepdim=True).clamp_min(1)
    return probs


def reference_zero(out: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """``mode=zero``: out (B, H, T, D) per-head outputs; returns them with the masked heads' outputs x 0."""
    out = out.clone()
    out[:, heads] = 0  # (B, |heads|, T, D)
    return out


@register("head_mask", version="1.0.0", family="patch", paper="arXiv:2404.15574",
          summary="Mask chosen heads: uniform attention (zero logits) or zero head output.")
@dataclass(frozen=True)
class HeadMask(AttentionPatch):
    """Head masking (uniform attention or zeroed output) for chosen (layer, head) pairs.

    Parameters
    ----------
    heads : HeadSet
        The (layer, head) pairs to mask, e.g. ``0:1,2:3`` or ``file:heads.json``. Required (no default).
    mode : {"uniform", "zero"}
        ``uniform`` = zero logits (uniform attention); ``zero`` = zero head output. Default ``uniform``.
    phase : {"all", "prefill", "decode"}
        When to mask. Default ``all``.
    """

    heads: HeadSet = HeadSet.none()
    mode: Literal["uniform", "zero"] = "uniform"
    phase: Literal["all", "prefill", "decode"] = "all"

    example: ClassVar[dict[str, str]] = {"heads": "0:0,1:1"}
    # the Retrieval Head test as a search: mask one head at a time, keep the heads whose masking hurts most
    head_search: ClassVar[HeadSearch] = HeadSearch(good="hurts")

    def __post_init__(self) -> None:
        if not self.heads:
            raise ParamError("head_mask: heads is required (e.g. heads=0:1,2:3 or heads=file:heads.json)")

    def active(self, call: CallInfo) -> bool:
        if self.phase == "prefill" and not call.is_prefill:
            return False
        if self.phase == "decode" and not call.is_decode:
            return False
        return bool(self.head_indices(call))

    def query_scale(self, call: CallInfo) -> torch.Tensor | None:
        if self.mode != "uniform" or not self.active(call):
            return None
        return self.head_vector(call, on=0.0, off=1.0)  # (H,)

    def edit_output(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        if self.mode != "zero" or not self.active(call):
            return out
        gate = self.head_vector(call, on=0.0, off=1.0, dtype=out.dtype)  # (H,)
        return out * gate[None, :, None, None]  # (B, H, T, D)
