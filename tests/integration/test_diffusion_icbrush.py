"""In-Context Brush on a tiny random SD3Transformer2DModel: both paths equal a float64 reference written from the
reference code's formulas (feature shifting of the query half + head reweighting), zero strengths equal the plain
model and the plain flow sampler bit for bit, bad parameters fail before anything changes."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.attention_processor import JointAttnProcessor2_0

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.flow_runner import sample_flow
from components.diffusion.icbrush import InContextBrush
from tests.helpers.tiny_diffusion import tiny_unet
from tests.integration.test_diffusion_joint import sd3_inputs, tiny_sd3


def _float64_reference(lam, beta):
    m64 = tiny_sd3(torch.float64)

    class Ref(JointAttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
            b, n = hidden_states.shape[:2]

            def split(x):
                return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
            q = torch.cat([split(attn.to_q(hidden_states)), split(attn.add_q_proj(encoder_hidden_states))], 2)
            k = torch.cat([split(attn.to_k(hidden_states)), split(attn.add_k_proj(encoder_hidden_states))], 2)
            v = torch.cat([split(attn.to_v(hidden_states)), split(attn.add_v_proj(encoder_hidden_states))], 2)
            p = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1)  # (B, H, N + L, N + L)
            o = p @ v
            half = n // 2  # 4x4 patch grid: rows 0-1 demo (tokens 0..7), rows 2-3 query (tokens 8..15)
            demo, query, text = slice(0, half), slice(half, n), slice(n, None)
            o[:, :, query] += lam * (p[:, :, query, demo] @ v[:, :, demo] + p[:, :, query, text] @ v[:, :, text])
            scores = p[:, :, query, text].sum((-2, -1))  # (B, H)
            lo, hi = scores.min(1, keepdim=True).values, scores.max(1, keepdim=True).values
            w = 1 + beta * (scores - lo) / (hi - lo + torch.finfo(torch.float64).eps)
            o = o * w[:, :, None, None]
            o = o.transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])
            img, ctx = o[:, :n], o[:, n:]
            ctx = None if attn.context_pre_only else attn.to_add_out(ctx)
            return attn.to_out[1](attn.to_out[0](img)), ctx

    m64.set_attn_processor(Ref())
    with torch.no_grad():
        return m64(**sd3_inputs(torch.float64)).sample


@pytest.mark.parametrize("lam,beta", [(0.3, 0.2), (0.0, 0.5), (0.7, 0.0)])
def test_icbrush_both_paths_equal_float64_reference(lam, beta):
    model = tiny_sd3()
    comp = InContextBrush(shift=lam, reweight=beta)
    outs = {}
    with torch.no_grad():
        plain = model(**sd3_inputs()).sample
        for force in (None, "materialize"):
            with applied(model, comp, force=force):
                outs[force] = model(**sd3_inputs()).sample
    ref = _float64_reference(lam, beta)
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    assert (outs[None] - plain).abs().max() > 1e-4


def _texts(b=1):
    g = torch.Generator().manual_seed(8)
    return (torch.randn(b, 6, 8, generator=g), torch.randn(b, 8, generator=g), torch.randn(1, 6, 8, generator=g),
            torch.randn(1, 8, generator=g))


def test_icbrush_zero_strengths_equal_plain_flow_sampler_bit_for_bit():
    model = tiny_sd3()
    cond, pooled, uncond, pooled_u = _texts(2)
    kw = dict(uncond=uncond, pooled_uncond=pooled_u, cfg_scale=3.0, steps=3, seed=5)
    plain = sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, **kw)
    zero = sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled,
                       components=[InContextBrush(shift=0.0, reweight=0.0)], **kw)
    assert torch.equal(zero, plain)
    brushed = sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, components=[InContextBrush()], **kw)
    assert (brushed - plain).abs().max() > 1e-4
    assert all(type(p).__name__ == "JointAttnProcessor2_0" for p in model.attn_processors.values())


def test_icbrush_bad_parameters_fail_before_anything_changes():
    with pytest.raises(ParamError, match="icbrush.shift"):
        InContextBrush(shift=-0.1)
    with pytest.raises(ParamError, match="icbrush.reweight"):
        InContextBrush(reweight=-1.0)
    model = tiny_sd3()
    before = dict(model.attn_processors)
    with pytest.raises(ValueError, match="icbrush.layers"):
        with applied(model, InContextBrush(layers=(7,))):
            pass
    assert all(model.attn_processors[k] is before[k] for k in before)
    unet = tiny_unet()
    with pytest.raises(ValueError, match="icbrush edits joint"):
        with applied(unet, InContextBrush()):
            pass
