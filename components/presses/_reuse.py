"""A compressed prefill as plain tensors: compute it once, rebuild a live cache from it for every later query.

SCBench (Li et al., arXiv:2412.10319; microsoft/MInference ``scbench/``) evaluates KV methods on a shared context
followed by several queries; kvpress users ask for the same thing offline (NVIDIA/kvpress issue #170: compress a
long context once, store it, answer many questions from it). :func:`compress_context` runs the context alone
through ``press`` (query-agnostic) and returns a :class:`CompressedPrefill`: each layer's kept keys and values plus
the bookkeeping the press hooks read on later calls (per-layer validity of the kept slots, head-wise validity,
running statistics such as H2O's column sums, and the number of positions seen, so that new tokens keep their
uncompressed rotary positions). :func:`answer` rebuilds a fresh ``DynamicCache`` and press state from it (copies:
the snapshot is never modified) and decodes a query greedily on it, with the same calls as
:func:`components.presses._decode.generate_on_cache`, so a rebuilt cache gives exactly the answers of the live one.

Tensor names: ``k.<layer>``, ``v.<layer>`` and ``s.<layer>.<name>`` (press state); ``meta`` holds ints and the
names of state entries that are ``None``. The per-layer diagnostics ``last_scores`` / ``last_idx`` are not kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from components.presses._decode import greedy_after
from components.presses.base import KVPress, PressState

#: press-state entries left out of a snapshot (diagnostics of the last selection; no later call reads them)
DROPPED = ("last_scores", "last_idx")
#: the snapshot's layout; stored with every file and part of the on-disk cache key
FORMAT = 1


@dataclass
class CompressedPrefill:
    """The compressed cache of one context (B rows) and the press bookkeeping that goes with it."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    seconds: float = 0.0  # wall time of the prefill that produced it (0 when loaded)
    info: dict[str, Any] = field(default_factory=dict)  # where it came from (the store fills this)

    @property
    def n_layers(self) -> int:
        return int(self.meta["n_layers"])

    @property
    def kv_bytes(self) -> int:
        """Bytes of the kept keys and values (measured from the tensors)."""
        return sum(t.numel() * t.element_size() for n, t in self.tensors.items() if n[:2] in ("k.", "v."))

    @property
    def bytes_ratio(self) -> float:
        """Kept / uncompressed cache bytes, as measured by the press hooks during the prefill."""
        return self.meta["kept_bytes"] / self.meta["full_bytes"] if self.meta["full_bytes"] else 1.0

    def cache(self) -> DynamicCache:
        """A fresh ``DynamicCache`` holding copies of the kept keys/values (one ``DynamicLayer`` per layer)."""
        return DynamicCache(ddp_cache_data=[(self.tensors[f"k.{i}"].clone(), self.tensors[f"v.{i}"].clone())
                                            for i in range(self.n_layers)])

    def restore_state(self, state: PressState) -> None:
        """Put the press bookkeeping of this prefill into a fresh ``applied`` scope's state (copies)."""
        layers: dict[int, dict[str, Any]] = {i: {} for i in range(self.n_layers)}
        for name, t in self.tensors.items():
            if name.startswith("s."):
                _, layer, key = name.split(".", 2)
                layers[int(layer)][key] = t.clone()
        for layer, keys in self.meta["none"].items():
            layers[int(layer)].update({k: None for k in keys})
        state.layer_state = layers
        state.compressed, state.pending, state.decoding, state.steps = True, False, False, 0
        state.seen, state.prefill_len = int(self.meta["seen"]), int(self.meta["prefill_len"])
        state.full_bytes, state.kept_bytes = int(self.meta["full_bytes"]), int(self.meta["kept_bytes"])


def snapshot(cache: Any, state: PressState) -> CompressedPrefill:
    """The tensors and bookkeeping of a cache right after a compressed prefill (copies, detached)."""
    if not state.compressed:
        raise ValueError("snapshot: the press has not compressed a prefill in this scope")
    tensors: dict[str, torch.Tensor] = {}
    none: dict[str, list[str]] = {}
    for i, layer in enumerate(cache.layers):
        tensors[f"k.{i}"] = layer.keys.detach().clone().contiguous()  # (B, Hkv, k_i, D)
        tensors[f"v.{i}"] = layer.values.detach().clone().contiguous()
        for key, value in state.layer_state.get(i, {}).items():
            if key in DROPPED:
                continue
            if value is None:
                none.setdefault(str(i), []).append(key)
            elif isinstance(value, torch.Tensor):
                tensors[f"s.{i}.{key}"] = value.detach().clone().contiguous()
            else:
                raise TypeError(f"layer {i}: press state entry {key!r} is a {type(value).__name__}, not a tensor")
    meta = {"format": FORMAT, "n_layers": len(cache.layers), "seen": state.seen, "prefill_len": state.prefill_len,
            "full_bytes": state.full_bytes, "kept_bytes": state.kept_bytes, "none": none}
    return CompressedPrefill(tensors, meta)


@torch.no_grad()
def compress_context(model: torch.nn.Module, press: KVPress, context_ids: torch.Tensor) -> CompressedPrefill:
    """Prefill ``context_ids`` (B, Tc) alone through ``press`` and snapshot the compressed cache (query-agnostic)."""
    mask = torch.ones_like(context_ids)  # (B, Tc), as generate_on_cache passes it
    start = time.perf_counter()
    with press.applied(model) as state:
        cache = model(input_ids=context_ids, attention_mask=mask, use_cache=True).past_key_values
        snap = snapshot(cache, state)
    snap.seconds = time.perf_counter() - start
    return snap


@torch.no_grad()
def answer(model: torch.nn.Module, press: KVPress, prefill: CompressedPrefill, query_ids: torch.Tensor,
           max_new_tokens: int) -> torch.Tensor:
    """Greedy ``max_new_tokens`` after ``query_ids`` (B, Tq) on a cache rebuilt from ``prefill``: (B, n) tokens.

    The query (and, in SCBench's multi-turn mode, the earlier turns written before it) is appended uncompressed;
    ``press`` evicts during decoding only when it was built with ``evict_every``."""
    b = query_ids.shape[0]
    with press.applied(model) as state:
        prefill.restore_state(state)
        cache = prefill.cache()
        mask = torch.ones(b, state.seen + query_ids.shape[1], dtype=torch.long, device=query_ids.device)
        return greedy_after(model, query_ids, mask, cache, max_new_tokens)
