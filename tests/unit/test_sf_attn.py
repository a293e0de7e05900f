"""SF-Attn / S2-Attn (components/kernels/sf_attn.py): the fast grouped form against the materialised formula, the
formula against a loop over queries, S2-Attn against LongLoRA's roll-reshape-roll procedure, and the kernel inside
a tiny Llama (grouped in training, full attention in eval, removable)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import registry
from components.base import ParamError
from components.kernels.base import KernelCall, install, uninstall
from components.kernels.sf_attn import SFAttn, grouped_attention, materialised_attention
from tests.helpers.tiny import tiny_model


def padded_call(valid: torch.Tensor, scaling: float) -> KernelCall:
    """Causal + key-padding mask as transformers builds it: bool (B, 1, T, T)."""
    t = valid.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & valid[:, None, None, :]
    return KernelCall(layer=0, n_layers=1, q_len=t, kv_len=t, scaling=scaling, mask=mask, want_probs=False,
                      training=True)


def qkv(b: int, h: int, t: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=gen, dtype=torch.float64) for _ in range(3))


def loop_reference(q, k, v, valid, g, n_sink):
    """SF-Attn from its formula, one query at a time: key j is seen by query i of head h iff j <= i, j is not
    padding, and (g_h(i) == g_h(j) or j < n_sink), with g_h(i) = i // G (first H // 2 heads) or (i + G/2) // G."""
    b, h, t, _ = q.shape
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            off = g // 2 if hi >= h // 2 else 0
            for i in range(t):
                js = [j for j in range(i + 1) if valid[bi, j] and ((i + off) // g == (j + off) // g or j < n_sink)]
                if not js:
                    continue
                w = torch.softmax(torch.stack([q[bi, hi, i] @ k[bi, hi, j] for j in js]) * q.shape[-1] ** -0.5, 0)
                out[bi, hi, i] = (w[:, None] * v[bi, hi, js]).sum(0)
    return out


def longlora_s2(q, k, v, g):
    """LongLoRA's S2-Attn procedure (llama_attn_replace.py): roll the second half of the heads by -G/2, reshape into
    groups, causal attention per group, reshape back, roll those heads' outputs by +G/2."""
    b, h, t, d = q.shape

    def shift(x):
        x = x.clone()
        x[:, h // 2:] = x[:, h // 2:].roll(-g // 2, dims=2)
        return x.reshape(b, h, t // g, g, d).transpose(1, 2).reshape(b * (t // g), h, g, d)

    o = F.scaled_dot_product_attention(shift(q), shift(k), shift(v), is_causal=True)
    o = o.reshape(b, t // g, h, g, d).transpose(1, 2).reshape(b, h, t, d)
    o[:, h // 2:] = o[:, h // 2:].roll(g // 2, dims=2)
    return o


@pytest.mark.parametrize("realign", [True, False])
@pytest.mark.parametrize("t,g,n_sink", [(16, 4, 2), (13, 4, 3), (24, 8, 0), (10, 4, 4), (9, 16, 2)])
def test_fast_form_equals_materialised_with_padding(realign, t, g, n_sink):
    q, k, v = qkv(3, 5, t, 8, seed=t + g)
    valid = torch.ones(3, t, dtype=torch.bool)
    valid[1, :3] = False  # left padding
    valid[2, -4:] = False  # right padding
    call = padded_call(valid, 8 ** -0.5)
    fast = grouped_attention(q, k, v, call, g, n_sink, realign)
    ref, probs = materialised_attention(q, k, v, call, g, n_sink, realign)
    rows = valid[:, None, :, None]  # padded query rows are never read
    assert ((fast - ref) * rows).abs().max() < 1e-12
    assert torch.allclose(probs.sum(-1)[valid[:, None].expand(-1, 5, -1) & (torch.arange(t) >= 3)],
                          torch.ones((), dtype=probs.dtype))


@pytest.mark.parametrize("t,g,n_sink", [(16, 4, 2), (13, 4, 3), (12, 6, 0)])
def test_sf_attn_matches_a_loop_over_its_formula(t, g, n_sink):
    q, k, v = qkv(2, 4, t, 8, seed=7)
    valid = torch.ones(2, t, dtype=torch.bool)
    valid[1, :2] = False
    call = padded_call(valid, 8 ** -0.5)
    ref = loop_reference(q, k, v, valid, g, n_sink)
    fast = grouped_attention(q, k, v, call, g, n_sink, realign=True)
    assert ((fast - ref) * valid[:, None, :, None]).abs().max() < 1e-12


def test_realign_false_without_sinks_is_longlora_s2_attn_and_leaks_the_future():
    q, k, v = qkv(2, 5, 16, 8, seed=3)  # odd H: heads 2..4 are shifted (num_heads // 2:)
    call = KernelCall(layer=0, n_layers=1, q_len=16, kv_len=16, scaling=8 ** -0.5, mask=None, want_probs=False,
                      training=True)
    assert (grouped_attention(q, k, v, call, 4, 0, realign=False) - longlora_s2(q, k, v, 4)).abs().max() < 1e-12
    # LongLoRA's wrapped group: the first G/2 tokens of the shifted heads see the last G/2 tokens
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 1.0
    v2[:, :, -1] += 1.0
    rolled = grouped_attention(q, k2, v2, call, 4, 0, realign=False) - grouped_attention(q, k, v, call, 4, 0, False)
    assert rolled[:, 2:, 0].abs().min() > 1e-3 and rolled[:, :2, :-1].abs().max() == 0  # position 0, shifted heads
    realigned = grouped_attention(q, k2, v2, call, 4, 2, True) - grouped_attention(q, k, v, call, 4, 2, True)
    assert realigned[:, :, :-1].abs().max() == 0  # SF-Attn is causal: nothing before the last token changes


def test_groups_are_isolated_except_for_sinks():
    q, k, v = qkv(1, 4, 16, 8, seed=5)  # heads 0, 1 unshifted; 2, 3 shifted
    call = KernelCall(layer=0, n_layers=1, q_len=16, kv_len=16, scaling=8 ** -0.5, mask=None, want_probs=False,
                      training=True)
    base = grouped_attention(q, k, v, call, 4, 2, True)
    v2 = v.clone()
    v2[:, :, 5] += 1.0  # position 5: group 1 of unshifted heads, group [2, 6) of shifted heads
    diff = (grouped_attention(q, k, v2, call, 4, 2, True) - base).abs().amax(-1)[0]  # (H, T)
    assert diff[:2, 5:8].min() > 0 and diff[:2, 8:].max() == 0  # unshifted: its group only
    assert diff[2:, 5].min() > 0 and diff[2:, 6:].max() == 0  # shifted: [2, 6) ends at 5
    v3 = v.clone()
    v3[:, :, 1] += 1.0  # a sink: every later query sees it
    assert (grouped_attention(q, k, v3, call, 4, 2, True) - base).abs().amax(-1)[0, :, 1:].min() > 0


def test_kernel_in_a_tiny_llama_groups_in_training_only_and_uninstalls():
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, :5] = 0
    stock = tiny_model("llama_gqa")
    with torch.no_grad():
        want = stock(input_ids=ids, attention_mask=mask).logits
    model = install(tiny_model("llama_gqa"), registry.get("sf_attn", family="kernel").create({"group": 8}))
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask).logits - want).abs().max() < 1e-5  # eval: full attention
        model.train()
        fast = model(input_ids=ids, attention_mask=mask).logits
        slow = model(input_ids=ids, attention_mask=mask, output_attentions=True).logits  # materialised form
    assert (fast - want).abs().max() > 1e-3
    real = mask.bool()[..., None]
    assert ((fast - slow) * real).abs().max() < 1e-4
    uninstall(model.eval())
    assert model.config._attn_implementation == "sdpa" and not hasattr(model.config, "attnflow_kernel")
    assert not any("attnflow" in n for n, _ in model.named_modules())
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask).logits - want).abs().max() < 1e-5


def test_parameters_are_validated():
    with pytest.raises(ParamError, match="ratio"):
        SFAttn(ratio=0.0)
    with pytest.raises(ParamError, match="must be even"):
        SFAttn(group=5)
    with pytest.raises(ParamError, match="n_sink"):
        SFAttn(n_sink=-1)
    with pytest.raises(ParamError, match="shifts half of the heads"):
        install(tiny_model(heads=1, kv_heads=1), SFAttn())
