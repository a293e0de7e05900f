"""Head pattern override: overwrite chosen heads' attention pattern at one query position with a target pattern.

For every chosen head h and each batch row, the attention row of the chosen query position q is replaced by a
target distribution T over the keys it can see (mixed with the original by ``weight``):

    A'_{h, q, :} = (1 - w) * A_{h, q, :} + w * T          (other rows and heads unchanged)

T is one of: ``positions`` (equal weight on the given key positions), ``first`` (all on the first real token),
``uniform`` (uniform over the visible keys), or ``inputs`` (per-row weights the caller attaches with
``session.set_inputs(attention_target=(B, S) tensor)``, e.g. the positions of the wrong colour options in a
colored-objects prompt). Positions count real tokens: p >= 0 is the p-th real token of the row (left padding
skipped), p < 0 counts back from the query (-1 = the query itself); ``query_pos`` < 0 counts back from the newest
token (-1 = the last prompt token in the prefill, the new token in each decoding step).

Fast form (``post_attention``): T does not depend on A, so the edited head output is exact without the attention
matrix: o'_{h,q} = (1 - w) o_{h,q} + w * sum_j T_j v_{h,j}, one query row per chosen head, after the fused SDPA
kernel (O(B * |heads| * S * D) extra). ``edit_probs`` is the same edit on materialised probabilities (used with
``output_attentions`` and by the fallback path).

Based on Merullo, Eickhoff, Pavlick, "Circuit Component Reuse Across Tasks in Transformer Language Models"
(ICLR 2024, arXiv 2310.08744), the intervention that makes the colored-objects inhibition heads attend like in
IOI. Reference code: https://github.com/jmerullo/circuit_reuse (the intervention code is not in the repository).

Deviations from the reference code: no reference implementation exists; the paper's heads and target pattern
are inputs here (``heads``, ``target``, ``positions`` or per-row ``inputs``), and ``weight`` generalises the hard
overwrite (w = 1, the default). Not ONNX-exported (per-row index writes; untested under torch.export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from components.attention.math import causal_mask
from components.attention.types import CallInfo
from components.base import ParamError, check_range
from components.heads import HeadSet
from components.patches.base import AttentionPatch
from registry import register


def reference_probs(probs: torch.Tensor, visible: torch.Tensor, first: list[int], newest: list[int],
                    heads: list[int], *, query_pos: int, target: str, positions: tuple[int, ...],
                    weight: float) -> torch.Tensor:
    """The formula on materialised attention, with loops over rows (tests compare every path against it).

    Parameters
    ----------
    probs : torch.Tensor
        (B, H, T, S) post-softmax attention of one layer; the call's queries are keys S - T .. S - 1.
    visible : torch.Tensor
        (B, 1, T, S) bool: the keys each query sees.
    first, newest : list of int
        Per row, the key columns of the first and of the newest real token (``first`` < 0 when a sliding-window
        cache dropped it).
    heads : list of int
        The overridden query heads of this layer.
    query_pos, target, positions, weight
        As the patch's parameters; ``target`` is ``positions``, ``first`` or ``uniform`` (``inputs`` weights come
        from the caller and are not part of the formula).

    Returns
    -------
    torch.Tensor
        (B, H, T, S) with A'_{h,q,:} = (1 - w) A_{h,q,:} + w T on the chosen query row q of each row, T the target
        restricted to the keys q sees and normalised; rows whose target is empty are unchanged.
    """
    if target not in ("positions", "first", "uniform"):
        raise ValueError(f"the reference covers target=positions, first and uniform, not {target!r}")
    probs = probs.clone()
    q_len, kv_len = probs.shape[2], probs.shape[3]
    past = kv_len - q_len
    for b in range(probs.shape[0]):
        qkey = first[b] + query_pos if query_pos >= 0 else newest[b] + 1 + query_pos  # key column of the query
        qi = qkey - past  # its index among this call's queries
        if not 0 <= qi < q_len or qkey < first[b]:
            continue
        tgt = torch.zeros(kv_len, dtype=probs.dtype, device=probs.device)  # (S,)
        if target == "first":
            if first[b] >= 0:
                tgt[first[b]] = 1.0
        elif target == "uniform":
            tgt += 1.0
        else:
            for p in positions:
                j = first[b] + p if p >= 0 else qkey + 1 + p
                if 0 <= j < kv_len:
                    tgt[j] = 1.0
        tgt = tgt * visible[b, 0, qi]  # (S,) only keys the query sees
        if tgt.sum() == 0:
            continue
        for h in heads:
            probs[b, h, qi] = (1 - weight) * probs[b, h, qi] + weight * tgt / tgt.sum()  # (S,)
    return probs


@register("head_pattern_override", version="1.0.0", family="patch", paper="arXiv:2310.08744",
          summary="Overwrite chosen heads' attention row at one query position with a target pattern.")
@dataclass(frozen=True)
class HeadPatternOverride(AttentionPatch):
    """Attention-pattern override for chosen heads at one query position.

    Parameters
    ----------
    heads : HeadSet
        The (layer, head) pairs to override, e.g. ``9:6,10:0``. Required (no default).
    query_pos : int
        The query position: p >= 0 = the p-th real token, p < 0 = counted back from the newest token. Default -1.
    target : {"positions", "first", "uniform", "inputs"}
        The target pattern. Default ``positions``.
    positions : list of int
        Key positions for ``target=positions`` (p >= 0 from the first real token, p < 0 back from the query).
        Default 0.
    weight : float
        Mixing weight w in [0, 1] (1 = overwrite). Default 1.0.
    phase : {"all", "prefill", "decode"}
        Which forwards to act on. Default ``all``.
    """

    heads: HeadSet = HeadSet.none()
    query_pos: int = -1
    target: Literal["positions", "first", "uniform", "inputs"] = "positions"
    positions: tuple[int, ...] = (0,)
    weight: float = 1.0
    phase: Literal["all", "prefill", "decode"] = "all"

    onnx_exportable: ClassVar[bool] = False
    onnx_reason: ClassVar[str] = ("it writes one query row per batch row at data-dependent indices (and target=inputs "
                                  "reads per-batch session inputs the graph has no input for); its export is not "
                                  "validated")
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"heads": "0:1,1:0", "positions": "0,-2"}

    def __post_init__(self) -> None:
        if not self.heads:
            raise ParamError("head_pattern_override: heads is required (e.g. heads=0:1,2:3)")
        check_range("head_pattern_override.weight", self.weight, 0.0, 1.0)
        if self.target == "positions" and not self.positions:
            raise ParamError("head_pattern_override: target=positions needs at least one position")

    def active(self, call: CallInfo) -> bool:
        if (self.phase == "prefill" and not call.is_prefill) or (self.phase == "decode" and not call.is_decode):
            return False
        return bool(self.head_indices(call))

    # -- the plan: which query row per batch row, and the target pattern ------------------------------------------
    def _visible(self, call: CallInfo, qi: torch.Tensor) -> torch.Tensor:
        """(B, S) bool: keys visible to query ``qi[b]`` of each row."""
        mask = call.mask if call.mask is not None else causal_mask(call, call.device)  # (B|1, 1, q, S)
        mask = mask.expand(call.batch, -1, -1, -1)[:, 0]  # (B, q, S)
        return mask.gather(1, qi.clamp(0, call.q_len - 1)[:, None, None].expand(-1, 1, call.kv_len))[:, 0]

    def plan(self, call: CallInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(qi (B,) query index in this call, ok (B,) bool, target (B, S) float32 rows summing to 1 where ok)."""
        am = call.attention_mask_2d  # (B, total) 1 = real token; the key index of column c is c - key_offset
        first = ((am != 0).int().argmax(-1).to(call.device) - call.key_offset if am is not None
                 else torch.zeros(call.batch, dtype=torch.long, device=call.device))  # (B,) < 0: evicted by a window
        last = call.last_real_query()  # (B,) query index of the newest real token
        if self.query_pos >= 0:
            qi = first + self.query_pos - call.past_len
        else:
            qi = last + 1 + self.query_pos
        ok = (qi >= 0) & (qi < call.q_len) & (qi + call.past_len >= first)
        vis = self._visible(call, qi) & ok[:, None]  # (B, S)
        qkey = qi + call.past_len  # (B,) key index of the query itself
        if self.target == "first":
            tgt = torch.zeros(call.batch, call.kv_len, device=call.device)
            tgt.scatter_(1, first.clamp(0, call.kv_len - 1)[:, None], (first >= 0).float()[:, None])
        elif self.target == "uniform":
            tgt = torch.ones(call.batch, call.kv_len, device=call.device)
        elif self.target == "positions":
            tgt = torch.zeros(call.batch, call.kv_len, device=call.device)
            for p in self.positions:
                idx = first + p if p >= 0 else qkey + 1 + p  # (B,)
                inside = (idx >= 0) & (idx < call.kv_len)
                tgt.scatter_add_(1, idx.clamp(0, call.kv_len - 1)[:, None], inside.float()[:, None])
            tgt = tgt.clamp(max=1.0)  # a position named twice counts once
        else:
            tgt = self._input_target(call)
        tgt = tgt * vis
        total = tgt.sum(-1, keepdim=True)  # (B, 1)
        ok = ok & (total[:, 0] > 0)
        return qi, ok, torch.where(total > 0, tgt / total.clamp_min(1e-30), 0.0)

    def _input_target(self, call: CallInfo) -> torch.Tensor:
        weights = call.inputs.get("attention_target")
        if weights is None:
            raise ValueError("head_pattern_override: target=inputs needs session.set_inputs(attention_target=...) "
                             "with a (batch, seq) tensor of key weights")
        w = torch.as_tensor(weights, dtype=torch.float32, device=call.device)
        off = call.key_offset
        if w.shape[0] != call.batch or w.shape[1] < off + call.kv_len:
            w = torch.nn.functional.pad(w, (0, max(off + call.kv_len - w.shape[1], 0)))[: call.batch]
        return w[:, off : off + call.kv_len].clamp_min(0.0)  # (B, S)

    # -- hooks ------------------------------------------------------------------------------------------------------
    def post_attention(self, call, q, k, v, out, lse, biases):
        if not self.active(call):
            return out
        qi, ok, tgt = self.plan(call)
        if not bool(ok.any()):
            return out
        heads = torch.tensor(self.head_indices(call), device=call.device)  # (h,)
        v_sel = v[:, heads // (call.n_heads // call.n_kv_heads)]  # (B, h, S, D): each head's KV head (GQA)
        tv = torch.einsum("bs,bhsd->bhd", tgt.to(v.dtype), v_sel)  # (B, h, D): target-weighted values
        rows = ok.nonzero()[:, 0]  # (b,)
        index = (rows[:, None], heads[None, :], qi[rows][:, None])  # (b, h) each
        out = out.clone()
        out[index] = (1 - self.weight) * out[index] + self.weight * tv[rows]  # (b, h, D)
        return out

    def edit_probs(self, call: CallInfo, probs: torch.Tensor) -> torch.Tensor:
        if not self.active(call):
            return probs
        qi, ok, tgt = self.plan(call)
        if not bool(ok.any()):
            return probs
        heads = torch.tensor(self.head_indices(call), device=call.device)
        rows = ok.nonzero()[:, 0]
        index = (rows[:, None], heads[None, :], qi[rows][:, None])  # (b, h) each
        probs = probs.clone()
        probs[index] = (1 - self.weight) * probs[index] + self.weight * tgt[rows][:, None, :].to(probs.dtype)
        return probs
