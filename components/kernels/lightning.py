"""Lightning attention (TransNormerLLM): decayed linear attention computed in blocks, in a TNL-style layer.

Causal linear attention with a per-head exponential decay, no softmax and no normaliser:

    o_i = sum_{j <= i} lambda_h^(i - j) (q_i . k_j) v_j,      i.e.  O = [(Q K^T) * M] V,  M_ij = lambda^(i-j) (i >= j)

lambda_h = exp(-s_h) with ALiBi slopes s_h = (2^(-8/H))^h, h = 1..H (interleaved for H not a power of two), and
TNL's layer schedule s_h^(l) = s_h * (1 - l/(L-1) + 1e-5) (the last layer barely decays). Lightning attention
computes it in blocks of ``block`` positions, linear in the sequence length: for block t with local positions i, j

    O_intra = [(Q_t K_t^T) * D] V_t,      D_ij = lambda^(i-j) (i >= j)      (masked "left product" inside the block)
    O_inter = (Q_t KV) * lambda^i                                           ("right product" with the state)
    KV     <- lambda^B KV + (K_t * lambda^(B-j))^T V_t                      (state carried to the next block)

The TNL token mixer around it (examples/module/tnl_attn.py): q, k, v = SiLU(W x); O = LayerNorm(O) over the
concatenated heads; O *= sigmoid(W2 W1 x) (a rank-d_head output gate); then W_o.

Based on Qin et al., "Various Lengths, Constant Speed: Efficient Language Modeling with Lightning Attention"
(ICML 2024, arXiv 2405.17381) and "TransNormerLLM" (arXiv 2307.14995). Reference code:
https://github.com/OpenNLPLab/lightning-attention (``lightning_attn/ops/triton/lightning_attn2.py``, naive
``ops/torch/linear_attention.py``, slopes ``utils/utils.py::_build_slope_tensor``, ``examples/module/tnl_attn.py``).

Deviations from the reference code: a pure-PyTorch tiling (no Triton kernel; the value dimension is not split);
the Llama layer keeps RoPE on q and k (applied after the SiLU, making it a decayed linear attention with rotary
relative positions, as in RetNet) where TNL uses LRPE; the KV state is kept in the input dtype (float32 in
training here, the Triton kernel accumulates in fp32). With padding, a KV cache (q_len != kv_len) or under
torch.export the equal quadratic form [(Q K^T) * M] V is used (one graph for every length); the tiled form runs
for plain causal training and prefill. ``output_attentions`` returns no weights (there is no normalised map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from components.attention import math as am
from components.base import check_range
from components.kernels.base import AttentionKernel, KernelCall, KernelState
from registry import register


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi slopes: (2^(-8/n))^h for h = 1..n when n is a power of two, else interleaved from 2n."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def layer_slopes(n_heads: int, layer: int, n_layers: int, schedule: bool) -> torch.Tensor:
    """(H,) decay rates s_h of one layer (TNL schedule: the last layer nearly does not decay)."""
    slopes = torch.tensor(alibi_slopes(n_heads), dtype=torch.float32)  # (H,)
    if schedule and n_layers > 1:
        slopes = slopes * (1 - layer / (n_layers - 1) + 1e-5)
    return slopes


def decay_mask(slopes: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """(H, q, kv): lambda^(i - j) for visible keys (j <= i + kv - q), else 0."""
    qpos = torch.arange(q_len, device=slopes.device)[:, None] + (kv_len - q_len)
    dist = (qpos - torch.arange(kv_len, device=slopes.device)[None, :]).to(slopes.dtype)  # (q, kv)
    return torch.exp(-slopes[:, None, None] * dist.clamp_min(0)) * (dist >= 0)  # (H, q, kv)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
                     visible: torch.Tensor | None = None) -> torch.Tensor:
    """Quadratic form O = [(Q K^T) * M] V. q (B, H, T, D), k/v (B, H, S, D), slopes (H,) -> (B, H, T, D)."""
    m = decay_mask(slopes.to(q.dtype), q.shape[2], k.shape[2])[None]  # (1, H, T, S)
    if visible is not None:
        m = m * visible.to(q.dtype)
    return torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * m, v)


def lightning_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
                    block: int) -> torch.Tensor:
    """Blocked causal form, linear in T. q, k, v (B, H, T, D) with the same T; slopes (H,) -> (B, H, T, D)."""
    n = q.shape[2]
    s = slopes.to(q.dtype)[None, :, None, None]  # (1, H, 1, 1)
    idx = torch.arange(block, device=q.device, dtype=q.dtype)
    diff = idx[:, None] - idx[None, :]  # (blk, blk)
    intra = torch.exp(-s * diff.clamp_min(0)) * (diff >= 0)  # (1, H, blk, blk)
    q_decay = torch.exp(-s * idx[:, None])  # (1, H, blk, 1): lambda^i
    k_decay = torch.exp(-s * (block - idx)[:, None])  # (1, H, blk, 1): lambda^(B - j)
    block_decay = torch.exp(-s * block)  # (1, H, 1, 1)
    kv = q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])  # (B, H, D, Dv)
    outs = []
    for start in range(0, n, block):
        end = min(start + block, n)
        m = end - start
        qi, ki, vi = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]  # (B, H, m, D)
        o_intra = torch.matmul(torch.matmul(qi, ki.transpose(-1, -2)) * intra[..., :m, :m], vi)  # (B, H, m, Dv)
        o_inter = torch.matmul(qi, kv) * q_decay[:, :, :m]  # (B, H, m, Dv)
        outs.append(o_intra + o_inter)
        if end < n:
            kv = block_decay * kv + torch.matmul((ki * k_decay[:, :, :m]).transpose(-1, -2), vi)  # (B, H, D, Dv)
    return torch.cat(outs, dim=2)


@register("lightning", version="1.0.0", family="kernel", paper="arXiv:2405.17381",
          summary="Lightning attention: decayed linear attention in blocks (ALiBi slopes, TNL schedule, norm, gate).")
@dataclass(frozen=True)
class Lightning(AttentionKernel):
    """Lightning attention in a TNL-style token mixer.

    Parameters
    ----------
    block : int
        Block size B of the tiling. Default 64.
    layer_schedule : bool
        Scale the slopes by (1 - l/(L-1) + 1e-5) per layer l (TNL). Default True.
    activation : {"silu", "none"}
        Feature map on q, k and v before RoPE (TNL: SiLU). Default ``silu``.
    output_norm : bool
        LayerNorm over the concatenated head outputs (TNL). Default True.
    output_gate : bool
        Multiply by sigmoid(W2 W1 x), W1: hidden -> head_dim, W2: head_dim -> hidden (TNL). Default True.
    """

    block: int = 64
    layer_schedule: bool = True
    activation: Literal["silu", "none"] = "silu"
    output_norm: bool = True
    output_gate: bool = True

    example: ClassVar[dict[str, str]] = {"block": "16", "output_gate": "false"}

    def __post_init__(self) -> None:
        check_range("lightning.block", self.block, 1)

    @property
    def transforms(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("q", "k", "v") if self.activation == "silu" else ()

    @property
    def needs_input(self) -> bool:  # type: ignore[override]
        return self.output_gate

    def make_state(self, state: KernelState) -> None:
        width = state.n_heads * state.head_dim
        slopes = layer_slopes(state.n_heads, state.layer, state.n_layers, self.layer_schedule)
        state.register_buffer("slopes", slopes, persistent=False)  # (H,)
        if self.output_norm:
            state.norm = nn.LayerNorm(width)
        if self.output_gate:
            state.gate_down = nn.Linear(state.hidden, state.head_dim, bias=False)
            state.gate_up = nn.Linear(state.head_dim, width, bias=False)

    def transform(self, state: KernelState, kind: str, y: torch.Tensor) -> torch.Tensor:
        return F.silu(y)

    def attend(self, state: KernelState, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               call: KernelCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        n_rep = q.shape[1] // k.shape[1]
        k, v = am.repeat_kv(k, n_rep), am.repeat_kv(v, n_rep)  # (B, H, S, D)
        if call.mask is None and call.q_len == call.kv_len and not am.exporting():
            return lightning_tiled(q, k, v, state.slopes, self.block), None
        visible = call.mask if call.mask is not None else None
        return linear_attention(q, k, v, state.slopes, visible), None

    def finish(self, state: KernelState, out: torch.Tensor, call: KernelCall) -> torch.Tensor:
        if not (self.output_norm or self.output_gate):
            return out
        b, h, t, d = out.shape
        flat = out.transpose(1, 2).reshape(b, t, h * d)  # (B, T, H*D)
        if self.output_norm:
            flat = state.norm(flat)
        if self.output_gate:
            flat = flat * torch.sigmoid(state.gate_up(state.gate_down(state.x)))  # (B, T, H*D)
        return flat.view(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
