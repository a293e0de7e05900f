"""Baseline: the unpatched model, routed through the attnflow dispatcher with no edits.

It runs the same fused SDPA call as transformers' stock ``sdpa`` implementation, so comparisons against it
measure the method, not the plumbing (``bench/patch_overhead.py`` reports the dispatcher's own overhead).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.patches.base import AttentionPatch
from registry import register


@register("baseline", version="1.0.0", family="patch", paper=None,
          summary="No-op reference: stock SDPA attention through the attnflow dispatcher.")
@dataclass(frozen=True)
class Baseline(AttentionPatch):
    """Baseline: no change to attention.

    Parameters
    ----------
    (none)
    """

    def acts_on_layer(self, layer: int, n_layers: int) -> bool:
        return False
