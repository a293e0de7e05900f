"""Attention statistics presses score with, computed without the T x T attention matrix."""

from __future__ import annotations

import torch

from components.presses.base import LayerInput, gqa_mean


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def queries(inp: LayerInput, last: int | None = None) -> torch.Tensor:
    """Recompute the layer's queries of the last ``last`` positions of this forward: (B, H, w, D), rotary applied.

    Follows the Llama-style attention modules of transformers (``q_proj``, optional ``q_norm``, rotary from the
    ``position_embeddings`` the decoder passes to the attention module).
    """
    if inp.hidden is None or inp.cos_sin is None:
        raise ValueError("this press needs the layer's hidden states and rotary embeddings (Llama-style attention)")
    mod = inp.module
    hid = inp.hidden if last is None else inp.hidden[:, -last:]  # (B, w, hidden)
    b, w = hid.shape[:2]
    d = inp.keys.shape[-1]
    q = mod.q_proj(hid).view(b, w, -1, d)  # (B, w, H, D)
    if getattr(mod, "q_norm", None) is not None:
        q = mod.q_norm(q)
    q = q.transpose(1, 2)  # (B, H, w, D)
    cos, sin = inp.cos_sin
    cos, sin = cos[:, -w:].unsqueeze(1), sin[:, -w:].unsqueeze(1)  # (B, 1, w, D)
    return q * cos + _rotate_half(q) * sin  # (B, H, w, D)


def _scaling(inp: LayerInput) -> float:
    return float(getattr(inp.module, "scaling", inp.keys.shape[-1] ** -0.5))


def window_attention(inp: LayerInput, window: int) -> torch.Tensor:
    """Softmax attention of the last ``window`` queries over all T cached keys, causal inside the window and with pads
    masked: (B, H, w, T) float32. Memory O(w T), never T x T."""
    t = inp.keys.shape[2]
    w = min(window, t)
    q = queries(inp, w).float()  # (B, H, w, D)
    n_kv = inp.keys.shape[1]
    k = inp.keys.float().repeat_interleave(q.shape[1] // n_kv, dim=1)  # (B, H, T, D)
    logits = q @ k.transpose(-1, -2) * _scaling(inp)  # (B, H, w, T)
    qpos = torch.arange(t - w, t, device=q.device)[:, None]  # (w, 1)
    allowed = (torch.arange(t, device=q.device)[None, :] <= qpos)[None, None] & inp.valid[:, None, None, :]  # (B,1,w,T)
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)  # (B, H, w, T)


def attention_column_sums(inp: LayerInput, chunk: int = 256) -> torch.Tensor:
    """Sum over every query of its causal attention to each key (H2O's accumulated attention): (B, H, T) float32.

    Query blocks of ``chunk`` rows: memory O(chunk T); pad queries contribute nothing.
    """
    t = inp.keys.shape[2]
    q_all = queries(inp).float()  # (B, H, T, D)
    n_kv = inp.keys.shape[1]
    k = inp.keys.float().repeat_interleave(q_all.shape[1] // n_kv, dim=1)  # (B, H, T, D)
    keys_pos = torch.arange(t, device=k.device)
    out = torch.zeros(k.shape[:3], dtype=torch.float32, device=k.device)  # (B, H, T)
    for s in range(0, t, chunk):
        q = q_all[:, :, s:s + chunk]  # (B, H, c, D)
        qpos = torch.arange(s, s + q.shape[2], device=k.device)[:, None]  # (c, 1)
        allowed = (keys_pos[None, :] <= qpos)[None, None] & inp.valid[:, None, None, :]  # (B, 1, c, T)
        logits = (q @ k.transpose(-1, -2) * _scaling(inp)).masked_fill(~allowed, float("-inf"))  # (B, H, c, T)
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # (B, H, c, T)
        probs = probs * inp.valid[:, None, s:s + q.shape[2], None]  # pad queries add nothing
        out += probs.sum(2)  # (B, H, T)
    return out


def pool1d(x: torch.Tensor, kernel: int, mode: str = "avg") -> torch.Tensor:
    """Same-length 1-D pooling along the last dim of (..., T) (SnapKV's clustering of votes)."""
    if kernel <= 1:
        return x
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-1])  # (N, 1, T)
    pad = kernel // 2
    if mode == "max":
        y = torch.nn.functional.max_pool1d(flat, kernel, stride=1, padding=pad)
    else:
        y = torch.nn.functional.avg_pool1d(flat, kernel, stride=1, padding=pad, count_include_pad=False)
    return y[..., : shape[-1]].reshape(shape)


def snap_votes(inp: LayerInput, window: int, kernel: int, pooling: str = "avg") -> torch.Tensor:
    """SnapKV's scores: window attention averaged over the window queries, pooled along keys, averaged over each
    KV head's query group; the window's own positions get +inf (always kept). (B, Hkv, T)."""
    probs = window_attention(inp, window)  # (B, H, w, T)
    votes = pool1d(probs.mean(2), kernel, pooling)  # (B, H, T)
    scores = gqa_mean(votes, inp.keys.shape[1])  # (B, Hkv, T)
    scores[..., -min(window, scores.shape[-1]):] = float("inf")
    return scores
