"""Reduced-precision sanity check: one short forward that must give finite logits.

Some models overflow in float16: Gemma-3's activations exceed float16's range (max 65504) and its logits become
NaN, which would otherwise surface only as silently wrong metrics (every answer wrong, perplexity NaN). Loading a
model in float16 or bfloat16 therefore runs one forward over a fixed built-in sentence and fails with a message that
names the model, the dtype and the fix. float32 is not checked (nothing to fall back to).
"""

from __future__ import annotations

from typing import Any

import torch

PROBE = ("Once upon a time, a small dog found a red ball in the garden. She carried it home and showed it to "
         "her friend, who laughed and threw it far across the field.")


class NonFiniteLogitsError(RuntimeError):
    """The model gives NaN/inf logits in the requested dtype."""


@torch.no_grad()
def check_finite(model: torch.nn.Module, tokenizer: Any, dtype: str, name: str) -> None:
    """Raise NonFiniteLogitsError when ``model`` (loaded in ``dtype``) gives non-finite logits on a short probe."""
    if dtype == "float32":
        return
    device = next(model.parameters()).device
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"].to(device)  # (1, T)
    logits = model(input_ids=ids).logits  # (1, T, V)
    bad = (~torch.isfinite(logits)).any(-1)[0]  # (T,)
    if bool(bad.any()):
        raise NonFiniteLogitsError(
            f"{name} gives non-finite logits in {dtype} (NaN/inf at {int(bad.sum())} of {bad.numel()} positions of a "
            f"short probe sentence{', from the first token on' if bool(bad[0]) else ''}): its activations overflow "
            f"{dtype}. Use --dtype float32"
            + (" or --dtype bfloat16 (same exponent range as float32)" if dtype == "float16" else "") + ".")
