"""The flow-matching sampler (components/diffusion/flow_runner.py) on a tiny random SD3Transformer2DModel: equal to a
hand-written Euler loop bit for bit (with CFG and a guidance pass), known-region blending keeps the source, bad
inputs are named."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from components.diffusion.dispatch import applied
from components.diffusion.flow_runner import KNOWN_NOISE_OFFSET, sample_flow
from components.diffusion.painta import PAIntA
from components.diffusion.softpag import SoftPAG
from components.heads import HeadSet
from tests.integration.test_diffusion_icbrush import _texts
from tests.integration.test_diffusion_joint import tiny_sd3


def test_flow_sampler_equals_hand_written_euler_loop_bit_for_bit():
    model = tiny_sd3()
    cond, pooled, uncond, pooled_u = _texts(1)
    comp = SoftPAG(strength=0.5, scale=1.5, blocks=(), heads=HeadSet.parse("*:0"))
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, k: calls.append(k["hidden_states"].shape[0]),
                                             with_kwargs=True)
    out = sample_flow(model, FlowMatchEulerDiscreteScheduler(shift=3.0), cond, pooled, uncond=uncond,
                      pooled_uncond=pooled_u, cfg_scale=4.0, components=[comp], steps=2, seed=3)
    handle.remove()
    assert calls == [2, 1, 2, 1]  # one CFG pass and the guidance pass per step

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    sched.set_timesteps(2)
    with torch.no_grad(), applied(model, comp) as session:
        for i, t in enumerate(sched.timesteps):
            v_u, v_c = model(hidden_states=torch.cat([x, x]), timestep=t.expand(2),
                             encoder_hidden_states=torch.cat([uncond, cond]),
                             pooled_projections=torch.cat([pooled_u, pooled])).sample.chunk(2)
            with session.runtime.pass_of("perturbed", comp):
                v_p = model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=cond,
                            pooled_projections=pooled).sample
            v = v_u + 4.0 * (v_c - v_u) + 1.5 * (v_c - v_p)
            x = x + (sched.sigmas[i + 1] - sched.sigmas[i]) * v  # Euler on the flow
    assert torch.equal(out, x)


def test_flow_sampler_blending_keeps_the_source_and_follows_the_forward_path():
    model = tiny_sd3()
    cond, pooled, _, _ = _texts(1)
    source = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(8, 8)
    mask[4:, :] = 1  # fill the bottom half
    out = sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, source=source, mask=mask, steps=3,
                      seed=2)
    assert torch.equal(out[..., :4, :], source[..., :4, :])
    plain = sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, steps=3, seed=2)
    assert (out[..., 4:, :] - plain[..., 4:, :]).abs().max() > 1e-4  # the kept half steers the filled one
    # first step: the kept region is sigma_0 z + (1 - sigma_0) source with z from the offset generator
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"].clone()),
                                             with_kwargs=True)
    sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, source=source, mask=mask, steps=1, seed=2)
    handle.remove()
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2 + KNOWN_NOISE_OFFSET))
    assert torch.equal(seen[0][..., :4, :], z[..., :4, :])  # one step: sigma_0 = 1


def test_flow_sampler_names_bad_inputs():
    model = tiny_sd3()
    cond, pooled, uncond, _ = _texts(1)
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        sample_flow(model, DDIMScheduler(), cond, pooled)
    with pytest.raises(ValueError, match="both uncond and pooled_uncond"):
        sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, uncond=uncond)
    with pytest.raises(ValueError, match="painta need latent updates or prompt-word positions"):
        sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, components=[PAIntA(box=(0, 0, 1, 1))])
    with pytest.raises(ValueError, match="mask values"):
        sample_flow(model, FlowMatchEulerDiscreteScheduler(), cond, pooled, source=torch.zeros(1, 4, 8, 8),
                    mask=torch.full((8, 8), 0.5))
