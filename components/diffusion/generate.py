"""One image from a text-to-image model folder under diffusion components: the tensor side of the generate-images
and inpaint flows (tasks/diffusion.py calls these; the flows never touch tensors).

``generate(model, prompt, components, seed=..., steps=..., cfg_scale=...)`` encodes the prompt (and the empty
prompt when ``cfg_scale != 1``), runs ``runner.sample`` (or ``inpaint.sample_inpaint`` when a source image and a
mask are given; region-filling components without a box then read the mask) with the components' capabilities,
and returns the RGB image, the wall time of encoding + sampling + decoding, and optionally per-word
cross-attention maps.

Cross-attention maps (``map_words``): a ``CrossAttentionMaps`` component in a scope around the sampler's scope,
so it observes the probabilities after every component's logit biases and logit edits (``score_bias``,
``edit_logits``) and before the probability edits of the components under test (``edit_probs``: only
``word_reweight(mode=p2p)`` among the current ones). Each map is the conditional row's head-averaged map on the grid
with the most recorded calls, averaged over every plain-pass call of every step (``cross_maps``' own rule);
a word absent from the prompt gets no map.

``cfg_scale == 1`` runs the conditional pass only (no unconditional pass), which equals CFG with scale 1 in exact
arithmetic and costs half.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from components.diffusion.base import DiffusionComponent
from components.diffusion.cross_maps import CrossAttentionMaps
from components.diffusion.dispatch import applied
from components.diffusion.inpaint import denoiser_layout, sample_inpaint
from components.diffusion.pipeline import T2IModel
from components.diffusion.runner import encode_prompts, prompt_ids, sample


@dataclass
class Generated:
    """One generated image: the picture, seconds of wall time, word -> (h, w) float32 cross-attention map."""

    image: Any
    seconds: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def fresh_scheduler(model: T2IModel) -> Any:
    """A new scheduler of the model's class and config (``set_timesteps`` mutates schedulers)."""
    return type(model.scheduler).from_config(model.scheduler.config)


def image_to_sample(model: T2IModel, image: Any) -> torch.Tensor:
    """RGB PIL image -> (1, C, h, w) in the denoiser's sample space: pixels in [-1, 1] resized to the model's image
    size, then the vae's scaled latent mean for latent models."""
    size = model.image_size
    img = image.convert("RGB").resize((size, size), resample=_bicubic())
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0  # (1, 3, S, S)
    dtype = next(model.unet.parameters()).dtype
    x = x.to(device=model.unet.device, dtype=dtype)
    if model.vae is not None:
        with torch.no_grad():
            x = model.vae.encode(x).latent_dist.mean * model.latent_scale  # (1, C, S/f, S/f)
    return x


def mask_to_sample(model: T2IModel, mask: Any) -> torch.Tensor:
    """Mask image (white / non-zero = fill) -> (1, 1, h, w) of 0 and 1 at the sample resolution (nearest resize;
    a grey level counts as fill from 128 up)."""
    _, h, w = model.sample_shape
    m = np.asarray(mask.convert("L").resize((w, h), resample=_nearest()), dtype=np.uint8)  # (h, w)
    return torch.from_numpy((m >= 128).astype(np.float32))[None, None].to(model.unet.device)  # (1, 1, h, w)


def generate(
    model: T2IModel,
    prompt: str,
    components: Sequence[DiffusionComponent] = (),
    *,
    seed: int = 0,
    steps: int = 20,
    cfg_scale: float = 1.0,
    map_words: Sequence[str] = (),
    source: Any = None,
    mask: Any = None,
    resample: int = 1,
) -> Generated:
    """One image for ``prompt`` (see the module docstring). ``source`` / ``mask``: PIL images for inpainting
    (both or neither); ``resample``: RePaint resampling count (inpainting only)."""
    if (source is None) != (mask is None):
        raise ValueError("inpainting needs both a source image and a mask")
    start = time.perf_counter()
    cond, words = encode_prompts(model.tokenizer, model.text_encoder, [prompt], max_length=model.max_length)
    uncond = None
    if cfg_scale != 1.0:
        uncond, _ = encode_prompts(model.tokenizer, model.text_encoder, [""], max_length=model.max_length)
    kw = dict(uncond=uncond, cfg_scale=cfg_scale, components=list(components), word_tokens=words, steps=steps,
              seed=seed)
    present = {w.lower() for w, _ in words[0]}
    recorded = tuple(w for w in dict.fromkeys(map_words) if w.lower() in present)
    maps_comp = CrossAttentionMaps(words=recorded) if recorded else None
    maps: dict[str, np.ndarray] = {}
    with applied(model.unet, maps_comp) if maps_comp else nullcontext() as outer:
        if source is None:
            x = sample(model.unet, fresh_scheduler(model), cond, text_encoder=model.text_encoder,
                       input_ids=prompt_ids(model.tokenizer, [prompt], model.max_length), **kw)  # (1, C, h, w)
        else:
            m = mask_to_sample(model, mask)  # (1, 1, h, w)
            kw["components"] = with_region(kw["components"], m)
            x = sample_inpaint(model.unet, fresh_scheduler(model), cond, source=image_to_sample(model, source),
                               mask=m, masked_source=_masked_latents(model, source, mask), resample=resample, **kw)
        if maps_comp is not None:
            maps = {w: m[-1].float().cpu().numpy() for w, m in maps_comp.maps(outer).items()}  # (h, w) each
    image = model.to_images(x)[0]
    return Generated(image=image, seconds=time.perf_counter() - start, maps=maps)


def with_region(components: Sequence[DiffusionComponent], mask: torch.Tensor) -> list[DiffusionComponent]:
    """Components that fill a region (HD-Painter's ``painta`` / ``rasg``: a ``with_mask`` method) and were given no
    ``box`` read the inpainting mask (1, 1, h, w); the others are returned as they are."""
    return [c.with_mask(mask) if hasattr(c, "with_mask") and not getattr(c, "box", ()) and c._mask is None else c
            for c in components]


def _masked_latents(model: T2IModel, source: Any, mask: Any) -> torch.Tensor | None:
    """For a latent inpainting denoiser: the vae latents of the source with the fill region set to mid-grey in pixel
    space (128, i.e. 0.004 in [-1, 1]; diffusers' ``StableDiffusionInpaintPipeline`` sets it to 0 exactly on float
    pixels, here the masked image goes through the same uint8 image path as the source); None otherwise
    (sample_inpaint's default)."""
    if model.vae is None or denoiser_layout(model.unet) != "inpainting":
        return None
    from PIL import Image

    size = model.image_size
    keep = np.asarray(mask.convert("L").resize((size, size), resample=_nearest()), dtype=np.uint8) < 128  # (S, S)
    pixels = np.asarray(source.convert("RGB").resize((size, size), resample=_bicubic()), dtype=np.float32)
    grey = np.where(keep[..., None], pixels, 127.5).round().astype(np.uint8)  # 128: 0.004 in [-1, 1]
    return image_to_sample(model, Image.fromarray(grey))


def check_inpainting_model(model: T2IModel) -> str:
    """The denoiser layout ("plain" or "inpainting"); a ValueError naming the channels otherwise."""
    return denoiser_layout(model.unet)


def _bicubic() -> Any:
    from PIL import Image

    return Image.Resampling.BICUBIC


def _nearest() -> Any:
    from PIL import Image

    return Image.Resampling.NEAREST
