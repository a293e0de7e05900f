"""PAIntA (HD-Painter) on a tiny random UNet: both paths equal a float64 reference written from the paper's formula
(block-level, as the reference code patches the transformer block), strength 0 equals the plain sampler bit for
bit, bad parameters fail before anything changes, and the scope removes its hooks."""

from __future__ import annotations

import math
import types

import pytest
import torch
from diffusers import DDIMScheduler

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.painta import PAIntA
from components.diffusion.runner import encode_prompts, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet

BOX = (0.25, 0.25, 0.75, 0.75)


def _heads(t, attn):
    b, n, _ = t.shape
    return t.view(b, n, attn.heads, -1).transpose(1, 2)  # (B, H, N, d)


def _smooth_ref(s, h, w):
    """(h*w,) -> (h*w,): 3x3 weights exp(-(d-1)^2) per axis (sigma 0.5), normalised, zero outside the grid."""
    g = [math.exp(-1.0), 1.0, math.exp(-1.0)]
    z = sum(g) ** 2
    grid = s.reshape(h, w)
    out = torch.zeros_like(grid)
    for y in range(h):
        for x in range(w):
            acc = 0.0
            for dy in range(3):
                for dx in range(3):
                    yy, xx = y + dy - 1, x + dx - 1
                    if 0 <= yy < h and 0 <= xx < w:
                        acc = acc + g[dy] * g[dx] / z * grid[yy, xx]
            out[y, x] = acc
    return out.reshape(-1)


def _region_ref(h, mask):
    """(h*h,) bool region on an h x h grid: the box by cell centres, or the 8x8 tensor mask averaged in blocks."""
    if mask is None:
        c = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        inside = (c >= 0.25) & (c < 0.75)
        return (inside[:, None] & inside[None, :]).reshape(-1)
    f = 8 // h
    return (mask.double().reshape(h, f, h, f).mean((1, 3)) > 0.5).reshape(-1)


def _reference(x, enc, tokens, factors, strength, mask=None):
    """float64 UNet whose transformer blocks run PAIntA as written in the paper (c_ij * raw scores)."""
    unet = tiny_unet(torch.float64)

    def forward(block, hidden, attention_mask=None, encoder_hidden_states=None, **kw):
        a1, a2, ctx = block.attn1, block.attn2, encoder_hidden_states
        b, t, _ = hidden.shape
        n1 = block.norm1(hidden)
        q, k, v = _heads(a1.to_q(n1), a1), _heads(a1.to_k(n1), a1), _heads(a1.to_v(n1), a1)
        raw = q @ k.transpose(-1, -2) * a1.scale  # (B, H, T, T)

        def proj(p):
            return a1.to_out[1](a1.to_out[0]((p @ v).transpose(1, 2).reshape(b, t, -1)))

        y = proj(torch.softmax(raw, -1))
        side = int(math.isqrt(t))
        if 8 // side in factors:
            # conditional row (index 1) only; the unconditional row 0 reuses it
            p2 = torch.softmax(_heads(a2.to_q(block.norm2(hidden + y)), a2)
                               @ _heads(a2.to_k(ctx), a2).transpose(-1, -2) * a2.scale, -1).mean(1)  # (B, T, L)
            s_sum = p2[1][:, tokens].sum(-1)  # (T,)
            sm = _smooth_ref(s_sum, side, side)
            med = sm.sort().values[(sm.numel() - 1) // 2]
            s = ((sm - med) / sm.max()).clamp(0, 1)
            region = _region_ref(side, mask)
            c = torch.ones(t, t, dtype=torch.float64)
            for i in range(t):
                for j in range(t):
                    if region[i] and not region[j]:
                        c[i, j] = 1 - strength * (1 - s[j])
            y = proj(torch.softmax(c * raw, -1))
        hidden = hidden + y
        hidden = hidden + a2(block.norm2(hidden), encoder_hidden_states=ctx)
        return hidden + block.ff(block.norm3(hidden))

    for m in unet.modules():
        if type(m).__name__ == "BasicTransformerBlock":
            m.forward = types.MethodType(forward, m)
    with torch.no_grad():
        return unet(x.double(), 5, encoder_hidden_states=enc.double()).sample


def _setup():
    tok, te = tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    return torch.cat([x, x]), torch.cat([uncond, cond]), [[], words[0]]


@pytest.mark.parametrize("strength,factors,use_mask", [(1.0, (1, 2), False), (0.6, (2,), False),
                                                        (1.0, (1,), True)])
def test_painta_both_paths_equal_float64_reference(strength, factors, use_mask):
    unet = tiny_unet()
    x, enc, rows = _setup()
    mask = None
    comp = PAIntA(strength=strength, box=BOX, factors=factors, until=1.0)
    if use_mask:
        mask = torch.zeros(8, 8)
        mask[1:6, 3:8] = 1
        comp = PAIntA(strength=strength, factors=factors, until=1.0).with_mask(mask)
    outs = {}
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        for force in (None, "materialize"):
            with applied(unet, comp, force=force) as session:
                session.runtime.set_word_tokens(rows)
                outs[force] = unet(x, 5, encoder_hidden_states=enc).sample
    # BOS 0, "a" 1, "red" 2, "circle" 3, end-of-text 4
    ref = _reference(x, enc, [1, 2, 3, 4], factors, strength, mask)
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(outs[None], outs["materialize"], rtol=0, atol=2e-5)
    assert (outs[None] - plain).abs().max() > 1e-4  # the edit is not a no-op on these inputs


def test_painta_strength_zero_and_empty_window_equal_plain_sampler_bit_for_bit():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle", "a blue square"])
    uncond, _ = encode_prompts(tok, te, [""])
    kw = dict(uncond=uncond, cfg_scale=3.0, word_tokens=words, steps=3, seed=2)
    plain = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, **kw)
    for comp in (PAIntA(strength=0.0, box=BOX, factors=(1, 2)), PAIntA(box=BOX, factors=(1, 2), until=0.0)):
        assert torch.equal(sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[comp], **kw), plain)
    edited = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[PAIntA(box=BOX, factors=(1, 2))],
                    **kw)
    assert (edited - plain).abs().max() > 1e-5
    assert not any(m._forward_pre_hooks for m in unet.modules())  # the block hooks are gone


def test_painta_bad_parameters_fail_before_anything_changes():
    with pytest.raises(ParamError, match="painta.box"):
        PAIntA(box=(0.5, 0.2, 0.4, 0.9))
    with pytest.raises(ParamError, match="painta.strength"):
        PAIntA(box=BOX, strength=1.5)
    with pytest.raises(ParamError, match="0 \\(keep\\) or 1"):
        PAIntA(box=BOX).with_mask(torch.full((8, 8), 0.5))
    from tests.integration.test_diffusion_joint import tiny_sd3
    model = tiny_sd3()
    before = dict(model.attn_processors)
    with pytest.raises(ParamError, match="region to fill"):
        with applied(model, PAIntA()):
            pass
    with pytest.raises(ValueError, match="painta edits the self-attention"):
        with applied(model, PAIntA(box=BOX)):
            pass
    assert all(model.attn_processors[k] is before[k] for k in before) and not model._forward_pre_hooks


def test_painta_without_word_positions_names_the_problem():
    unet = tiny_unet()
    x, enc, _ = _setup()
    with torch.no_grad(), applied(unet, PAIntA(box=BOX, factors=(2,))):
        with pytest.raises(ValueError, match="painta reads the prompt's word positions"):
            unet(x, 5, encoder_hidden_states=enc)
    assert not any(m._forward_pre_hooks for m in unet.modules())
