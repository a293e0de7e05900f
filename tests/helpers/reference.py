"""Straightforward reference attention for tests: materialise probabilities, apply a paper's formula, P @ V.

Independent of the attnflow dispatcher: its own mask handling, its own softmax, float64 by default. A test passes
``edit_probs(layer, probs, info)`` and/or ``edit_out(layer, out, info)`` callables written from the paper formula.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

REF = "attnflow_reference"


@dataclass
class RefInfo:
    layer: int
    q_len: int
    kv_len: int
    attention_mask_2d: torch.Tensor | None
    visible: torch.Tensor  # (B, 1, q, kv) bool
    q: torch.Tensor
    k: torch.Tensor


_hooks: dict = {}


def _repeat(x, n):
    return x.repeat_interleave(n, dim=1)


def _reference_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    n = query.shape[1] // key.shape[1]
    k, v = _repeat(key, n), _repeat(value, n)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = (query.double() @ k.double().transpose(-1, -2)) * scaling
    if attention_mask is not None:  # eager_mask: additive float (0 / min)
        visible = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    else:
        i = torch.arange(q_len)[:, None] + (kv_len - q_len)
        visible = (torch.arange(kv_len)[None, :] <= i)[None, None]
    visible = visible.expand(query.shape[0], 1, q_len, kv_len)
    logits = logits.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    info = RefInfo(module.layer_idx, q_len, kv_len, _hooks.get("am"), visible, query.double(), k.double())
    if _hooks.get("edit_probs"):
        probs = _hooks["edit_probs"](module.layer_idx, probs, info)
    out = probs @ v.double()  # (B, H, T, D)
    if _hooks.get("edit_out"):
        out = _hooks["edit_out"](module.layer_idx, out, info)
    return out.to(query.dtype).transpose(1, 2).contiguous(), probs.to(query.dtype)


AttentionInterface.register(REF, _reference_attention)
AttentionMaskInterface.register(REF, eager_mask)


@contextlib.contextmanager
def reference(model, edit_probs=None, edit_out=None):
    """Run ``model`` with the reference attention and the given edits inside the block."""
    prev = model.config._attn_implementation
    base = getattr(model, "base_model", model)

    def hook(_m, args, kwargs):
        am = kwargs.get("attention_mask")
        _hooks["am"] = am if isinstance(am, torch.Tensor) and am.dim() == 2 else None

    h = base.register_forward_pre_hook(hook, with_kwargs=True)
    _hooks.update(edit_probs=edit_probs, edit_out=edit_out)
    model.set_attn_implementation(REF)
    try:
        yield
    finally:
        h.remove()
        _hooks.clear()
        model.set_attn_implementation(prev)


def first_real(info: RefInfo, batch: int) -> torch.Tensor:
    """Key column of each row's first real token; -1 if a sliding-window cache no longer holds it."""
    am = info.attention_mask_2d
    if am is None:
        return torch.zeros(batch, dtype=torch.long)
    col = am.ne(0).int().argmax(-1) - (am.shape[1] - info.kv_len)
    return torch.where(col >= 0, col, -1)
