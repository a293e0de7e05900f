"""HD-Painter (PAIntA + RASG) inside the inpainting sampler (components/diffusion/inpaint.py): with nothing known
it equals runner.sample with the same components bit for bit, and on an inpainting UNet (sample, mask, masked
image on channels) RASG's gradient is taken through the concatenated input and equals a hand-written loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from components.diffusion.inpaint import sample_inpaint
from components.diffusion.painta import PAIntA
from components.diffusion.rasg import RASG
from components.diffusion.runner import encode_prompts, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_rasg import _ddim, _Logits

BOX = (0.25, 0.0, 1.0, 0.75)


def _prompts():
    tok, te = tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    return cond, uncond, words


def test_hdpainter_in_the_inpaint_sampler_with_nothing_known_equals_runner_sample():
    unet = tiny_unet()
    cond, uncond, words = _prompts()
    kw = dict(uncond=uncond, cfg_scale=2.0, word_tokens=words, steps=3, seed=4)
    painta, rasg = PAIntA(box=BOX, factors=(1, 2)), RASG(eta=0.5, box=BOX, factors=(1,))
    ref = sample(unet, rasg.scheduler(_ddim()), cond, components=[painta, rasg], **kw)
    out = sample_inpaint(unet, rasg.scheduler(_ddim()), cond, source=torch.zeros(1, 3, 8, 8),
                         mask=torch.ones(8, 8), components=[painta, rasg], **kw)
    assert torch.equal(out, ref)
    plain = sample(unet, _ddim(), cond, **kw)
    assert (out - plain).abs().max() > 1e-3


def _inpainting_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4).eval()


def test_rasg_on_an_inpainting_unet_equals_hand_written_loop():
    unet = _inpainting_unet()
    cond, uncond, words = _prompts()
    source = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 0:6, 2:8] = 1
    rasg = RASG(eta=0.7, factors=(1,)).with_mask(mask)
    out = sample_inpaint(unet, rasg.scheduler(_ddim()), cond, source=source, mask=mask, uncond=uncond, cfg_scale=2.0,
                         components=[rasg], word_tokens=words, steps=2, seed=6)

    store: list = []
    unet.set_attn_processor(_Logits(store))
    extra = torch.cat([mask, source * (1 - mask)], dim=1)  # (1, 4, 8, 8)
    region = mask.reshape(-1)
    sched = _ddim()
    x = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(6)) * sched.init_noise_sigma
    sched.set_timesteps(2)
    for t in sched.timesteps:
        store.clear()
        xg = x.clone().requires_grad_(True)
        unet(torch.cat([xg, extra], 1), t, encoder_hidden_states=cond)
        sim = torch.cat(store, 1).mean(1)[0]  # (T, L)
        loss = sum(F.binary_cross_entropy_with_logits(sim[:, k] - 1.0, region) for k in [1, 2, 3, 4])
        (grad,) = torch.autograd.grad(loss, xg)
        with torch.no_grad():
            both = torch.cat([torch.cat([x, extra], 1)] * 2)
            eps_u, eps_c = unet(both, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        x = sched.step(eps_u + 2.0 * (eps_c - eps_u), t, x, eta=0.7, variance_noise=-grad / grad.std()).prev_sample
    torch.testing.assert_close(out, x.detach(), rtol=0, atol=1e-5)
