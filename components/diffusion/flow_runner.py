"""A minimal flow-matching sampling loop for SD3-style MMDiT denoisers (``SD3Transformer2DModel``) under components.

``sample_flow(transformer, scheduler, cond, pooled, ...)`` mirrors ``runner.sample`` for a transformer that takes
pooled text projections and a flow-matching scheduler (diffusers' ``FlowMatchEulerDiscreteScheduler``, Esser et
al., "Scaling Rectified Flow Transformers", arXiv:2403.03206; the loop follows diffusers'
``StableDiffusion3Pipeline``):

    x_0 ~ N(0, I)                                                    (sigma = 1; no init_noise_sigma scaling)
    v_u, v_c = transformer([x, x], t, [uncond; cond], [pooled_u; pooled_c])      (one batched pass)
    v = v_u + g (v_c - v_u)                                          (classifier-free guidance, g = cfg_scale)
    for each component with needs_extra_pass and guidance_weight() != 0:
        v_p = transformer(x, t, cond, pooled) with Runtime.pass_kind = "perturbed";  v = component.guide(v, v_c, v_p)
    x = scheduler.step(v, t, x).prev_sample                          (Euler: x + (sigma_next - sigma) v)

Optional known-region blending (``source``, ``mask``: 1 = fill, 0 = keep), the flow-matching analogue of
RePaint / Blended Latent Diffusion that inpaint.py uses for UNets: before each step the kept region holds the
source on the forward path at the step's sigma, ``sigma z + (1 - sigma) source`` (fresh z from a second generator),
and after the last step the source itself. With it, a plain MMDiT can fill one half of a diptych from the other
(In-Context Brush's setting, icbrush.py, on a model without an inpainting head).

Not supported: test-time latent updates (``needs_latent_update``) and prompt-word positions (SD3's CLIP + T5 text
concatenation is not mapped; components that need word tokens are refused).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import applied

KNOWN_NOISE_OFFSET = 1_000_003


@torch.no_grad()
def sample_flow(
    transformer: torch.nn.Module,
    scheduler: Any,
    cond: torch.Tensor,
    pooled: torch.Tensor,
    *,
    uncond: torch.Tensor | None = None,
    pooled_uncond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    components: Sequence[DiffusionComponent] = (),
    steps: int = 10,
    sample_size: tuple[int, int] | None = None,
    seed: int = 0,
    source: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    force: str | None = None,
) -> torch.Tensor:
    """Sample B latents (B, C, H, W) for text embeddings ``cond`` (B, L, E) and pooled projections ``pooled``
    (B, P); ``uncond`` / ``pooled_uncond`` (1 or B rows) enable classifier-free guidance.

    ``source`` (1 or B, C, H, W) and ``mask`` ((H, W) or (1 or B, 1, H, W), 0 / 1) enable known-region blending.
    """
    b = cond.shape[0]
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one denoising step")
    if pooled.shape[0] != b:
        raise ValueError(f"pooled has {pooled.shape[0]} rows, cond {b}")
    if (uncond is None) != (pooled_uncond is None):
        raise ValueError("classifier-free guidance needs both uncond and pooled_uncond")
    if uncond is not None and (uncond.shape[0] not in (1, b) or pooled_uncond.shape[0] not in (1, b)):
        raise ValueError(f"uncond / pooled_uncond have {uncond.shape[0]} / {pooled_uncond.shape[0]} rows: give 1 "
                         f"or {b}")
    refused = [c.component_name for c in components if c.needs_latent_update or c.needs_word_tokens]
    if refused:
        raise ValueError(f"{', '.join(refused)} need latent updates or prompt-word positions, which the flow "
                         "sampler does not provide")
    if not hasattr(scheduler, "sigmas") or type(scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"sample_flow needs a FlowMatchEulerDiscreteScheduler, not {type(scheduler).__name__}")
    config = transformer.config
    h, w = sample_size or (config.sample_size, config.sample_size)
    fill = None
    if (source is None) != (mask is None):
        raise ValueError("known-region blending needs both source and mask")
    if source is not None:
        m = mask[None, None] if mask.dim() == 2 else mask
        if source.dim() != 4 or source.shape[0] not in (1, b) or source.shape[1] != config.in_channels:
            raise ValueError(f"source has shape {tuple(source.shape)}: need (1 or {b}, {config.in_channels}, H, W)")
        if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] not in (1, b) or m.shape[2:] != source.shape[2:]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}: need (H, W) or (1 or {b}, 1, H, W) at the "
                             f"source's H, W = {tuple(source.shape[2:])}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask values must be 0 (keep) or 1 (fill)")
        h, w = source.shape[2:]
        source = source.to(device=cond.device, dtype=cond.dtype).expand(b, -1, -1, -1)  # (B, C, H, W)
        fill = (m > 0.5).to(cond.device).expand(b, config.in_channels, -1, -1)  # (B, C, H, W)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    known_gen = torch.Generator(device="cpu").manual_seed(seed + KNOWN_NOISE_OFFSET)
    x = torch.randn((b, config.in_channels, h, w), generator=gen, dtype=cond.dtype).to(cond.device)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas  # (n + 1,), the last 0

    def impose(x: torch.Tensor, i: int) -> torch.Tensor:  # the kept region on the forward path at sigmas[i]
        if fill is None:
            return x
        z = torch.randn(x.shape, generator=known_gen, dtype=x.dtype).to(x.device)  # (B, C, H, W)
        s = sigmas[i].to(device=x.device, dtype=x.dtype)
        return torch.where(fill, x, s * z + (1.0 - s) * source)

    cfg = uncond is not None
    enc_both = torch.cat([uncond.expand(b, -1, -1), cond]) if cfg else cond  # (2B | B, L, E)
    pooled_both = torch.cat([pooled_uncond.expand(b, -1), pooled]) if cfg else pooled  # (2B | B, P)
    guiders = [c for c in components if c.needs_extra_pass and c.guidance_weight() != 0]
    timesteps = scheduler.timesteps
    x = impose(x, 0)
    with applied(transformer, *components, force=force) as session:
        runtime = session.runtime
        runtime.n_steps = len(timesteps)
        for i, t in enumerate(timesteps):
            runtime.step = i
            xin = torch.cat([x, x]) if cfg else x
            out = transformer(hidden_states=xin, timestep=t.expand(xin.shape[0]), encoder_hidden_states=enc_both,
                              pooled_projections=pooled_both).sample
            if cfg:
                v_u, v_c = out.chunk(2)
                v = v_u + cfg_scale * (v_c - v_u)
            else:
                v_c = v = out
            for g in guiders:
                with runtime.pass_of("perturbed", g):
                    v_p = transformer(hidden_states=x, timestep=t.expand(b), encoder_hidden_states=cond,
                                      pooled_projections=pooled).sample
                v = g.guide(v, v_c, v_p)
            x = impose(scheduler.step(v, t, x).prev_sample, i + 1)
    return x
