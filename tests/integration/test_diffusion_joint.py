"""The joint (SD3 / MMDiT) processor on a tiny random SD3Transformer2DModel: stock parity bit for bit, scoping,
call info (image tokens, patch grid, timestep), SoftPAG on the joint map against a float64 reference."""

from __future__ import annotations

import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

from components.diffusion import softpag as sp
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import applied
from components.diffusion.softpag import SoftPAG
from components.heads import HeadSet


def tiny_sd3(dtype=torch.float32) -> SD3Transformer2DModel:
    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4,
                                  num_attention_heads=2, joint_attention_dim=8, caption_projection_dim=8,
                                  pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def sd3_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(2, 6, 8, generator=g).to(dtype),
                pooled_projections=torch.randn(2, 8, generator=g).to(dtype), timestep=torch.tensor([3, 3]))


class _Recorder(DiffusionComponent):
    def __init__(self):
        object.__setattr__(self, "calls", [])

    def edit_output(self, call, out):
        self.calls.append(call)
        return out


def test_joint_baseline_equals_stock_bit_for_bit_and_restores():
    model = tiny_sd3()
    before = dict(model.attn_processors)
    assert before and all(isinstance(p, JointAttnProcessor2_0) for p in before.values())
    rec = _Recorder()
    with torch.no_grad():
        ref = model(**sd3_inputs()).sample
        with applied(model, rec):
            out = model(**sd3_inputs()).sample
    assert torch.equal(out, ref)
    assert all(model.attn_processors[k] is before[k] for k in before) and not model._forward_pre_hooks
    call = rec.calls[0]
    assert call.n_image == 16 and call.spatial == (4, 4) and call.kv_len == 16 + 6 and not call.is_cross
    assert call.timestep.tolist() == [3, 3] and call.n_heads == 2


def _float64_joint(model, strength, heads):
    m64 = tiny_sd3(torch.float64)

    class Ref(JointAttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
            b, n = hidden_states.shape[:2]

            def split(x):
                return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
            q = torch.cat([split(attn.to_q(hidden_states)), split(attn.add_q_proj(encoder_hidden_states))], 2)
            k = torch.cat([split(attn.to_k(hidden_states)), split(attn.add_k_proj(encoder_hidden_states))], 2)
            v = torch.cat([split(attn.to_v(hidden_states)), split(attn.add_v_proj(encoder_hidden_states))], 2)
            p = sp.reference_probs(torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1), heads, strength)
            o = (p @ v).transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])
            img, ctx = o[:, :n], o[:, n:]
            ctx = None if attn.context_pre_only else attn.to_add_out(ctx)
            return attn.to_out[1](attn.to_out[0](img)), ctx

    m64.set_attn_processor(Ref())
    with torch.no_grad():
        return m64(**sd3_inputs(torch.float64)).sample


@pytest.mark.parametrize("strength", [0.0, 0.6])
def test_softpag_on_the_joint_map_equals_float64_reference(strength):
    model = tiny_sd3()
    comp = SoftPAG(strength=strength, blocks=(), heads=HeadSet.parse("*:1"))
    outs = {}
    with torch.no_grad():
        plain = model(**sd3_inputs()).sample
        for force in (None, "materialize"):
            with applied(model, comp, force=force) as session, session.runtime.pass_of("perturbed", comp):
                outs[force] = model(**sd3_inputs()).sample
    ref = _float64_joint(model, strength, [1])
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    if strength == 0.0:
        assert torch.equal(outs[None], plain)
    else:
        assert (outs[None] - plain).abs().max() > 1e-3


def test_softpag_default_blocks_name_the_transformer_blocks():
    with pytest.raises(ValueError, match="softpag.blocks=.*transformer_blocks"):
        with applied(tiny_sd3(), SoftPAG()):
            pass
