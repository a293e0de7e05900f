"""Forward hooks that run a press: compress each layer's cache after the prefill, keep later calls consistent.

- model pre-hook: detects a fresh prefill (empty cache), records the pad mask; on later calls cuts the 2-D attention
  mask to the kept slots of layer 0 and supplies ``position_ids`` in uncompressed coordinates when absent.
- attention pre-hook: for layers whose cache length differs from layer 0 (layer budgets) or that keep head-wise
  validity (head budgets), builds this layer's own additive 4-D mask.
- attention post-hook: after the prefill, scores and gathers the layer's cache; while decoding, appends validity,
  updates running statistics and evicts every ``evict_every`` steps.
"""

from __future__ import annotations

from typing import Any

import torch

from components.presses.base import KVPress, LayerInput, PressState, cache_bytes


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj") and hasattr(m, "q_proj")]
    if not mods:
        raise TypeError(f"{type(model).__name__}: no Llama-style attention modules (q_proj/k_proj/layer_idx) to press")
    return mods


def _cache(kwargs: dict) -> Any:
    return kwargs.get("cache", kwargs.get("past_key_values"))


def install(model: torch.nn.Module, press: KVPress, state: PressState) -> list[Any]:
    mods = _attention_modules(model)
    n_layers = len(mods)
    state.layer_state = {}

    def model_pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs["inputs_embeds"]
        b, t_new = x.shape[0], x.shape[1]
        cache = _cache(kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError("a press needs a 2-D attention mask (or none), not a prepared 4-D mask")
        if cache is None or cache.get_seq_length() == 0:  # fresh prefill: compress after it
            state.compressed, state.steps, state.pending = False, 0, True
            state.layer_state = {}
            state.valid = (mask.bool() if mask is not None else torch.ones(b, t_new, dtype=torch.bool,
                                                                           device=x.device))  # (B, T)
            state.seen, state.prefill_len, state.full_bytes, state.kept_bytes = t_new, t_new, 0, 0
            return None
        if not state.compressed:
            return None  # a cache built outside the scope: left alone
        new_valid = (mask[:, -t_new:].bool() if mask is not None
                     else torch.ones(b, t_new, dtype=torch.bool, device=x.device))  # (B, t_new)
        state.new_valid = new_valid
        if kwargs.get("position_ids") is None:
            pos = torch.arange(state.seen, state.seen + t_new, device=x.device)  # (t_new,)
            kwargs["position_ids"] = pos[None].expand(b, -1)
        full = torch.cat([state.layer_state[0]["valid"], new_valid], 1)  # (B, S0+t_new)
        if mask is not None or not bool(full.all()):  # no mask given and nothing to hide: leave None (fast path)
            kwargs["attention_mask"] = full.long()
        state.seen += t_new
        state.decoding = t_new == 1
        if state.decoding:
            state.steps += 1
        return args, kwargs

    def attn_pre(module, args, kwargs):
        if not state.compressed:
            return None
        ls = state.layer_state[module.layer_idx]
        if module.layer_idx != 0 and ls["valid"].shape[1] == state.layer_state[0]["valid"].shape[1] \
                and ls.get("head_valid") is None:
            return None
        hid = kwargs.get("hidden_states", args[0] if args else None)
        q = hid.shape[1]
        past = ls["valid"]  # (B, S)
        if ls.get("head_valid") is not None:
            past_h = ls["head_valid"]  # (B, Hkv, S)
            n_q = module.config.num_attention_heads
            past_h = past_h.repeat_interleave(n_q // past_h.shape[1], dim=1)  # (B, H, S)
        else:
            past_h = past[:, None]  # (B, 1, S)
        causal = torch.ones(q, q, dtype=torch.bool, device=hid.device).tril()  # (q, q)
        new = causal[None, None] & state.new_valid[:, None, None, :]  # (B, 1, q, q)
        allowed = torch.cat([past_h[:, :, None, :].expand(-1, -1, q, -1), new.expand(-1, past_h.shape[1], -1, -1)],
                            -1)  # (B, H|1, q, S+q)
        add = torch.zeros(allowed.shape, dtype=hid.dtype, device=hid.device)
        kwargs["attention_mask"] = add.masked_fill(~allowed, torch.finfo(hid.dtype).min)
        return args, kwargs

    def attn_post(module, args, kwargs, output):
        cache = _cache(kwargs)
        if cache is None:
            return None
        layer = module.layer_idx
        cl = cache.layers[layer]
        if type(cl).__name__ != "DynamicLayer":
            raise TypeError(f"layer {layer}: presses compress full-attention DynamicCache layers, not "
                            f"{type(cl).__name__} (sliding-window or quantised caches)")
        hid = kwargs.get("hidden_states", args[0] if args else None)
        if getattr(state, "pending", False):
            ls = state.layer_state.setdefault(layer, {})
            inp = LayerInput(layer, n_layers, module, cl.keys, cl.values, hid, kwargs.get("position_embeddings"),
                             state.valid, ls)
            state.full_bytes += _bytes(cl)
            k = press.layer_budget(layer, n_layers, cl.keys.shape[2])
            _compress(press, cl, inp, k, ls, state.valid)
            state.kept_bytes += _bytes(cl)
            if layer == n_layers - 1:
                state.pending, state.compressed = False, True
                state.total_full_bytes += state.full_bytes
                state.total_kept_bytes += state.kept_bytes
                state.n_prefills += 1
            return None
        if not state.compressed:
            return None
        ls = state.layer_state[layer]
        ls["valid"] = torch.cat([ls["valid"], state.new_valid], 1)  # (B, S+q)
        if ls.get("head_valid") is not None:
            hv = state.new_valid[:, None].expand(-1, ls["head_valid"].shape[1], -1)  # (B, Hkv, q)
            ls["head_valid"] = torch.cat([ls["head_valid"], hv], 2)
        inp = LayerInput(layer, n_layers, module, cl.keys, cl.values, hid, kwargs.get("position_embeddings"),
                         ls["valid"], ls)
        press.on_append(inp, state.new_valid.shape[1])
        if press.evict_every and state.decoding and state.steps % press.evict_every == 0 \
                and cl.keys.shape[2] > press.budget:
            _compress(press, cl, inp, press.budget, ls, ls["valid"])
        return None

    handles = [model.register_forward_pre_hook(model_pre, with_kwargs=True)]
    for m in mods:
        handles.append(m.register_forward_pre_hook(attn_pre, with_kwargs=True))
        handles.append(m.register_forward_hook(attn_post, with_kwargs=True))
    return handles


def _bytes(cl: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (cl.keys, cl.values))


def _compress(press: KVPress, cl: Any, inp: LayerInput, k: int, ls: dict, valid: torch.Tensor) -> None:
    """Score, select and gather one layer's cache in place; carry validity and per-slot statistics along."""
    scores = press.score(inp).float()  # (B, Hkv, T)
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))  # pads never win against a real token
    idx, head_valid = press.select(scores, k, inp)  # (B, Hkv, k)
    ls["last_scores"], ls["last_idx"] = scores, idx
    gather = idx[..., None].expand(-1, -1, -1, cl.keys.shape[-1])  # (B, Hkv, k, D)
    cl.keys = cl.keys.gather(2, gather).contiguous()
    cl.values = cl.values.gather(2, gather).contiguous()
    old_hv = ls.get("head_valid")
    if head_valid is None and old_hv is None:
        ls["valid"] = valid.gather(1, idx[:, 0])  # (B, k) pads (if any) sit first in every head: same for all heads
    else:  # head-wise validity: a slot is attended by a head only where it is real and (still) chosen for it
        hv = valid[:, None].expand(-1, idx.shape[1], -1).gather(2, idx)  # (B, Hkv, k)
        if head_valid is not None:
            hv = hv & head_valid
        if old_hv is not None:
            hv = hv & old_hv.gather(2, idx)
        ls["head_valid"], ls["valid"] = hv, hv.any(1)  # (B, Hkv, k), (B, k)
    ls.setdefault("head_valid", None)
    press.on_select(inp, idx)


__all__ = ["install", "cache_bytes"]
