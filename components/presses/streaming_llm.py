"""StreamingLLM: keep the first ``n_sink`` tokens (attention sinks) and the most recent ones.

Score of cached position j (per row; pads excluded, ``rank`` counts real tokens from 0):

    s_j = +inf                 if rank(j) < n_sink
    s_j = j                    otherwise (more recent = higher)

so the top-k are the sinks plus the k - n_sink most recent tokens. The scores need only the cache, so the press
also evicts while decoding (``evict_every`` steps, with a ``budget``).

Based on Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (arXiv 2309.17453). Reference code:
https://github.com/mit-han-lab/streaming-llm (``streaming_llm/kv_cache.py``, ``StartRecentKVCache``); also
NVIDIA kvpress ``presses/streaming_llm_press.py``.

Deviations: the reference keeps sinks + a recent window in a rolling cache and re-assigns positions inside the
cache; here positions stay the original ones (as in kvpress). With left padding the sinks are each row's first real
tokens, not its first columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.base import check_range
from components.presses.base import KVPress, LayerInput
from registry import register


def reference_scores(valid: torch.Tensor, n_kv: int, n_sink: int) -> torch.Tensor:
    """Scores written as a loop over rows and positions: (B, T) pad mask -> (B, Hkv, T)."""
    b, t = valid.shape
    out = torch.empty(b, n_kv, t)
    for i in range(b):
        rank = 0
        for j in range(t):
            is_sink = bool(valid[i, j]) and rank < n_sink
            out[i, :, j] = float("inf") if is_sink else float(j)
            rank += int(valid[i, j])
    return out


@register("streaming_llm", version="1.0.0", family="press", paper="arXiv:2309.17453",
          summary="Keep attention sinks + the most recent tokens (prefill and decode-time eviction).")
@dataclass(frozen=True)
class StreamingLLM(KVPress):
    """StreamingLLM: sinks + recent window.

    Parameters
    ----------
    ratio : float
        Fraction of the prefill removed per layer and KV head, in [0, 1). Default 0.5.
    budget : int
        Tokens kept per row and KV head; overrides ``ratio`` when > 0. Default 0.
    evict_every : int
        Decode-time eviction: every N decoding steps cut the cache back to ``budget`` (0 = prefill only). Default 0.
    n_sink : int
        Number of initial (sink) tokens always kept, >= 0. Default 4.
    """

    n_sink: int = 4
    decode_eviction: ClassVar[bool] = True
    needs_hidden: ClassVar[bool] = False
    example: ClassVar[dict[str, str]] = {"ratio": "0.5", "n_sink": "4"}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("streaming_llm.n_sink", self.n_sink, 0, None)

    def score(self, inp: LayerInput) -> torch.Tensor:
        b, n_kv, t = inp.keys.shape[:3]
        rank = inp.valid.long().cumsum(1) - 1  # (B, T) real-token rank
        pos = torch.arange(t, device=inp.keys.device, dtype=torch.float32).expand(b, -1)  # (B, T)
        s = pos.masked_fill(inp.valid & (rank < self.n_sink), float("inf"))  # (B, T)
        return s[:, None].expand(-1, n_kv, -1)  # (B, Hkv, T)
