"""Attention arithmetic used by the dispatcher: SDPA with its log-sum-exp, bias channels, exact sparse-bias
correction, and the materialised fallback.

Conventions: q (B, H, T, D); k, v (B, Hkv, S, D) (not repeated for GQA); outputs (B, H, T, D); probabilities
(B, H, T, S). ``mask`` is transformers' bool mask (True = attend) or None for plain causal attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from components.attention.types import CallInfo, KeyBias


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D), each KV head repeated for its query group."""
    if n_rep == 1:
        return x
    b, hkv, s, d = x.shape
    return x[:, :, None].expand(b, hkv, n_rep, s, d).reshape(b, hkv * n_rep, s, d)


def exporting() -> bool:
    """True while torch.export / dynamo traces the model (ONNX export): use only standard ops then."""
    return bool(torch.compiler.is_compiling())


def lse_available(q: torch.Tensor) -> bool:
    """Can the fused kernel hand back its log-sum-exp here? (CPU flash kernel, outside tracing.)"""
    return q.device.type == "cpu" and not exporting()


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scaling: float,
    want_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused attention. Returns out (B, H, T, Dv) and, when asked and available, lse (B, H, T) in float32."""
    n_rep = q.shape[1] // k.shape[1]
    if want_lse:
        # The CPU flash kernel returns (out, logsumexp); it needs repeated KV heads and an additive mask.
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), 0.0, is_causal, attn_mask=mask, scale=scaling
        )
        return out, lse
    if n_rep > 1 and mask is None and k.shape[-1] == v.shape[-1]:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scaling, enable_gqa=True)
    else:
        out = F.scaled_dot_product_attention(
            q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask, is_causal=is_causal, scale=scaling
        )
    return out, None


def append_bias_channels(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: list[KeyBias], scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold dense key biases into extra head-dim channels (q, k and v padded alike, so SDPA stays fused)."""
    b, h, t, _ = q.shape
    hkv, s = k.shape[1], k.shape[2]
    q_ch = torch.stack([bias.coef_bh(b).to(q.dtype) / scaling for bias in biases], dim=-1)  # (B, H, r)
    k_ch = torch.stack([bias.dense(s, k.dtype) for bias in biases], dim=-1)  # (B, S, r)
    q = torch.cat([q, q_ch[:, :, None, :].expand(b, h, t, -1)], dim=-1)  # (B, H, T, D+r)
    k = torch.cat([k, k_ch[:, None].expand(b, hkv, s, -1)], dim=-1)  # (B, Hkv, S, D+r)
    v = F.pad(v, (0, len(biases)))  # (B, Hkv, S, D+r)
    return q, k, v


