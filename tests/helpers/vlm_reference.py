"""Straightforward float64 reference attention for the language-model layers of tiny VLMs.

Independent of the attnflow dispatcher: its own masks, logits, softmax and P @ V in float64, with a test's edits
written from a paper's formula: ``edit_logits(layer, logits, info)``, ``edit_probs(layer, probs, info)``,
``edit_out(layer, out, info)``. Attention modules without a ``layer_idx`` (vision towers) run stock eager attention.
``info.image_keys(kv_len)`` comes from the test's own expected image mask, not from the model's inputs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask

REF = "attnflow_vlm_reference"
_hooks: dict = {}


@dataclass
class Info:
    layer: int
    q_len: int
    kv_len: int
    visible: torch.Tensor  # (B, 1, q, kv) bool
    image_keys: torch.Tensor  # (B, kv) bool
    attention_mask_2d: torch.Tensor | None
    layer_input: torch.Tensor | None  # (B, q, hidden) the residual stream entering the layer


def _attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    layer = getattr(module, "layer_idx", None)
    if layer is None:  # vision tower
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      is_causal=False)
    n = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(n, 1).double(), value.repeat_interleave(n, 1).double()
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = query.double() @ k.transpose(-1, -2) * scaling
    if attention_mask is not None:
        visible = attention_mask > torch.finfo(attention_mask.dtype).min / 2 if attention_mask.dtype != torch.bool \
            else attention_mask
    else:
        visible = (torch.arange(kv_len)[None, :] <= torch.arange(q_len)[:, None] + kv_len - q_len)[None, None]
    visible = visible.expand(query.shape[0], 1, q_len, kv_len)
    info = Info(layer, q_len, kv_len, visible, _hooks["image_keys"](kv_len), _hooks.get("am"),
                _hooks.get("inputs", {}).get(layer))
    logits = logits.masked_fill(~visible, float("-inf"))
    if _hooks.get("edit_logits"):
        logits = _hooks["edit_logits"](layer, logits, info)
    probs = torch.softmax(logits, -1).nan_to_num(0.0)
    if _hooks.get("edit_probs"):
        probs = _hooks["edit_probs"](layer, probs, info)
    out = probs @ v
    if _hooks.get("edit_out"):
        out = _hooks["edit_out"](layer, out, info)
    return out.to(query.dtype).transpose(1, 2).contiguous(), probs.to(query.dtype)


AttentionInterface.register(REF, _attention)
AttentionMaskInterface.register(REF, eager_mask)


def expected_keys(expected: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """kv_len -> (B, kv_len) image flags: the prompt's expected mask, then generated (text) tokens."""
    return lambda kv_len: torch.nn.functional.pad(expected, (0, kv_len - expected.shape[1]))[:, -kv_len:]


@contextlib.contextmanager
def vlm_reference(model, expected: torch.Tensor, *, edit_logits=None, edit_probs=None, edit_out=None,
                  layer_inputs: bool = False):
    """Run ``model`` with the reference attention (and the edits) inside the block."""
    base = model.base_model
    handles = []

    def mask_hook(_m, args, kwargs):
        _hooks["am"] = kwargs.get("attention_mask")

    handles.append(base.register_forward_pre_hook(mask_hook, with_kwargs=True))
    if layer_inputs:
        lm = getattr(base, "language_model", None) or getattr(base, "text_model")
        for i, block in enumerate(lm.layers):
            def hook(_m, args, kwargs, i=i):
                _hooks.setdefault("inputs", {})[i] = args[0] if args else kwargs["hidden_states"]
            handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    previous = model.config._attn_implementation
    _hooks.update(image_keys=expected_keys(expected), edit_logits=edit_logits, edit_probs=edit_probs,
                  edit_out=edit_out)
    model.set_attn_implementation(REF)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        _hooks.clear()
        model.set_attn_implementation(previous)
