"""Kernel arithmetic against independently written references of the papers' formulas (no models)."""

from __future__ import annotations

import math

import pytest
import torch

import registry
from components.base import ParamError
from components.kernels.base import KernelCall, KernelState
from components.kernels.complex import rephase
from components.kernels.lightning import alibi_slopes, layer_slopes, lightning_tiled, linear_attention
from components.kernels.moh import balance_loss, route


def call(t: int, s: int | None = None, want_probs: bool = False) -> KernelCall:
    return KernelCall(layer=0, n_layers=1, q_len=t, kv_len=s or t, scaling=0.25, mask=None, want_probs=want_probs,
                      training=False)


def naive_decayed(q, k, v, slopes):
    """o_i = sum_{j <= i} lambda^(i-j) (q_i . k_j) v_j, written as a loop over queries."""
    b, h, t, _ = q.shape
    out = torch.zeros(b, h, t, v.shape[-1], dtype=q.dtype)
    for i in range(t):
        decay = torch.exp(-slopes[:, None] * torch.arange(i, -1, -1, dtype=q.dtype)[None, :])  # (H, i+1)
        w = torch.einsum("bhd,bhjd->bhj", q[:, :, i], k[:, :, : i + 1]) * decay  # (B, H, i+1)
        out[:, :, i] = torch.einsum("bhj,bhjd->bhd", w, v[:, :, : i + 1])
    return out


@pytest.mark.parametrize("t", [64, 150, 7])
def test_lightning_tiled_equals_naive_decayed_attention(t):
    gen = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 4, t, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    slopes = torch.tensor(alibi_slopes(4), dtype=torch.float64)
    ref = naive_decayed(q, k, v, slopes)
    assert (lightning_tiled(q, k, v, slopes, 64) - ref).abs().max() < 1e-10  # t = 150: not a multiple of the block
    assert (lightning_tiled(q, k, v, slopes, 16) - ref).abs().max() < 1e-10
    assert (linear_attention(q, k, v, slopes) - ref).abs().max() < 1e-10
    q32, k32, v32 = q.float() / 3, k.float() / 3, v.float()
    assert (lightning_tiled(q32, k32, v32, slopes.float(), 64) - ref.float() / 9).abs().max() < 1e-4


def test_lightning_decode_rows_match_the_last_queries():
    q, k, v = torch.randn(3, 1, 2, 10, 4).unbind(0)
    slopes = torch.tensor([0.3, 0.05])
    full = linear_attention(q, k, v, slopes)
    assert torch.allclose(linear_attention(q[:, :, -2:], k, v, slopes), full[:, :, -2:], atol=1e-6)


def test_alibi_slopes_and_tnl_layer_schedule():
    assert alibi_slopes(8) == pytest.approx([2 ** -(i + 1) for i in range(8)])
    assert alibi_slopes(4) == pytest.approx([2 ** -(2 * (i + 1)) for i in range(4)])
    assert alibi_slopes(6) == pytest.approx(alibi_slopes(4) + alibi_slopes(8)[0::2][:2])
    first, last = layer_slopes(4, 0, 3, True), layer_slopes(4, 2, 3, True)
    assert torch.allclose(first, torch.tensor(alibi_slopes(4)) * (1 + 1e-5))
    assert torch.allclose(last, torch.tensor(alibi_slopes(4)) * 1e-5)  # the last layer barely decays


def rope(x, pos, theta=10000.0):
    """Half-split RoPE written out: pairs (i, i + D/2) rotated by pos * theta^(-2i/D)."""
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d // 2, dtype=x.dtype) * 2 / d)  # (D/2,)
    ang = pos[:, None].to(x.dtype) * freq[None]  # (T, D/2)
    re, im = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([re * ang.cos() - im * ang.sin(), re * ang.sin() + im * ang.cos()], dim=-1)


