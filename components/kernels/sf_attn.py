"""SF-Attn (SinkLoRA) and S2-Attn (LongLoRA): grouped, shifted, causal attention for long-context fine-tuning.

S2-Attn (LongLoRA, exact from the reference code): the T tokens are cut into groups of G = ratio * T tokens; every
query attends causally inside its group only. The first H // 2 heads use the groups [0, G), [G, 2G), ...; the
other H - H // 2 heads ("shifted", ``qkv[:, num_heads // 2:]``) roll q, k, v by -G/2 along the sequence first, so
their groups are [G/2, 3G/2), ... and the last group wraps around: [T - G/2, T) followed by [0, G/2), where the
first G/2 tokens attend to the last G/2 (information flows backwards in time). Outputs are rolled back by +G/2.

SF-Attn (SinkLoRA, reconstructed: the published code has no SF-Attn) removes the wrap-around and adds sinks:

    g_h(i) = i // G                  unshifted heads (h < H // 2)
    g_h(i) = (i + G // 2) // G       shifted heads: [0, G/2), [G/2, 3G/2), ..., [.., T) (segments in order)
    visible_h(i, j) = M(i, j) and (g_h(i) == g_h(j) or j < n_sink)
    O_h = softmax(Q_h K_h^T / sqrt(d) + log visible_h) V_h

with M the model's mask (causal, padding). Every query in every group also sees the first ``n_sink`` tokens
("sink attention tokens"). ``realign=false`` with ``n_sink=0`` is LongLoRA's S2-Attn exactly (the rolled,
wrapped groups with causality in rolled order); ``realign=false`` with sinks adds the sinks to it.

Fast form: q, k, v are gathered into (B * groups, heads, G, D) blocks (the shifted heads' blocks offset by G/2,
dummy slots where a block runs past either end), the sink keys are concatenated in front of every block's keys,
and one fused SDPA call runs per half of the heads with a (B * groups, 1, G, n_sink + G) mask: memory O(T * G),
never T x T. A sink inside the query's group is masked there and seen through its own column (counted once). The
materialised form (:func:`reference_visible` + masked softmax) computes the same from the formula; it also serves
``output_attentions=True``.

Training-time only (``train_only=true``, the default): outside training, and for any call that is not a full
prefill (a KV cache), attention is the model's full causal softmax, as LongLoRA and SinkLoRA evaluate their models.
The kernel has no parameters, so it installs into a pretrained model (``train.init_from``), and train-lm removes it
after training: the saved model is a stock model.

Based on Zhang, "SinkLoRA: Enhanced Efficiency and Chat Capabilities for Long-Context Large Language Models"
(arXiv 2406.05678), reference code https://github.com/Dexter-GT-86/SinkLoRA (a LongLoRA fork), and Chen et al.,
"LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models" (ICLR 2024, arXiv 2309.12307), reference
code https://github.com/dvlab-research/LongLoRA (``llama_attn_replace.py``, ``forward_flashattn`` /
``forward_noflashattn``: ``group_size_ratio = 1/4``, heads ``num_heads // 2:`` shifted by ``-group_size // 2``).

Defaults: ratio 1/4 (LongLoRA's ``group_size_ratio``), n_sink 4 (StreamingLLM's ``start_size``, SinkLoRA's sink
count), realign true.

Deviations: SF-Attn's "segmentation and reassembly" is not in the published code; this is the reading in
docs/sinklora.md (no wrapped segment, groups in original order, sinks visible to every group). T not a multiple of
G is padded with masked slots (LongLoRA asserts divisibility). Grouped-query KV heads are repeated per query head
first (as LongLoRA does after ``repeat_kv``). No attention dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from components.attention import math as am
from components.base import ParamError, check_range
from components.kernels.base import AttentionKernel, KernelCall, KernelState, scores, softmax_attention
from registry import register


def group_size(t: int, ratio: float, fixed: int) -> int:
    """G for a sequence of ``t`` tokens: ``fixed`` when > 0, else int(t * ratio) (LongLoRA), made even, >= 2."""
    g = fixed if fixed > 0 else int(t * ratio)
    return max(2, g - g % 2)


def slot_positions(t: int, g: int, shifted: bool, realign: bool) -> torch.Tensor:
    """Position held by each slot of the grouped sequence (-1 = dummy), (n_groups * G,); slot s is in group s // G."""
    o = g // 2
    if shifted and realign:  # [0, G/2) alone, then G-blocks: slot s holds position s - G/2
        n = -(-(t + o) // g) * g
        pos = torch.arange(n) - o
    else:
        n = -(-t // g) * g
        pos = torch.arange(n)
        if shifted:  # LongLoRA: roll(-G/2) over the (padded) sequence, slot s holds position (s + G/2) mod n
            pos = (pos + o) % n
    return torch.where((pos >= 0) & (pos < t), pos, -1)


def key_valid(call: KernelCall, b: int, t: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool: keys that are not padding (the last query row of the mask sees every real key)."""
    if call.mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    return call.mask[:, 0, -1, :].expand(b, t)


def _base(call: KernelCall, device: torch.device) -> torch.Tensor:
    return call.visible(device)[:, 0]  # (B|1, T, T)


def reference_visible(call: KernelCall, b: int, h: int, t: int, g: int, n_sink: int, realign: bool,
                      device: torch.device) -> torch.Tensor:
    """The formula, materialised: (B, H, T, T) bool, True where query i of head h sees key j."""
    base = _base(call, device).expand(b, t, t)  # (B, T, T)
    i = torch.arange(t, device=device)
    sink = base & (i < n_sink)[None, None, :]  # (B, T, T)
    out = []
    for shifted in [False] * (h // 2) + [True] * (h - h // 2):
        slots = slot_positions(t, g, shifted, realign).to(device)
        slot_of = torch.empty(t, dtype=torch.long, device=device)
        real = slots >= 0
        slot_of[slots[real]] = torch.arange(slots.numel(), device=device)[real]  # position -> slot
        same = (slot_of[:, None] // g) == (slot_of[None, :] // g)  # (T, T)
        if realign:
            vis = base & same[None]
        else:  # LongLoRA: causal in rolled (slot) order, padding from the key side only
            order = slot_of[None, :] <= slot_of[:, None]
            vis = (same & order)[None] & key_valid(call, b, t, device)[:, None, :]
        out.append(vis | sink)
    return torch.stack(out, 1)  # (B, H, T, T)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: KernelCall, g: int, n_sink: int,
                      realign: bool) -> torch.Tensor:
    """Fast form: q (B, H, T, D), k/v (B, H, T, D) (KV heads already repeated) -> out (B, H, T, D)."""
    b, h, t, d = q.shape
    dev = q.device
    base = _base(call, dev).expand(b, t, t)  # (B, T, T) (a view; gathered below, never copied whole)
    valid = key_valid(call, b, t, dev)  # (B, T)
    ns = min(n_sink, t)
    out = torch.empty_like(q)
    for heads, shifted in ((slice(0, h // 2), False), (slice(h // 2, h), True)):
        if heads.start == heads.stop:
            continue
        slots = slot_positions(t, g, shifted, realign).to(dev)  # (n,)
        n = slots.numel()
        ng = n // g
        real = slots >= 0
        idx = slots.clamp_min(0)

        def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, h', T, D) -> (B * ng, h', G, D), dummies zero
            y = x[:, heads].index_select(2, idx) * real[None, None, :, None].to(x.dtype)
            return y.reshape(b, -1, ng, g, d).transpose(1, 2).reshape(b * ng, -1, g, d)

        qb, kb, vb = blocks(q), blocks(k), blocks(v)
        qpos, kpos = idx.view(ng, g, 1), idx.view(ng, 1, g)  # (ng, G, 1), (ng, 1, G)
        both = real.view(ng, g, 1) & real.view(ng, 1, g)
        if realign:
            inner = base[:, qpos, kpos] & both  # (B, ng, G, G)
        else:
            order = torch.ones(g, g, dtype=torch.bool, device=dev).tril()
            inner = (both & order)[None] & valid[:, kpos]  # (B, ng, G, G)
        inner = inner | (~real.view(ng, g, 1) & torch.eye(g, dtype=torch.bool, device=dev))[None]  # dummy rows
        slot_of = torch.empty(t, dtype=torch.long, device=dev)
        slot_of[slots[real]] = torch.arange(n, device=dev)[real]  # position -> slot
        if ns:  # a sink is seen through its own column only (inside the group it would count twice)
            inner = inner & ~(real & (idx < ns)).view(1, ng, 1, g)
            sink_m = base[:, qpos, torch.arange(ns, device=dev).view(1, 1, ns)] & real.view(ng, g, 1)[None]
            mask = torch.cat([sink_m, inner], -1)  # (B, ng, G, ns + G)
            ks = k[:, heads, :ns].unsqueeze(1).expand(b, ng, -1, ns, d).reshape(b * ng, -1, ns, d)
            vs = v[:, heads, :ns].unsqueeze(1).expand(b, ng, -1, ns, d).reshape(b * ng, -1, ns, d)
            kb, vb = torch.cat([ks, kb], 2), torch.cat([vs, vb], 2)  # (B * ng, h', ns + G, D)
        else:
            mask = inner
        ob, _ = am.sdpa(qb, kb, vb, mask.reshape(b * ng, 1, g, -1), False, call.scaling, False)  # (B*ng, h', G, D)
        ob = ob.reshape(b, ng, -1, g, d).transpose(1, 2).reshape(b, -1, n, d)  # (B, h', n, D) in slot order
        out[:, heads] = ob.index_select(2, slot_of)
    return out


def materialised_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: KernelCall, g: int,
                           n_sink: int, realign: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference form: (B, H, T, D) out and (B, H, T, T) weights from the materialised visibility."""
    b, h, t, _ = q.shape
    vis = reference_visible(call, b, h, t, g, n_sink, realign, q.device)  # (B, H, T, T)
    logits = scores(q, k, call).masked_fill(~vis, float("-inf"))  # (B, H, T, T)
    probs = am.softmax_rows(logits).nan_to_num(0.0)  # rows with nothing visible -> 0 (as SDPA)
    return torch.matmul(probs.to(v.dtype), v), probs.to(q.dtype)


@register("sf_attn", version="1.0.0", family="kernel", paper="arXiv:2406.05678",
          summary="SinkLoRA's SF-Attn / LongLoRA's S2-Attn: grouped shifted causal attention with sinks (training).")
@dataclass(frozen=True)
class SFAttn(AttentionKernel):
    """Shifted grouped attention with sink tokens, for long-context fine-tuning (full attention at inference).

    Parameters
    ----------
    ratio : float
        Group size as a fraction of the sequence length, G = int(ratio * T), in (0, 1]. Default 0.25.
    group : int
        Fixed group size in tokens (even); overrides ``ratio`` when > 0. Default 0.
    n_sink : int
        Leading tokens every query sees (causally), >= 0. Default 4.
    realign : bool
        SinkLoRA: shifted groups without wrap-around, in original order. False: LongLoRA's rolled groups.
        Default True.
    train_only : bool
        Grouped attention only in training mode; full attention otherwise. Default True.
    """

    ratio: float = 0.25
    group: int = 0
    n_sink: int = 4
    realign: bool = True
    train_only: bool = True
    stateless: ClassVar[bool] = True
    # a training-time kernel: train-lm uninstalls it and saves stock attention, which is what export-onnx exports
    onnx_exportable: ClassVar[bool] = False
    example: ClassVar[dict[str, str]] = {"ratio": "0.25", "n_sink": "4"}

    def __post_init__(self) -> None:
        check_range("ratio", self.ratio, 0.0, 1.0, lo_open=True)
        check_range("group", self.group, 0)
        check_range("n_sink", self.n_sink, 0)
        if self.group % 2:
            raise ParamError(f"group={self.group} must be even (the shifted heads move by group / 2)")

    def check_shape(self, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        if n_heads < 2:
            raise ParamError(f"sf_attn shifts half of the heads: the model has {n_heads} head")

    def grouped(self, call: KernelCall) -> bool:
        """Whether this call runs grouped attention (a full prefill, in training unless train_only is false)."""
        return (call.training or not self.train_only) and call.q_len == call.kv_len and call.q_len > 1

    def attend(self, state: KernelState, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               call: KernelCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.grouped(call):
            return softmax_attention(q, k, v, call)
        n_rep = q.shape[1] // k.shape[1]
        k, v = am.repeat_kv(k, n_rep), am.repeat_kv(v, n_rep)  # (B, H, T, D)
        g = group_size(call.q_len, self.ratio, self.group)
        if call.want_probs:
            return materialised_attention(q, k, v, call, g, self.n_sink, self.realign)
        return grouped_attention(q, k, v, call, g, self.n_sink, self.realign), None
