"""Inpainting with a diffusers denoiser under attention components: ``sample_inpaint`` mirrors ``runner.sample``.

Two denoiser layouts, chosen by the UNet's channels (C = ``out_channels``):

- **Plain denoiser** (``in_channels == C``): known-region blending, as in RePaint (Lugmayr et al., CVPR 2022,
  arXiv:2201.09865, Alg. 1; reference code andreas128/RePaint) and Blended Latent Diffusion (Avrahami et al.,
  arXiv:2206.02779). Before step i the sample's known region (mask 0) holds the source noised to the step's timestep,
  ``x_known = scheduler.add_noise(source, z_i, t_i)`` with fresh noise z_i; the region to fill (mask 1) comes from
  the denoiser: ``x <- m * x + (1 - m) * x_known`` (a binary-mask ``where``). After the last step the known region
  is the source itself. Deviation from RePaint: no resampling jumps by default (``resample=1``, the single pass
  of diffusers' ``StableDiffusionInpaintPipeline`` for 4-channel UNets, which blends the same way but reuses one
  noise tensor for every step and does not blend the initial noise; here z_i is fresh per step, as in RePaint,
  and the initial sample is blended too); ``resample=U > 1`` repeats each
  step U times, re-noising the blended sample from t_{i+1} back to t_i by
  ``x_t = sqrt(abar_t / abar_{t+1}) x_{t+1} + sqrt(1 - abar_t / abar_{t+1}) z`` (RePaint's jump length 1; DDPM and
  DDIM schedulers only, whose ``step`` keeps no state).
- **Inpainting denoiser** (``in_channels == 2C + 1``, the Stable Diffusion inpainting layout 4 + 1 + 4, or 3 + 1 + 3
  for a pixel model): the input is ``cat([x, mask, masked_source])`` on channels (masked_source = source where the
  mask is 0, else 0, or the caller's VAE latents of the masked image), as in diffusers'
  ``StableDiffusionInpaintPipeline``; no blending unless ``blend=True`` (diffusers blends only 4-channel UNets).

Everything else is ``runner.sample``: classifier-free guidance in one batched pass, one extra pass per guidance
component with non-zero weight, test-time latent updates (``needs_latent_update``; under blending the known region
is re-imposed after each update, so updates move only the region to fill), prompt-word positions per row.

Randomness: the initial noise and the scheduler's noise come from ``Generator().manual_seed(seed)`` in the same
order as ``runner.sample``; the known-region noise z_i and the resampling noise come from a second generator seeded
``seed + KNOWN_NOISE_OFFSET``. Hence with an all-ones mask (nothing known) a plain denoiser gives ``runner.sample``'s
output bit for bit for any scheduler (tested with DDIM and DDPM).

Shapes: source (B or 1, C, H, W) in the denoiser's sample space (pixels in [-1, 1], or latents); mask (B or 1, 1,
H, W) or (H, W) at the same resolution, values 0 (keep) or 1 (fill).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import applied
from components.diffusion.runner import latent_update, check_prompt_inputs, guided_prediction
from components.diffusion.types import WordTokens

KNOWN_NOISE_OFFSET = 1_000_003


def denoiser_layout(unet: torch.nn.Module) -> str:
    """"plain" (in == out channels) or "inpainting" (in == 2 out + 1); anything else raises ValueError."""
    cin, cout = unet.config.in_channels, unet.config.out_channels
    if cin == cout:
        return "plain"
    if cin == 2 * cout + 1:
        return "inpainting"
    raise ValueError(f"denoiser has {cin} input and {cout} output channels: inpainting needs in == out (blending) "
                     f"or in == 2 * out + 1 (sample, mask, masked image)")


def check_inpaint_inputs(source: torch.Tensor, mask: torch.Tensor, b: int, channels: int) -> torch.Tensor:
    """Validate ``source`` / ``mask`` for B prompts and C channels; return the mask as (B or 1, 1, H, W)."""
    if source.dim() != 4 or source.shape[0] not in (1, b) or source.shape[1] != channels:
        raise ValueError(f"source has shape {tuple(source.shape)}: need (1 or {b}, {channels}, H, W)")
    m = mask[None, None] if mask.dim() == 2 else mask
    if m.dim() != 4 or m.shape[0] not in (1, b) or m.shape[1] != 1 or m.shape[2:] != source.shape[2:]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}: need (H, W) or (1 or {b}, 1, H, W) with "
                         f"H, W = {tuple(source.shape[2:])} (the source's)")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask values must be 0 (keep) or 1 (fill); threshold a soft mask first")
    if not bool(torch.isfinite(source).all()):
        raise ValueError("source has non-finite values")
    return m


@torch.no_grad()
def sample_inpaint(
    unet: torch.nn.Module,
    scheduler: Any,
    cond: torch.Tensor,
    *,
    source: torch.Tensor,
    mask: torch.Tensor,
    masked_source: torch.Tensor | None = None,
    uncond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    components: Sequence[DiffusionComponent] = (),
    word_tokens: list[WordTokens] | None = None,
    steps: int = 10,
    seed: int = 0,
    resample: int = 1,
    blend: bool | None = None,
    force: str | None = None,
    on_step: Any = None,
) -> torch.Tensor:
    """Fill the mask-1 region of ``source`` for B prompt embeddings ``cond`` (B, L, E); returns (B, C, H, W).

    ``masked_source`` (inpainting denoisers only): the masked image in sample space, default ``source * (1 - m)``
    (pass VAE latents of the masked image for latent models). ``resample``: RePaint resampling count U (1 = none).
    ``blend``: replace the known region each step (default: True for plain denoisers, False for inpainting ones).
    ``on_step(i, t, x)``: called with the sample fed to the denoiser at step i (for inspection and tests).
    """
    b = cond.shape[0]
    layout = denoiser_layout(unet)
    channels = unet.config.out_channels
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one denoising step")
    if resample < 1:
        raise ValueError(f"resample={resample}: need at least 1 (1 = no resampling jumps)")
    if blend is None:
        blend = layout == "plain"
    if layout == "plain" and not blend:
        raise ValueError("a plain denoiser ignores the source without blending: keep blend=True")
    if resample > 1 and not blend:
        raise ValueError("resample > 1 re-noises the blended sample: it needs blend=True")
    if resample > 1 and type(scheduler).__name__ not in ("DDPMScheduler", "DDIMScheduler"):
        raise ValueError(f"resample > 1 needs a DDPMScheduler or DDIMScheduler (stateless step), "
                         f"not {type(scheduler).__name__}")
    check_prompt_inputs(cond, uncond, word_tokens, components)
    learners = [c.component_name for c in components if c.needs_embedding_update and c.embedding_update_steps() > 0]
    if learners:
        raise ValueError(f"{', '.join(learners)} learn prompt-token embeddings, which the inpainting sampler does not "
                         "run: use runner.sample")
    m = check_inpaint_inputs(source, mask, b, channels).to(device=cond.device, dtype=cond.dtype)
    src = source.to(device=cond.device, dtype=cond.dtype).expand(b, -1, -1, -1)  # (B, C, H, W)
    fill = (m > 0.5).expand(b, channels, -1, -1)  # (B, C, H, W) True where the denoiser fills
    cfg = uncond is not None
    extra = None
    if layout == "inpainting":
        ms = src * (1 - m) if masked_source is None else masked_source.to(device=cond.device, dtype=cond.dtype)
        if ms.shape[1:] != src.shape[1:] or ms.shape[0] not in (1, b):
            raise ValueError(f"masked_source has shape {tuple(ms.shape)}: need (1 or {b}, {tuple(src.shape[1:])})")
        extra = torch.cat([m.expand(b, -1, -1, -1), ms.expand(b, -1, -1, -1)], dim=1)  # (B, 1 + C, H, W)

    def net_in(xin: torch.Tensor, rows: int) -> torch.Tensor:  # (rows, C, H, W) -> denoiser input
        if extra is None:
            return xin
        return torch.cat([xin, extra.repeat(rows // b, 1, 1, 1)], dim=1)  # (rows, 2C + 1, H, W)

    h, w = src.shape[2:]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    known_gen = torch.Generator(device="cpu").manual_seed(seed + KNOWN_NOISE_OFFSET)
    x = torch.randn((b, channels, h, w), generator=gen, dtype=cond.dtype).to(cond.device)
    x = x * scheduler.init_noise_sigma
    for c in components:
        scheduler = c.wrap_scheduler(scheduler)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    n_steps = len(timesteps)

    def known_at(i: int) -> torch.Tensor:  # the source noised to timesteps[i]; the source itself past the end
        if i >= n_steps:
            return src
        z = torch.randn(src.shape, generator=known_gen, dtype=cond.dtype).to(cond.device)  # (B, C, H, W)
        return scheduler.add_noise(src, z, timesteps[i:i + 1].expand(b))

    def impose(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return torch.where(fill, x, known) if blend else x

    guiders = [c for c in components if c.needs_extra_pass and c.guidance_weight() != 0]
    updaters = [c for c in components if c.needs_latent_update and c.latent_update_steps() > 0]
    enc_both = torch.cat([uncond.expand(b, -1, -1), cond]) if cfg else cond  # (2B | B, L, E)
    rows_both = None
    if word_tokens is not None:
        rows_both = ([[] for _ in range(b)] + list(word_tokens)) if cfg else list(word_tokens)
    known = known_at(0) if blend else None
    x = impose(x, known)
    with applied(unet, *components, force=force) as session:
        runtime = session.runtime
        runtime.n_steps = n_steps
        for i, t in enumerate(timesteps):
            runtime.step = i
            for u in range(resample):
                for c in updaters:
                    if i < c.latent_update_steps():
                        x = impose(latent_update(unet, scheduler, session, c, x, t, cond, word_tokens, i, n_steps,
                                                  net_in), known)
                if on_step is not None:
                    on_step(i, t, x)
                xin = scheduler.scale_model_input(x, t)  # (B, C, H, W)
                eps = guided_prediction(unet, runtime, xin, t, cond, enc_both, rows_both, word_tokens, cfg_scale,
                                        guiders, net_in)
                x_next = scheduler.step(eps, t, x, generator=gen).prev_sample
                known_next = known_at(i + 1) if blend else None
                x_next = impose(x_next, known_next)
                if u + 1 < resample:
                    x = _renoise(scheduler, x_next, i, known_gen)
                else:
                    x, known = x_next, known_next
    return x


def _renoise(scheduler: Any, x_next: torch.Tensor, i: int, gen: torch.Generator) -> torch.Tensor:
    """RePaint's jump back one step: q(x_{t_i} | x_{t_{i+1}}) with abar of the scheduler's training schedule."""
    ts = scheduler.timesteps
    abar = scheduler.alphas_cumprod
    a_t = abar[int(ts[i])]
    a_next = abar[int(ts[i + 1])] if i + 1 < len(ts) else torch.tensor(1.0)
    ratio = (a_t / a_next).to(x_next.dtype)
    z = torch.randn(x_next.shape, generator=gen, dtype=x_next.dtype).to(x_next.device)  # (B, C, H, W)
    return ratio.sqrt() * x_next + (1 - ratio).sqrt() * z
