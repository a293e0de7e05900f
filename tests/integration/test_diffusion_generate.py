"""components/diffusion/generate.py on tiny random models: one image equals the sampler's output decoded, the
recorded maps are the conditional row's cross_maps for words in the prompt only, cfg_scale 1 skips the
unconditional pass, and a latent (vae) model inpaints with the mask at latent resolution and, for a 4 + 1 + 4
inpainting UNet, the vae latents of the grey-masked source as the extra channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image

from components.diffusion.cross_maps import CrossAttentionMaps
from components.diffusion.dispatch import applied
from components.diffusion.generate import generate, image_to_sample
from components.diffusion.pipeline import T2IModel
from components.diffusion.runner import encode_prompts, sample
from components.diffusion.softpag import SoftPAG
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet


def _pixel_model() -> T2IModel:
    return T2IModel(unet=tiny_unet(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(),
                    scheduler=DDIMScheduler(num_train_timesteps=50), image_size=8, max_length=12)


def test_generate_is_the_sampler_decoded_with_the_conditional_maps():
    model = _pixel_model()
    comp = SoftPAG(scale=2.0)
    out = generate(model, "a red circle", [comp], seed=3, steps=2, cfg_scale=2.0, map_words=("circle", "square"))
    cond, words = encode_prompts(model.tokenizer, model.text_encoder, ["a red circle"], max_length=12)
    uncond, _ = encode_prompts(model.tokenizer, model.text_encoder, [""], max_length=12)
    maps = CrossAttentionMaps(words=("circle",))
    with applied(model.unet, maps) as outer:
        x = sample(model.unet, DDIMScheduler(num_train_timesteps=50), cond, uncond=uncond, cfg_scale=2.0,
                   components=[comp], word_tokens=words, steps=2, seed=3)
        want = maps.maps(outer)["circle"]  # (2, h, w): unconditional row, conditional row
    assert np.array_equal(np.asarray(out.image), np.asarray(model.to_images(x)[0]))
    assert list(out.maps) == ["circle"]  # "square" is not in the prompt
    assert np.array_equal(out.maps["circle"], want[-1].numpy()) and out.maps["circle"].max() > 0
    assert out.seconds > 0

    plain = generate(model, "a red circle", seed=3, steps=2)
    x1 = sample(model.unet, DDIMScheduler(num_train_timesteps=50), cond, word_tokens=words, steps=2, seed=3)
    assert np.array_equal(np.asarray(plain.image), np.asarray(model.to_images(x1)[0]))


def _latent_model(in_channels: int) -> T2IModel:
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=16, layers_per_block=1).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4).eval()
    return T2IModel(unet=unet, text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(),
                    scheduler=DDIMScheduler(num_train_timesteps=50), vae=vae, image_size=16, max_length=12)


def _source_and_mask():
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 0:8] = 255
    return src, Image.fromarray(mask)


def test_latent_inpainting_feeds_the_latent_mask_and_masked_latents():
    model = _latent_model(9)
    src, mask = _source_and_mask()
    inputs = []
    handle = model.unet.register_forward_pre_hook(lambda mod, a: inputs.append(a[0].clone()))
    out = generate(model, "a red circle", seed=1, steps=2, source=src, mask=mask)
    handle.remove()
    assert out.image.size == (16, 16) and [tuple(x.shape) for x in inputs] == [(1, 9, 8, 8)] * 2
    latent_mask = torch.zeros(8, 8)
    latent_mask[2:6, 0:4] = 1  # the 16 px mask, nearest-resized to the 8 x 8 latent grid
    grey = np.asarray(src).copy()
    grey[np.asarray(mask) >= 128] = 128
    masked = image_to_sample(model, Image.fromarray(grey))  # (1, 4, 8, 8)
    for x in inputs:
        assert torch.equal(x[0, 4], latent_mask)
        assert torch.equal(x[:, 5:], masked)


def test_latent_blending_keeps_the_latent_known_region():
    model = _latent_model(4)
    src, mask = _source_and_mask()
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda mod, a: seen.append(a[0].clone()))
    out = generate(model, "a red circle", seed=1, steps=1, source=src, mask=mask)
    handle.remove()
    assert out.image.size == (16, 16) and tuple(seen[0].shape) == (1, 4, 8, 8)
    # the known latents at the only step are the source latents noised to its timestep (not the pure noise)
    noise_only = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[2:6, 0:4] = False
    assert not torch.equal(seen[0][0, :, keep], noise_only[0, :, keep])
    assert torch.equal(seen[0][0, :, ~keep], noise_only[0, :, ~keep])


def test_hd_painter_without_a_box_reads_the_inpainting_mask():
    """The inpaint flow's path: painta + rasg given no box fill the flow's mask (== with_mask of the latent mask);
    a component with its own box keeps it."""
    from components.diffusion.generate import mask_to_sample, with_region
    from components.diffusion.painta import PAIntA
    from components.diffusion.rasg import RASG

    model = _pixel_model()
    rng = np.random.default_rng(1)
    src = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 0:4] = 255
    mask = Image.fromarray(mask)
    comps = [PAIntA(factors=(1,)), RASG(eta=0.5, factors=(1,))]
    out = generate(model, "a red circle", comps, seed=2, steps=2, source=src, mask=mask)
    m = mask_to_sample(model, mask)
    want = generate(model, "a red circle", [c.with_mask(m) for c in comps], seed=2, steps=2, source=src, mask=mask)
    assert np.array_equal(np.asarray(out.image), np.asarray(want.image))
    boxed = PAIntA(box=(0.0, 0.0, 0.5, 0.5))
    assert with_region([boxed], m) == [boxed] and with_region([boxed], m)[0]._mask is None
    with pytest.raises(Exception, match="region to fill"):
        generate(model, "a red circle", [PAIntA()], steps=1)  # text-to-image: no mask to read
