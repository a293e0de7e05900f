"""ACT: Attention Calibration Technique, shrink the attention to detected sink tokens on chosen heads.

Per input and head, the attention each key receives is measured as the mean over the queries that can see it;
keys above a threshold are "sinks" (except the first one, normally the BOS token, which is left alone). Their
attention is scaled by beta and the freed mass goes back to the other keys in proportion to their attention.
Training-free; only the selected heads change, every other head stays on the fused kernel. Formula (A = post-softmax
attention of one head, queries i, keys j, N_j = number of real queries that see key j):

    alpha_j = (1 / N_j) * sum_{i sees j} A_ij                 received attention
    S       = {j : alpha_j > tau} minus its first (lowest) position
    P_i     = sum_{j in S} A_ij
    A'_ij   = beta * A_ij                                       j in S
    A'_ik   = A_ik * (1 - beta * P_i) / (1 - P_i)               k not in S  (rows still sum to 1)

Fast path (prefill, CPU): SDPA for all heads; for the selected heads only, every column sum in one extra fused
call (the column sums are the log-sum-exp of the transposed problem, see ``_attn_stats``), then the exact output
o' = beta * o_S + c_i * (o - o_S) with o_S = sum_{j in S} A_ij v_j and c_i = (1 - beta P_i) / (1 - P_i), from the
kernel's log-sum-exp and the few sink keys. When 1 - P_i < 1e-2 for some row, (o - o_S) / (1 - P_i) is taken from a
second fused call over the non-sink keys instead, so no cancellation amplifies rounding. Fallbacks (decoding steps,
chunked prefill, other patches' logit biases on the same layer, no kernel log-sum-exp): the selected heads'
probabilities are materialised and edited; ``edit_probs`` is the same edit for the materialised path.

Decoding: the reference computes sinks from the prompt forward only (its decode behaviour is undefined). Here the
column sums and counts are kept per (layer, head) for the life of the ``applied`` scope, by absolute position, and
reset by every prefill; each decode step adds its query row, so the sink set of step t uses every query so far
(prompt + generated), and calibrates the new row with it. ``phase=prefill`` calibrates the prompt forward only.

Based on Yu et al., "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models without
Training through Attention Calibration" (ICML 2024, arXiv 2406.15765). Reference code:
https://github.com/GATECH-EIC/ACT (``models/llama_modelling_aug.py``: ``atten_process_eval``;
``models/augment_index.py``: the searched head lists).

Deviations from the reference code: every batch row is calibrated (the reference edits batch element 0 only);
padding rows are excluded from the statistics (alpha_j counts real queries only; "first sink" is per row); the
head set is a parameter (the reference hard-codes searched heads for layers 2..30; the head-search flow produces
ours); decoding is calibrated with running statistics (above); rows whose non-sink mass is 0 are left unchanged
(the reference divides by zero there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from components.attention import math as am
from components.attention.types import CallInfo, KeyBias
from components.base import check_range
from components.heads import HeadSet
from components.patches import _attn_stats as st
from components.patches.base import AttentionPatch
from components.search import HeadSearch
from registry import register

_ILL = 0.1  # rows with less non-sink mass than this take the stable second pass (error x <= 10)


def reference_probs(probs: torch.Tensor, visible: torch.Tensor, real: torch.Tensor, off: int, heads: list[int],
                    state: dict, beta: float, tau: float, keep_first_sink: bool = True) -> torch.Tensor:
    """The formula on materialised attention, with loops over rows and heads (tests compare every path against it;
    the patch's fast path never materialises attention).

    Parameters
    ----------
    probs : torch.Tensor
        (B, H, T, S) post-softmax attention of one layer in one call (the prompt, or one decoding step).
    visible : torch.Tensor
        (B, 1, T, S) bool: the keys each query sees.
    real : torch.Tensor
        (B, T) bool: the call's real (non-pad) queries; only they count in alpha_j.
    off : int
        Absolute position of key column 0 (> 0 when a sliding-window cache dropped the oldest keys).
    heads : list of int
        The calibrated query heads of this layer.
    state : dict
        Running statistics of this layer, kept by the caller across its calls: column sums and counts over absolute
        positions, restarted by every prefill (T == S).
    beta, tau, keep_first_sink
        As the patch's parameters.

    Returns
    -------
    torch.Tensor
        (B, H, T, S): alpha_j = (1 / N_j) sum_{i sees j} A_ij over every real query so far; S = {j : alpha_j > tau}
        minus its first position (``keep_first_sink``); A'_ij = beta A_ij on S, A'_ik = A_ik (1 - beta P_i) /
        (1 - P_i) elsewhere (rows with no non-sink mass unchanged).
    """
    b_size, n_heads, q_len, kv_len = probs.shape
    if q_len == kv_len:  # a prefill: the statistics start again
        state["col"] = torch.zeros(b_size, n_heads, 0, dtype=torch.float64, device=probs.device)  # (B, H, N)
        state["cnt"] = torch.zeros(b_size, 0, dtype=torch.float64, device=probs.device)  # (B, N)
    grow = off + kv_len - state["cnt"].shape[1]  # keys appended since the last call
    state["col"] = torch.cat([state["col"], state["col"].new_zeros(b_size, n_heads, grow)], -1)  # (B, H, off + S)
    state["cnt"] = torch.cat([state["cnt"], state["cnt"].new_zeros(b_size, grow)], -1)  # (B, off + S)
    probs = probs.clone()
    for b in range(b_size):
        rows = real[b]  # (T,)
        state["cnt"][b, off:] += visible[b, 0][rows].double().sum(0)  # N_j: real queries that see key j
        for h in heads:
            state["col"][b, h, off:] += probs[b, h][rows].sum(0)  # sum_i A_ij
            sinks = state["col"][b, h] / state["cnt"][b].clamp_min(1) > tau  # (N,) over absolute positions
            if keep_first_sink and sinks.any():
                sinks[int(sinks.nonzero()[0, 0])] = False
            cols = sinks[off:]  # (S,) bool over this call's keys
            if not cols.any():
                continue
            a = probs[b, h]  # (T, S)
            mass = (a * cols).sum(-1, keepdim=True)  # (T, 1) P_i
            rest = (a * ~cols).sum(-1, keepdim=True)  # (T, 1) 1 - P_i
            new = torch.where(cols, beta * a, a * (1 - beta * mass) / rest.clamp_min(1e-300))
            probs[b, h] = torch.where(rest == 0, a, new)
    return probs


@register("act", version="1.0.0", family="patch", paper="arXiv:2406.15765",
          summary="Attention calibration: scale detected sink tokens' attention by beta on chosen heads.")
@dataclass(frozen=True)
class ACT(AttentionPatch):
    """ACT: calibrate the attention to hidden sink tokens on the selected heads.

    Parameters
    ----------
    beta : float
        Scale of the sink columns, in [0, 1] (1 = no-op). Default 0.4.
    tau : float
        Sink threshold on the received attention alpha_j, in (0, 1). Default 0.1.
    heads : HeadSet
        Calibrated (layer, head) pairs, e.g. ``2:0,3:5`` or ``mlflow:<run_id>/heads.json``. Default ``all``.
    keep_first_sink : bool
        Leave the first detected sink alone, as the reference does. Default True.
    phase : {"all", "prefill"}
        ``all`` also calibrates decoding steps (running statistics); ``prefill`` only the prompt forward. Default
        ``all``.
    """

    beta: float = 0.4
    tau: float = 0.1
    heads: HeadSet = HeadSet.all()
    keep_first_sink: bool = True
    phase: Literal["all", "prefill"] = "all"

    edits_probabilities: ClassVar[bool] = True
    needs_lse: ClassVar[bool] = True
    onnx_exportable: ClassVar[bool] = False
    onnx_reason: ClassVar[str] = ("its sink sets are data-dependent (thresholded column sums) and decoding keeps "
                                  "running statistics across steps, which an exported graph has no state for")
    example: ClassVar[dict[str, str]] = {"beta": "0.4", "tau": "0.05", "heads": "0:1,1:*"}
    # ACT's head filtering: calibrate one head at a time, keep the heads that beat the unpatched model
    head_search: ClassVar[HeadSearch] = HeadSearch(good="improves")

    def __post_init__(self) -> None:
        check_range("act.beta", self.beta, 0.0, 1.0)
        check_range("act.tau", self.tau, 0.0, 1.0, lo_open=True, hi_open=True)

    def active(self, call: CallInfo) -> bool:
        if self.phase == "prefill" and not call.is_prefill:
            return False
        return bool(self.head_indices(call))

    # -- hooks ------------------------------------------------------------------------------------------------------
    def post_attention(self, call: CallInfo, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor | None, biases: list[KeyBias]) -> torch.Tensor:
        heads = self.head_indices(call)
        kv = torch.tensor(heads, device=q.device) // (call.n_heads // call.n_kv_heads)
        qs, ks, vs = q[:, heads], k[:, kv], v[:, kv]  # (B, Hs, T, D), (B, Hs, S, D), (B, Hs, S, D)
        if lse is not None and not biases and call.is_prefill and call.q_len > 1:
            new = self._fast_prefill(call, qs, ks, vs, out[:, heads], lse[:, heads])
        else:
            logits = am.materialized_logits(qs, ks, call, [])  # (B, Hs, q, S)
            extra = am.dense_bias_logits(biases, call.batch, call.kv_len, logits.dtype)
            if extra is not None:
                logits = logits + extra[:, heads]
            probs = self._calibrate(call, am.softmax_rows(logits))  # (B, Hs, q, S)
            new = torch.matmul(probs, vs.to(probs.dtype))  # (B, Hs, q, D)
        out = out.clone()
        out[:, heads] = new.to(out.dtype)
        return out

    def edit_probs(self, call: CallInfo, probs: torch.Tensor) -> torch.Tensor:
        heads = self.head_indices(call)
        probs = probs.clone()
        probs[:, heads] = self._calibrate(call, probs[:, heads]).to(probs.dtype)  # (B, H, q, S)
        return probs

    # -- statistics and sink sets -----------------------------------------------------------------------------------
    def _stats(self, call: CallInfo, col: torch.Tensor, cnt: torch.Tensor) -> torch.Tensor:
        """Add this call's column sums (B, Hs, S) and counts (B, S) to the running statistics and return the sink
        mask (B, Hs, S) over the call's keys."""
        state = call.state(self)
        off = call.key_offset
        end = off + call.kv_len
        if call.is_prefill or "col" not in state:
            state["col"] = torch.zeros(*col.shape[:2], end, dtype=torch.float64, device=col.device)
            state["cnt"] = torch.zeros(cnt.shape[0], end, dtype=torch.float64, device=col.device)
        grow = end - state["col"].shape[-1]
        if grow > 0:  # keys appended since the last call (absolute positions)
            state["col"] = torch.nn.functional.pad(state["col"], (0, grow))
            state["cnt"] = torch.nn.functional.pad(state["cnt"], (0, grow))
        state["col"][..., off:end] += col.double()
        state["cnt"][..., off:end] += cnt.double()
        alpha = state["col"] / state["cnt"].clamp_min(1.0)[:, None]  # (B, Hs, N) over absolute positions
        sinks = alpha > self.tau
        if self.keep_first_sink:
            first = sinks.int().argmax(-1, keepdim=True)  # (B, Hs, 1) lowest sink position (0 when none)
            sinks = sinks.scatter(-1, first, False)
        return sinks[..., off:end]  # (B, Hs, S)

    def _calibrate(self, call: CallInfo, probs: torch.Tensor) -> torch.Tensor:
        """ACT on materialised probabilities of the selected heads (B, Hs, q, S); updates the statistics."""
        real_q = st.real_queries(call)  # (B, q)
        col = (probs * real_q[:, None, :, None]).sum(2)  # (B, Hs, S)
        sinks = self._stats(call, col, st.visible_counts(call, real_q))[:, :, None, :]  # (B, Hs, 1, S)
        sink_mass = (probs * sinks).sum(-1, keepdim=True)  # (B, Hs, q, 1) = P_i
        rest = (probs * ~sinks).sum(-1, keepdim=True)  # (B, Hs, q, 1) = 1 - P_i, summed directly
        c = torch.where(rest > 0, (1 - self.beta * sink_mass) / rest.clamp_min(1e-300), 1.0)  # (B, Hs, q, 1)
        beta = torch.where(rest > 0, self.beta, 1.0)
        return torch.where(sinks, beta * probs, c * probs)

    # -- fast path --------------------------------------------------------------------------------------------------
    def _fast_prefill(self, call: CallInfo, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor,
                      o: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        """Exact calibrated outputs (B, Hs, T, D) from the fused kernel's outputs and log-sum-exp."""
        real_q = st.real_queries(call)  # (B, T)
        col = st.column_sums(qs, ks, lse, real_q, call)  # (B, Hs, S)
        sinks = self._stats(call, col, st.visible_counts(call, real_q))  # (B, Hs, S)
        n_max = int(sinks.sum(-1).max())
        if n_max == 0:
            return o
        b, hs, t, d = qs.shape
        # 1. The sink keys of each (row, head), padded with -1: (B, Hs, K).
        order = torch.sort(sinks.int(), dim=-1, descending=True, stable=True)
        idx = torch.where(order.values[..., :n_max] > 0, order.indices[..., :n_max], -1)  # (B, Hs, K)
        gather = idx.clamp_min(0)[..., None]  # (B, Hs, K, 1)
        k_s = ks.gather(2, gather.expand(-1, -1, -1, d)).float()  # (B, Hs, K, D)
        v_s = vs.gather(2, gather.expand(-1, -1, -1, vs.shape[-1])).float()  # (B, Hs, K, Dv)
        # 2. Their probabilities A_ij = exp(s_ij - lse_i) where visible: P_i and o_S.
        vis = call.visible(idx.reshape(b, hs * n_max))  # (B, 1, T, Hs*K)
        vis = vis.reshape(b, t, hs, n_max).permute(0, 2, 1, 3)  # (B, Hs, T, K)
        s = torch.matmul(qs.float(), k_s.transpose(-1, -2)) * call.scaling  # (B, Hs, T, K)
        lse_f = lse.float()[..., None]  # (B, Hs, T, 1)
        p = torch.where(vis & torch.isfinite(lse_f), torch.exp(s - lse_f), 0.0)  # (B, Hs, T, K)
        sink_mass = p.sum(-1, keepdim=True)  # (B, Hs, T, 1)
        o_s = torch.matmul(p, v_s)  # (B, Hs, T, Dv)
        rest = 1.0 - sink_mass  # (B, Hs, T, 1)
        if bool((rest[real_q[:, None, :, None].expand_as(rest)] < _ILL).any()):
            # 3a. Stable form: the attention over non-sink keys only, renormalised, from one more fused call.
            rest_norm, no_rest = self._non_sink_attention(call, qs, ks, vs, sinks, lse)  # (B, Hs, T, Dv), (B, Hs, T)
            new = self.beta * o_s + (1 - self.beta * sink_mass) * rest_norm
            # rows that see only sink keys (a sliding window full of sinks) are left unchanged, as in edit_probs
            new = torch.where(no_rest[..., None], o.float(), new)
        else:
            # 3b. o' = beta o_S + c (o - o_S), c = (1 - beta P) / (1 - P).
            new = self.beta * o_s + (1 - self.beta * sink_mass) / rest * (o.float() - o_s)
        return new.to(o.dtype)

    @staticmethod
    def _non_sink_attention(call: CallInfo, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor,
                            sinks: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax attention restricted to non-sink keys (a -1e4 logit channel on sinks), fused: (B, Hs, T, Dv),
        and (B, Hs, T) bool for the rows that see no non-sink key at all (their log-sum-exp drops by ~1e4; the
        attention returned there is the unrestricted one, with float32 rounding at the 1e4 scale)."""
        q2 = torch.cat([qs.float(), torch.full_like(qs[..., :1], -1.0e4 / call.scaling, dtype=torch.float32)],
                       dim=-1)  # (B, Hs, T, D+1)
        k2 = torch.cat([ks.float(), sinks[..., None].float()], dim=-1)  # (B, Hs, S, D+1)
        v2 = torch.nn.functional.pad(vs.float(), (0, 1))  # (B, Hs, S, Dv+1)
        out, lse2 = am.sdpa(q2, k2, v2, call.mask, call.is_causal, call.scaling, want_lse=True)
        return out[..., :-1], lse2 < lse.float() - 5.0e3
