"""The inpainting sampler (components/diffusion/inpaint.py) on tiny random UNets: an all-ones mask equals the plain
sampler bit for bit, the known region fed to the denoiser is the source noised to each step's timestep, an all-zero
mask returns the source, the 2C + 1 channel layout feeds (sample, mask, masked source), resampling repeats each
step, latent updates leave the known region alone, and bad inputs are named."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel

from components.diffusion.inpaint import KNOWN_NOISE_OFFSET, sample_inpaint
from components.diffusion.runner import encode_prompts, sample
from components.diffusion.softpag import SoftPAG
from components.diffusion.word_reweight import WordReweight
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_maps import _Excite


def _prompts(texts=("a red circle", "a blue square")):
    tok, te = tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, list(texts))
    uncond, _ = encode_prompts(tok, te, [""])
    return cond, uncond, words


def _source_and_mask():
    g = torch.Generator().manual_seed(11)
    source = torch.rand((1, 3, 8, 8), generator=g) * 2 - 1
    mask = torch.zeros(8, 8)
    mask[2:6, 1:5] = 1
    return source, mask


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DDPMScheduler])
def test_all_ones_mask_equals_plain_sampler_bit_for_bit(scheduler_cls):
    unet = tiny_unet()
    cond, uncond, words = _prompts()
    source, _ = _source_and_mask()
    comps = [SoftPAG(scale=1.5), WordReweight(words=("circle",), scale=3.0)]
    kw = dict(uncond=uncond, cfg_scale=2.0, components=comps, word_tokens=words, steps=3, seed=5)
    plain = sample(unet, scheduler_cls(num_train_timesteps=50), cond, **kw)
    filled = sample_inpaint(unet, scheduler_cls(num_train_timesteps=50), cond, source=source,
                            mask=torch.ones(8, 8), **kw)
    assert torch.equal(filled, plain)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DDPMScheduler])
def test_known_region_is_the_noised_source_at_every_step(scheduler_cls):
    unet = tiny_unet()
    cond, uncond, _ = _prompts()
    source, mask = _source_and_mask()
    seen = []
    out = sample_inpaint(unet, scheduler_cls(num_train_timesteps=50), cond, source=source, mask=mask,
                         uncond=uncond, cfg_scale=2.0, steps=4, seed=3, on_step=lambda i, t, x: seen.append(x))
    ref = scheduler_cls(num_train_timesteps=50)
    ref.set_timesteps(4)
    gen = torch.Generator().manual_seed(3 + KNOWN_NOISE_OFFSET)
    keep = (mask == 0).expand(2, 3, 8, 8)
    assert len(seen) == 4
    for i, t in enumerate(ref.timesteps):
        z = torch.randn((2, 3, 8, 8), generator=gen)
        expected = ref.add_noise(source.expand(2, -1, -1, -1), z, t.expand(2))
        assert torch.equal(seen[i][keep], expected[keep]), f"step {i}"
        assert not torch.equal(seen[i][~keep], expected[~keep])  # the filled region is the denoiser's
    assert torch.equal(out[keep], source.expand(2, -1, -1, -1)[keep])  # clean source after the last step
    assert (out[~keep] - source.expand(2, -1, -1, -1)[~keep]).abs().max() > 1e-3


def test_all_zero_mask_returns_the_source():
    unet = tiny_unet()
    cond, _, _ = _prompts()
    source, _ = _source_and_mask()
    out = sample_inpaint(unet, DDPMScheduler(num_train_timesteps=50), cond, source=source, mask=torch.zeros(8, 8),
                         steps=2)
    assert torch.equal(out, source.expand(2, -1, -1, -1))


def _inpainting_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4).eval()


def test_inpainting_layout_feeds_sample_mask_and_masked_source():
    unet = _inpainting_unet()
    cond, uncond, _ = _prompts(("a red circle",))
    source, mask = _source_and_mask()
    inputs = []
    handle = unet.register_forward_pre_hook(lambda mod, a: inputs.append(a[0].clone()))
    out = sample_inpaint(unet, DDIMScheduler(num_train_timesteps=50), cond, source=source, mask=mask,
                         uncond=uncond, cfg_scale=2.0, components=[SoftPAG(scale=1.0)], steps=2, seed=1)
    handle.remove()
    assert [tuple(x.shape) for x in inputs] == [(2, 7, 8, 8), (1, 7, 8, 8)] * 2  # CFG pass, guidance pass
    for x in inputs:
        assert torch.equal(x[:, 3], mask.expand(x.shape[0], 8, 8))
        assert torch.equal(x[:, 4:], (source * (1 - mask)).expand(x.shape[0], -1, -1, -1))
    assert out.shape == (1, 3, 8, 8)

    # one step by hand: no blending for an inpainting denoiser
    sched = DDIMScheduler(num_train_timesteps=50)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((1, 3, 8, 8), generator=gen)
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    extra = torch.cat([mask[None, None], source * (1 - mask)], dim=1)
    with torch.no_grad():
        eps = unet(torch.cat([x, extra], dim=1), t, encoder_hidden_states=cond).sample
    expected = sched.step(eps, t, x, generator=gen).prev_sample
    one = sample_inpaint(unet, DDIMScheduler(num_train_timesteps=50), cond, source=source, mask=mask, steps=1,
                         seed=1)
    assert torch.equal(one, expected)


def test_resampling_repeats_each_step_and_keeps_the_source():
    unet = tiny_unet()
    cond, _, _ = _prompts(("a red circle",))
    source, mask = _source_and_mask()
    calls = []
    handle = unet.register_forward_pre_hook(lambda mod, a: calls.append(a[0].shape[0]))
    once = sample_inpaint(unet, DDPMScheduler(num_train_timesteps=50), cond, source=source, mask=mask, steps=3)
    n_once = len(calls)
    twice = sample_inpaint(unet, DDPMScheduler(num_train_timesteps=50), cond, source=source, mask=mask, steps=3,
                           resample=3)
    handle.remove()
    assert (n_once, len(calls) - n_once) == (3, 9)
    keep = (mask == 0).expand(1, 3, 8, 8)
    assert torch.equal(twice[keep], source[keep])
    assert not torch.equal(twice, once)


def test_latent_update_moves_only_the_region_to_fill():
    unet = tiny_unet()
    cond, _, words = _prompts()
    source, mask = _source_and_mask()
    comp = _Excite(words=("circle",))
    seen = []
    sample_inpaint(unet, DDIMScheduler(num_train_timesteps=50), cond, source=source, mask=mask, components=[comp],
                   word_tokens=words, steps=1, seed=2, on_step=lambda i, t, x: seen.append(x))
    plain_seen = []
    sample_inpaint(unet, DDIMScheduler(num_train_timesteps=50), cond, source=source, mask=mask, word_tokens=words,
                   steps=1, seed=2, on_step=lambda i, t, x: plain_seen.append(x))
    keep = (mask == 0).expand(2, 3, 8, 8)
    assert torch.equal(seen[0][keep], plain_seen[0][keep])
    assert (seen[0][~keep] - plain_seen[0][~keep]).abs().max() > 0


def test_bad_inputs_are_named():
    unet = tiny_unet()
    cond, _, _ = _prompts(("a red circle",))
    source, mask = _source_and_mask()
    sched = DDIMScheduler(num_train_timesteps=50)
    with pytest.raises(ValueError, match="mask values must be 0"):
        sample_inpaint(unet, sched, cond, source=source, mask=mask * 0.5)
    with pytest.raises(ValueError, match="mask has shape"):
        sample_inpaint(unet, sched, cond, source=source, mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="source has shape"):
        sample_inpaint(unet, sched, cond, source=source[:, :2], mask=mask)
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        sample_inpaint(unet, EulerDiscreteScheduler(num_train_timesteps=50), cond, source=source, mask=mask,
                       resample=2)
    with pytest.raises(ValueError, match="keep blend=True"):
        sample_inpaint(unet, sched, cond, source=source, mask=mask, blend=False)
    odd = UNet2DConditionModel(sample_size=8, in_channels=5, out_channels=3, block_out_channels=(8, 16),
                               layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                               attention_head_dim=4, norm_num_groups=4)
    with pytest.raises(ValueError, match="5 input and 3 output channels"):
        sample_inpaint(odd, sched, cond, source=source, mask=mask)