def dense_bias_logits(biases: list[KeyBias], batch: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Sum of biases as a (B, H, 1, S) tensor (for the materialised path)."""
    total = None
    for bias in biases:
        term = bias.coef_bh(batch).to(dtype)[:, :, None, None] * bias.dense(kv_len, dtype)[:, None, None, :]
        total = term if total is None else total + term
    return total


def bias_mask(biases: list[KeyBias], call: CallInfo, dtype: torch.dtype) -> torch.Tensor:
    """Key biases folded into an additive float mask (B, H, T, S): the bias where visible, finfo.min elsewhere."""
    visible = call.mask if call.mask is not None else causal_mask(call, call.device)  # (B|1, 1, T, S) bool
    bias = dense_bias_logits(biases, call.batch, call.kv_len, dtype)  # (B, H, 1, S)
    return torch.where(visible, bias, torch.finfo(dtype).min)  # (B, H, T, S)


# Smallest bias corrected from the kernel's log-sum-exp. The correction o' = (o + sum_j w_j v_j) / (1 + sum_j w_j),
# w_j = p_j (e^b - 1), rebuilds p_j from the float32 lse. For b > 0 its rounding error stays bounded (about the
# relative error of p times |v|, whatever the weight). For b < 0 the division by 1 + sum w >= 1 - sum_j p_j
# amplifies the float32 rounding of o and p by up to 1 / (1 - sum p) when the biased keys hold most of the
# attention. Measured at weight -0.99 (b = -log 100), layer-0 attention output vs float64 over the float32 floor
# |stock SDPA - float64|: SmolLM2-135M 37-43x, tiny random Llamas 14-52x; weight +99: 0.8-1.1x on both. Float64
# arithmetic in the correction does not help (the kernel's o and lse are float32). So biases below -log 2
# (1 + sum w >= 1/2) take the extra-channel form, where the kernel adds the bias to the logits itself: 0.8-1.3x.
LSE_MIN_BIAS = -math.log(2.0)


def lse_correctable(bias: KeyBias) -> bool:
    """Is a sparse bias corrected after the kernel at float32's noise floor? (No bias below ``LSE_MIN_BIAS``.)"""
    return bias.index is not None and float(bias.coef.min()) >= LSE_MIN_BIAS * (1 + 1e-6)


# Cost of the two exact forms of a sparse bias with K keys (padded width of ``index``) over S keys, per head and
# query row: the correction builds (T, K) logits, probabilities and weights in float32 and a (T, K) x (K, D)
# product, so it grows with K; the channel form copies q, k, v with one more head-dim channel and runs the kernel
# at head dim D + 1, so it grows with S. Measured on one attention call (1 thread, 8 heads, head dim 64, causal):
# at S = 2048 the correction costs 3.0 ms at K = 1 and 11.5 ms at K = 64, the channel 9-12 ms; at S = 512
# 1.6-5.9 ms (K = 1-64) against 1.2-2.2 ms. The correction is kept while K <= S / LSE_KEYS_PER_CHANNEL (ZeroTuning's
# one key from S = 64 on); larger sets (PASTA's spans) take the channel form, also in decode steps.
LSE_KEYS_PER_CHANNEL = 64


def lse_cheaper(bias: KeyBias, kv_len: int) -> bool:
    """Is correcting this sparse bias after the kernel cheaper than one extra channel? (see LSE_KEYS_PER_CHANNEL)"""
    return bias.index is not None and bias.index.shape[1] * LSE_KEYS_PER_CHANNEL <= kv_len


def correct_sparse_biases(
    out: torch.Tensor,
    lse: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    biases: list[KeyBias],
    call: CallInfo,
    extra_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply sparse key biases after the fused kernel, exactly.

    With p_ij = exp(s_ij - lse_i) the unbiased probability of a biased key j and w_ij = p_ij (e^{b_ij} - 1):
        o'_i = (o_i + sum_j w_ij v_j) / (1 + sum_j w_ij)
    which is softmax(s + b) V. ``q, k, v`` are the tensors the kernel saw (k/v not repeated); ``extra_logits``
    (B, H, 1, S) holds dense biases already folded into the kernel so s_ij matches it.
    """
    b, h = q.shape[0], q.shape[1]
    n_rep = h // k.shape[1]
    index = torch.cat([bias.index for bias in biases], dim=1)  # (B, K)
    coef = torch.cat(
        [bias.coef_bh(b)[:, :, None].expand(b, h, bias.index.shape[1]) for bias in biases], dim=2
    )  # (B, H, K)
    idx = index.clamp(0, k.shape[2] - 1)
    gather = idx[:, None, :, None]  # (B, 1, K, 1)
    k_sel = k.gather(2, gather.expand(b, k.shape[1], -1, k.shape[3]))  # (B, Hkv, K, D)
    v_sel = v.gather(2, gather.expand(b, v.shape[1], -1, v.shape[3]))  # (B, Hkv, K, Dv)
    k_sel, v_sel = repeat_kv(k_sel, n_rep), repeat_kv(v_sel, n_rep)  # (B, H, K, *)
    s = torch.matmul(q, k_sel.transpose(-1, -2)).float() * call.scaling  # (B, H, T, K)
    if extra_logits is not None:
        s = s + extra_logits.float().expand(b, h, 1, -1).gather(3, idx[:, None, None, :].expand(b, h, 1, -1))
    vis = call.visible(index)  # (B, 1, T, K)
    lse_f = lse.float()[..., None]  # (B, H, T, 1)
    p = torch.where(vis & torch.isfinite(lse_f), torch.exp(s - lse_f), 0.0)  # (B, H, T, K)
    w = p * torch.expm1(_merged_coef(index, coef).float())[:, :, None, :]  # (B, H, T, K)
    num = out.float() + torch.matmul(w, v_sel.float())  # (B, H, T, Dv)
    return (num / (1.0 + w.sum(-1, keepdim=True))).to(out.dtype)


def _merged_coef(index: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """(B, H, K) total bias of each entry's key, on the first entry of that key only (0 on repeats and padding).

    A key named by several sparse biases (two patches on one layer) gets e^{b1 + b2}, not e^{b1} + e^{b2} - 1:
    the correction weight is p (e^{sum b} - 1), counted once."""
    valid = index >= 0  # (B, K)
    same = (index[:, :, None] == index[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (B, K, K)
    total = torch.einsum("bkl,bhl->bhk", same.to(coef.dtype), coef)  # (B, H, K)
    earlier = torch.ones(index.shape[1], index.shape[1], dtype=torch.bool, device=index.device).tril(-1)
    first = valid & ~(same & earlier).any(-1)  # (B, K)
    return torch.where(first[:, None, :], total, 0.0)


def causal_mask(call: CallInfo, device: torch.device) -> torch.Tensor:
    """(1, 1, q, kv) bool, bottom-right aligned: key j visible to query i iff j <= i + past."""
    qpos = torch.arange(call.q_len, device=device)[:, None] + call.past_len
    kpos = torch.arange(call.kv_len, device=device)[None, :]
    return (kpos <= qpos)[None, None]


def materialized_logits(
    q: torch.Tensor, k: torch.Tensor, call: CallInfo, biases: list[KeyBias], softcap: float | None = None
) -> torch.Tensor:
    """Masked logits (B, H, T, S) in at least float32; masked entries are -inf."""
    n_rep = q.shape[1] // k.shape[1]
    dtype = torch.promote_types(q.dtype, torch.float32)
    logits = torch.matmul(q.to(dtype), repeat_kv(k, n_rep).to(dtype).transpose(-1, -2)) * call.scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    extra = dense_bias_logits(biases, q.shape[0], k.shape[2], dtype)
    if extra is not None:
        logits = logits + extra
    if call.mask is not None:
        visible = call.mask
    elif call.is_causal:  # (not causal without a mask: a bidirectional module, or one query seeing every key)
        visible = causal_mask(call, q.device)
    else:
        visible = None
    if visible is not None:
        logits = logits.masked_fill(~visible, float("-inf"))
    return logits


def softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over keys; fully masked rows (padding queries) become all-zero instead of NaN."""
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)
