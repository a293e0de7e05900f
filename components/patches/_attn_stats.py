"""Attention statistics for a few selected heads without materialising the (T, S) probability matrix.

Used by probability editors that need per-key statistics (ACT's received attention) but want to stay on the fused
kernel. The trick: the column sum of the attention matrix is itself a log-sum-exp of a transposed attention problem,

    colsum_j = sum_i exp(s_ij - lse_i) = exp( logsumexp_i (k_j . q_i * scale - lse_i) )

so one fused SDPA call with keys as queries, queries as keys, and ``-lse_i`` carried in one extra head-dim channel
returns every column sum in its log-sum-exp (O(T*S*D) work in the kernel, O(T + S) extra memory). Causality
transposes to "query i >= key j", which the kernel's ``is_causal`` expresses after reversing both sequences.

Conventions: q (B, Hs, T, D) and k (B, Hs, S, D) already gathered for the selected heads (KV heads repeated);
``lse`` (B, Hs, T) of the original call; ``real_q`` (B, T) bool = the query rows that count (not padding).
"""

from __future__ import annotations

import torch

from components.attention import math as am
from components.attention.types import CallInfo

_EXCLUDE = -1.0e30  # channel value that removes a query row from the transposed problem (exp -> 0)


def real_queries(call: CallInfo) -> torch.Tensor:
    """(B, q) bool: query rows of this call that are real tokens (not padding)."""
    am2 = call.attention_mask_2d
    if am2 is None or am2.shape[1] < call.kv_len:
        return torch.ones(call.batch, call.q_len, dtype=torch.bool, device=call.device)
    off = call.key_offset
    return (am2[:, off + call.past_len : off + call.kv_len] != 0).to(call.device)


def real_keys(call: CallInfo) -> torch.Tensor:
    """(B, S) bool: keys of this call that are real tokens."""
    am2 = call.attention_mask_2d
    if am2 is None or am2.shape[1] < call.kv_len:
        return torch.ones(call.batch, call.kv_len, dtype=torch.bool, device=call.device)
    off = call.key_offset
    return (am2[:, off : off + call.kv_len] != 0).to(call.device)


def visibility(call: CallInfo) -> torch.Tensor:
    """(B|1, 1, q, S) bool: may query i see key j (the mask the model built, or bottom-right causal)."""
    if call.mask is not None:
        return call.mask
    return am.causal_mask(call, call.device)


def plain_causal(call: CallInfo) -> bool:
    """True when the call's mask is exactly "causal and the key is real" (no sliding window, no custom mask):
    padding is then handled by excluding rows and the kernel can keep ``is_causal``."""
    if call.q_len != call.kv_len:
        return False
    if call.mask is None:
        return call.is_causal
    expected = am.causal_mask(call, call.device) & real_keys(call)[:, None, None, :]  # (B, 1, T, S)
    return bool(torch.equal(call.mask.expand_as(expected), expected))


def column_sums(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, real_q: torch.Tensor, call: CallInfo) \
        -> torch.Tensor:
    """(B, Hs, S) float32: sum over real query rows i of A_ij, through one fused SDPA call (prefill, q_len == S)."""
    b, hs, t, d = q.shape
    scale = call.scaling
    row_bias = torch.where(real_q[:, None, :] & torch.isfinite(lse), -lse.float() / scale, _EXCLUDE)  # (B, Hs, T)
    tq = torch.cat([k.float(), torch.ones_like(k[..., :1], dtype=torch.float32)], dim=-1)  # (B, Hs, S, D+1)
    tk = torch.cat([q.float(), row_bias[..., None]], dim=-1)  # (B, Hs, T, D+1)
    tv = torch.zeros_like(tk)  # (B, Hs, T, D+1); same head dim keeps the flash kernel
    if plain_causal(call):
        # reversed sequences turn "i >= j" into the kernel's causal "i' <= j'"
        _, tlse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            tq.flip(2), tk.flip(2), tv, 0.0, True, scale=scale)
        tlse = tlse.flip(2)  # (B, Hs, S)
        tlse = tlse.masked_fill(~real_keys(call)[:, None, :], float("-inf"))  # pad keys receive nothing
    else:
        vis_t = visibility(call).expand(b, 1, t, -1).transpose(-1, -2)  # (B, 1, S, T)
        bias = torch.zeros(vis_t.shape, dtype=torch.float32, device=q.device).masked_fill(~vis_t, _EXCLUDE)
        _, tlse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            tq, tk, tv, 0.0, False, attn_mask=bias, scale=scale)  # (B, Hs, S)
    return torch.exp(tlse)


def visible_counts(call: CallInfo, real_q: torch.Tensor) -> torch.Tensor:
    """(B, S) float32: number of real query rows of this call that see key j."""
    if plain_causal(call) and call.past_len == 0:
        # causal prefill: rows i >= j; a reversed cumulative sum of the real rows
        return real_q.float().flip(1).cumsum(1).flip(1) * real_keys(call).float()
    vis = visibility(call).expand(call.batch, 1, call.q_len, call.kv_len)[:, 0]  # (B, q, S)
    return (vis & real_q[:, :, None]).float().sum(1)