def test_cmha_rephasing_plus_rope_equals_the_cmha_score_formula():
    gen = torch.Generator().manual_seed(0)
    t, d = 9, 8
    q, k = torch.randn(2, t, d, generator=gen, dtype=torch.float64).unbind(0)  # one head
    delta = torch.randn(1, d // 2, generator=gen, dtype=torch.float64)
    bias = torch.randn(1, d // 2, generator=gen, dtype=torch.float64)
    # reference: s_mn = sum_c |q_c||k_c| cos(delta_c (phi_q - phi_k) + b_c + (m - n) g_c) / sqrt(d)
    rq = torch.view_as_complex(torch.stack([q[:, :4], q[:, 4:]], -1).contiguous()).abs()
    rk = torch.view_as_complex(torch.stack([k[:, :4], k[:, 4:]], -1).contiguous()).abs()
    pq, pk = torch.atan2(q[:, 4:], q[:, :4]), torch.atan2(k[:, 4:], k[:, :4])
    g = 10000.0 ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    m = torch.arange(t, dtype=torch.float64)
    phase = delta[0] * (pq[:, None] - pk[None]) + bias[0] + (m[:, None] - m[None])[..., None] * g
    ref = (rq[:, None] * rk[None] * torch.cos(phase)).sum(-1) / math.sqrt(d)  # (T, T)
    qp = rope(rephase(q[None, :, None], delta, bias)[0, :, 0], m)
    kp = rope(rephase(k[None, :, None], delta, None)[0, :, 0], m)
    assert (qp @ kp.T / math.sqrt(d) - ref).abs().max() < 1e-8
    ones = torch.ones_like(delta)
    assert (rephase(q[None, :, None], ones, torch.zeros_like(bias))[0, :, 0] - q).abs().max() < 1e-8  # delta=1: q


def test_sigmoid_kernels_match_their_formula():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 6, 8, generator=gen)
    k, v = torch.randn(2, 2, 2, 6, 8, generator=gen).unbind(0)  # GQA: 2 KV heads
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    a = torch.sigmoid(q @ kk.transpose(-1, -2) * 0.25) * torch.ones(6, 6).tril()  # (B, H, T, T)
    for normalize, weights in ((False, a), (True, a / (a.sum(-1, keepdim=True) + 1e-8))):
        kernel = registry.get("sigmoid", family="kernel").create({"normalize": normalize})
        out, probs = kernel.attend(None, q, k, v, call(6, want_probs=True))
        assert (out - weights @ vv).abs().max() < 1e-5
        assert (probs - weights).abs().max() < 1e-6
    assert not torch.allclose(a.sum(-1), torch.ones(2, 4, 6))  # without normalisation rows need not sum to 1


def test_moh_routing_invariants():
    gen = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(5, 7, 6, generator=gen), -1)  # (B, T, E=6 routed heads)
    gates, chosen = route(probs, 4)
    assert (chosen.sum(-1) == 4).all() and ((gates > 0) == (chosen > 0)).all()  # exactly top-k active
    assert torch.allclose(gates.sum(-1), torch.full((5, 7), 4.0))  # renormalised over the top-k, times k
    top = probs.topk(4, -1).indices
    assert torch.equal(chosen.gather(-1, top), torch.ones_like(top, dtype=chosen.dtype))
    kernel = registry.get("moh", family="kernel").create({"shared": 2, "top_k": 4})
    state = KernelState(kernel, 0, 1, n_heads=8, n_kv_heads=8, head_dim=4, hidden=16)
    kernel.make_state(state)
    g = kernel.gates(state, torch.randn(3, 5, 16, generator=gen), training=True)  # (B, T, H)
    active = g > 0
    assert (active[..., :2].all()) and (active[..., 2:].sum(-1) == 4).all()
    alpha1, alpha2 = g[..., :2].sum(-1) / 2, g[..., 2:].sum(-1) / 4
    assert torch.allclose(alpha1 + alpha2, torch.full_like(alpha1, 2.0), atol=1e-6)  # mean active gate is 1
    assert state.pop_aux() is not None and state.pop_aux() is None


def test_moh_load_balance_loss_hand_cases():
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    chosen = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # P = (0.85, 0.15), f = (1, 0): E^2 * mean(P f) = 4 * 0.425
    assert balance_loss(p, chosen).item() == pytest.approx(1.7)
    # perfectly balanced top-2 of 6 over 12 tokens: P_i = 1/6, f_i = 2/6, so the loss is k = 2
    uniform = torch.full((12, 6), 1 / 6)
    balanced = torch.zeros(12, 6)
    for t in range(12):
        balanced[t, (t % 3) * 2: (t % 3) * 2 + 2] = 1.0
    assert balance_loss(uniform, balanced).item() == pytest.approx(2.0)
    skewed = torch.zeros(12, 6)
    skewed[:, :2] = 1.0
    assert balance_loss(torch.softmax(skewed * 3, -1), skewed).item() > 2.0  # imbalance costs more


def test_kernel_parameters_are_validated():
    with pytest.raises(ParamError, match="lightning.block=0"):
        registry.get("lightning").create({"block": "0"})
    with pytest.raises(ParamError, match="moh.top_k=7 must be in \\[1, 6\\]"):
        registry.get("moh").create({"shared": 2, "top_k": 7}).check_shape(2, 8, 8, 16)
    with pytest.raises(ParamError, match="head dimension 5 must be even"):
        registry.get("complex").create({}).check_shape(2, 4, 4, 5)
    with pytest.raises(ParamError, match="'reference', 'rope'"):
        registry.get("complex").create({"init": "one"})
