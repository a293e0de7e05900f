"""KVPress: the family base of KV-cache compression methods (family ``press``).

A press decides which key/value entries each attention layer keeps after the prefill. Inside
``with press.applied(model) as state:`` a forward hook on every attention module runs after the layer has written
its prefill keys/values into the cache: the press scores each cached position per KV head, keeps the top
``budget`` positions (kept in their original order) and replaces the cache layer's tensors by the gathered ones,
so the bytes held by the cache really shrink. A forward pre-hook on the model then rewrites every later call
(question tokens, decoding steps, ``generate``) onto the compressed cache: the 2-D attention mask is cut to the
kept slots and ``position_ids`` keep counting in the original (uncompressed) positions, so rotary phases of new
tokens are unchanged.

- Budget: ``ratio`` (fraction of the prefill removed, 0 = keep everything) or ``budget`` (tokens kept per row and
  KV head; overrides ``ratio`` when > 0).
- Query-agnostic evaluation: run the context alone first (``state`` compresses it), then feed the question on the
  compressed cache (:func:`components.presses._decode.generate_on_cache` does both).
- Grouped-query attention: scores are computed for query heads and averaged over each KV head's group.
- Left padding: pad positions score ``-inf``, so they are kept only when a row has fewer real tokens than the
  budget (and they stay masked then).
- No ``T x T`` attention is materialised: presses score from the keys alone, from an observation window of the last
  queries (``w x T``), or from query blocks (``_scoring.attention_column_sums``).
- Decode-time eviction (``evict_every`` > 0): every N decoding steps the cache is cut back to the budget by the same
  scores (presses whose scores need no attention matrix: StreamingLLM, Knorm; H2O keeps running column sums).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch

from components.base import Component, check_range

NEG = float("-inf")


@dataclass
class LayerInput:
    """What a press sees for one attention layer after the prefill.

    Shapes: B rows, H query heads, Hkv KV heads, T cached positions, D head dim.
    """

    layer: int
    n_layers: int
    module: torch.nn.Module
    keys: torch.Tensor  # (B, Hkv, T, D) cached keys (rotary applied)
    values: torch.Tensor  # (B, Hkv, T, D)
    hidden: torch.Tensor | None  # (B, Tq, hidden) the layer's normalised input of this forward (None when decoding)
    cos_sin: tuple[torch.Tensor, torch.Tensor] | None  # rotary (B, Tq, D) each
    valid: torch.Tensor  # (B, T) bool, False at pad positions
    state: dict


@dataclass
class PressState:
    """The live state of one ``applied`` scope (reset at every fresh prefill)."""

    press: "KVPress"
    seen: int = 0  # positions processed so far, in uncompressed coordinates
    compressed: bool = False
    steps: int = 0  # decoding steps since the last eviction
    layer_state: dict = field(default_factory=dict)  # per-layer scratch (H2O running sums)
    full_bytes: int = 0  # cache bytes right before the prefill compression (measured)
    kept_bytes: int = 0  # cache bytes right after it (measured)
    prefill_len: int = 0
    total_full_bytes: int = 0  # summed over every prefill of the scope (a benchmark's batches)
    total_kept_bytes: int = 0
    n_prefills: int = 0
    pending: bool = False  # the current forward is a prefill to compress
    valid: torch.Tensor | None = None  # (B, T) the prefill's pad mask
    new_valid: torch.Tensor | None = None  # (B, q) validity of the positions appended by the current forward
    decoding: bool = False


def cache_bytes(cache: Any) -> int:
    """Bytes held by the key/value tensors of a transformers cache (measured from the tensors)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def gqa_mean(x: torch.Tensor, n_kv: int) -> torch.Tensor:
    """(B, H, ...) per-query-head scores -> (B, Hkv, ...) averaged over each KV head's query group."""
    b, h = x.shape[:2]
    return x.reshape(b, n_kv, h // n_kv, *x.shape[2:]).mean(2)  # (B, Hkv, ...)


def keep_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` positions of (B, Hkv, T) scores, sorted ascending (original order): (B, Hkv, k)."""
    return scores.topk(k, dim=-1).indices.sort(-1).values  # (B, Hkv, k)


@dataclass(frozen=True)
class KVPress(Component):
    """Base class of KV-cache presses (family ``press``).

    Subclasses implement ``score(inp) -> (B, Hkv, T)`` (higher = keep). Budget per layer: ``layer_budget``.
    """

    ratio: float = 0.5
    budget: int = 0
    evict_every: int = 0

    #: scores need nothing but the cache (decode-time eviction is available)
    decode_eviction: ClassVar[bool] = False
    #: the press needs the layer's hidden states (observation-window queries)
    needs_hidden: ClassVar[bool] = True

    def __post_init__(self) -> None:
        name = getattr(self, "component_name", type(self).__name__.lower())
        check_range(f"{name}.ratio", self.ratio, 0.0, 1.0, hi_open=True)
        check_range(f"{name}.budget", self.budget, 0, None)
        check_range(f"{name}.evict_every", self.evict_every, 0, None)
        if self.evict_every and not self.decode_eviction:
            raise ValueError(f"{name}.evict_every: this press has no decode-time eviction (its scores need the "
                             f"prefill's queries); use streaming_llm, knorm or h2o")
        if self.evict_every and not self.budget:
            raise ValueError(f"{name}.evict_every needs a token budget (budget > 0)")

    # -- what subclasses provide ------------------------------------------------------------------------------------
    def score(self, inp: LayerInput) -> torch.Tensor:
        """(B, Hkv, T) keep-scores of the cached positions (pads are masked by the caller)."""
        raise NotImplementedError

    def layer_budget(self, layer: int, n_layers: int, length: int) -> int:
        """Tokens kept per row and KV head in ``layer`` for a prefill of ``length`` positions."""
        k = self.budget if self.budget > 0 else round(length * (1.0 - self.ratio))
        return max(1, min(length, k))

    def select(self, scores: torch.Tensor, k: int, inp: LayerInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kept positions (B, Hkv, k') and an optional (B, Hkv, k') validity mask (head-wise budgets)."""
        return keep_indices(scores, k), None

    def on_select(self, inp: LayerInput, idx: torch.Tensor) -> None:
        """Called after a layer's cache was cut to ``idx`` (B, Hkv, k): presses with per-slot statistics gather them."""

    def on_append(self, inp: LayerInput, n_new: int) -> None:
        """Called after ``n_new`` positions were appended to a compressed layer (question or decoding steps)."""

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[PressState]:
        """Compress the cache of every prefill run inside the block; hooks are removed on exit, errors included."""
        from components.presses import _hooks

        state = PressState(press=self)
        handles = _hooks.install(model, self, state)
        try:
            yield state
        finally:
            for h in handles:
                h.remove()

    def describe_budget(self) -> str:
        return f"budget={self.budget}" if self.budget else f"ratio={self.ratio}"

    def with_ratio(self, ratio: float) -> "KVPress":
        """A copy with another compression ratio (the kv-sweep flow's grid axis)."""
        return dataclasses.replace(self, ratio=ratio)
