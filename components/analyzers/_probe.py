"""Probes for analyzers: read or rewrite per-head attention outputs and MLP outputs during one forward.

``OutputProbe`` is an unregistered attention patch whose ``edit_output`` hands every layer's per-head outputs
(B, H, T, D), before the output projection, to a callable; analyzers use it to cache head outputs, freeze them to a
cached run, patch single heads, or multiply them by differentiable gates. ``mlp_hooks`` does the same for MLP
outputs (forward hooks, removed on exit).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch

from components.attention.types import CallInfo
from components.patches.base import AttentionPatch

OutputFn = Callable[[CallInfo, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OutputProbe(AttentionPatch):
    """Calls ``fn(call, out) -> out`` on every layer's per-head outputs (B, H, T, D). Not a registered method."""

    fn: OutputFn | None = None

    onnx_exportable: ClassVar[bool] = False

    def edit_output(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        return out if self.fn is None else self.fn(call, out)


def mlp_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """MLP blocks by layer index (modules named ``...<layer>.mlp``: Llama, Qwen, Mistral, GPT-2 ...)."""
    found: dict[int, torch.nn.Module] = {}
    for name, mod in model.named_modules():
        m = re.search(r"(?:^|\.)(\d+)\.mlp$", name)
        if m:
            found.setdefault(int(m.group(1)), mod)
    return dict(sorted(found.items()))


@contextmanager
def mlp_hooks(model: torch.nn.Module, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the block, every MLP's output (B, T, d) goes through ``fn(layer, out) -> out``."""
    mods = mlp_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__}: no MLP modules named '<layer>.mlp' found")
    handles = [mod.register_forward_hook(lambda _m, _a, out, layer=layer: fn(layer, out))
               for layer, mod in mods.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
