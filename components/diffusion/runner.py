"""A minimal text-to-image sampling loop over a diffusers denoiser that honours the components' capabilities.

``sample(unet, scheduler, cond, uncond=..., components=[...])`` runs the scheduler's timesteps (DDPM, DDIM or any
diffusers scheduler with ``set_timesteps`` / ``scale_model_input`` / ``step``) on a latent-free (pixel-space) or
latent denoiser:

    eps_u, eps_c = unet([x, x], t, [uncond, cond])                      (one batched pass; eps_c alone without CFG)
    eps = eps_u + g (eps_c - eps_u)                                      (classifier-free guidance, g = cfg_scale)
    (before it, in the first latent_update_steps() steps of a component with needs_latent_update:
        x <- x - a_i grad_x latent_loss(recordings of unet(x, t, cond)), under autograd)
    (before both, in the first embedding_update_steps() steps of a component with needs_embedding_update:
        the learned token embeddings e <- optimiser steps on embedding_loss(recordings of
        unet(x, t, text_encoder(ids with e))), then cond = text_encoder(ids with e) from this step on)
    for each component with needs_extra_pass and guidance_weight() != 0:
        eps_p = unet(x, t, cond) with Runtime.pass_kind = "perturbed"
        eps = component.guide(eps, eps_c, eps_p)
    x = scheduler.step(eps, t, x).prev_sample

Before the loop every component may substitute the scheduler (``wrap_scheduler``: RASG's guided DDIM step), so
callers pass a plain scheduler. Each guider gets its own pass (``Runtime.perturber`` names it, so two guiders never
perturb each other's pass).
A component with weight 0 costs no pass and leaves every step bit for bit as without it. Prompt-word token
positions (``dispatch.word_token_indices``) are handed to the cross-attention calls per batch row (the
unconditional rows name no words). Encoding prompts is ``encode_prompts``; prompt-learning components also need
the text encoder and the token ids (``prompt_ids``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import applied, word_token_indices
from components.diffusion.types import WordTokens


def encode_prompts(tokenizer: Any, text_encoder: torch.nn.Module, prompts: Sequence[str],
                   max_length: int | None = None) -> tuple[torch.Tensor, list[WordTokens]]:
    """Prompts -> text-encoder hidden states (B, L, E) (padded to ``max_length``, default the tokenizer's
    ``model_max_length``) and each prompt's word token positions."""
    if not prompts:
        raise ValueError("encode_prompts: no prompts")
    length = max_length or tokenizer.model_max_length
    enc = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = text_encoder(enc["input_ids"].to(text_encoder.device))[0]  # (B, L, E)
    return hidden, [word_token_indices(tokenizer, p, max_length=length) for p in prompts]


def prompt_ids(tokenizer: Any, prompts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """(B, L) token ids of the prompts, padded and truncated as ``encode_prompts`` encodes them."""
    length = max_length or tokenizer.model_max_length
    return tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt")["input_ids"]


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    scheduler: Any,
    cond: torch.Tensor,
    *,
    uncond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    components: Sequence[DiffusionComponent] = (),
    word_tokens: list[WordTokens] | None = None,
    steps: int = 10,
    sample_size: tuple[int, int] | None = None,
    seed: int = 0,
    force: str | None = None,
    text_encoder: torch.nn.Module | None = None,
    input_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample B images (B, C, H, W) for the prompt embeddings ``cond`` (B, L, E).

    ``uncond`` (B or 1, L, E) enables classifier-free guidance with ``cfg_scale``; ``word_tokens`` (one entry
    per prompt) feeds word-level components; ``seed`` fixes the initial noise and the scheduler's noise;
    ``text_encoder`` and ``input_ids`` (B, L) (``prompt_ids``) feed prompt-learning components.
    """
    b = cond.shape[0]
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one denoising step")
    check_prompt_inputs(cond, uncond, word_tokens, components)
    embedders = [c for c in components if c.needs_embedding_update and c.embedding_update_steps() > 0]
    if embedders and (text_encoder is None or input_ids is None):
        raise ValueError(f"{', '.join(c.component_name for c in embedders)} learn prompt-token embeddings: pass "
                         "text_encoder and input_ids (prompt_ids)")
    if embedders and (word_tokens is None or tuple(input_ids.shape[:1]) != (b,)):
        raise ValueError(f"input_ids has {input_ids.shape[0]} rows for {b} prompts" if word_tokens is not None
                         else "prompt-learning components read prompt-word positions: pass word_tokens")
    cfg = uncond is not None
    config = unet.config
    h, w = sample_size or (config.sample_size, config.sample_size)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((b, config.in_channels, h, w), generator=gen, dtype=cond.dtype).to(cond.device)
    x = x * scheduler.init_noise_sigma
    for c in components:
        scheduler = c.wrap_scheduler(scheduler)
    scheduler.set_timesteps(steps)
    guiders = [c for c in components if c.needs_extra_pass and c.guidance_weight() != 0]
    updaters = [c for c in components if c.needs_latent_update and c.latent_update_steps() > 0]
    n_steps = len(scheduler.timesteps)
    enc_both = torch.cat([uncond.expand(b, -1, -1), cond]) if cfg else cond  # (2B | B, L, E)
    rows_both = None
    if word_tokens is not None:
        rows_both = ([[] for _ in range(b)] + list(word_tokens)) if cfg else list(word_tokens)
    with applied(unet, *components, force=force) as session:
        runtime = session.runtime
        runtime.n_steps = n_steps
        learned: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, t in enumerate(scheduler.timesteps):
            runtime.step = i
            for e in embedders:
                if i < e.embedding_update_steps():
                    cond = _embedding_update(unet, scheduler, session, e, x, t, word_tokens, text_encoder,
                                             input_ids, learned, i, n_steps)
                    enc_both = torch.cat([uncond.expand(b, -1, -1), cond]) if cfg else cond  # (2B | B, L, E)
            for u in updaters:
                if i < u.latent_update_steps():
                    x = latent_update(unet, scheduler, session, u, x, t, cond, word_tokens, i, n_steps)
            xin = scheduler.scale_model_input(x, t)  # (B, C, H, W)
            eps = guided_prediction(unet, runtime, xin, t, cond, enc_both, rows_both, word_tokens, cfg_scale,
                                    guiders)
            x = scheduler.step(eps, t, x, generator=gen).prev_sample
    return x


def check_prompt_inputs(cond: torch.Tensor, uncond: torch.Tensor | None, word_tokens: list[WordTokens] | None,
                        components: Sequence[DiffusionComponent]) -> None:
    """The prompt-side checks every sampler makes before compute: uncond rows, word-token rows, and word tokens
    present when a component reads them."""
    b = cond.shape[0]
    if uncond is not None and uncond.shape[0] not in (1, b):
        raise ValueError(f"uncond has {uncond.shape[0]} rows, cond {b}: give 1 or {b}")
    if word_tokens is not None and len(word_tokens) != b:
        raise ValueError(f"word_tokens has {len(word_tokens)} entries for {b} prompts")
    needs_words = [c.component_name for c in components if c.needs_word_tokens]
    if needs_words and word_tokens is None:
        raise ValueError(f"{', '.join(needs_words)} read prompt-word positions: pass word_tokens (encode_prompts)")


def guided_prediction(unet, runtime, xin: torch.Tensor, t, cond: torch.Tensor, enc_both: torch.Tensor, rows_both,
                      word_tokens, cfg_scale: float, guiders: Sequence[DiffusionComponent],
                      net_in: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """One step's denoiser prediction (B, C, H, W): the (CFG-batched when ``enc_both`` has 2B rows) pass, then
    one perturbed pass per guider. ``net_in(x, rows)`` builds the denoiser input from the scaled sample
    (inpainting UNets append mask and masked source); identity by default."""
    net_in = net_in or (lambda z, rows: z)
    b = xin.shape[0]
    cfg = enc_both.shape[0] == 2 * b
    runtime.set_word_tokens(rows_both)
    out = unet(net_in(torch.cat([xin, xin]) if cfg else xin, 2 * b if cfg else b), t,
               encoder_hidden_states=enc_both).sample
    if cfg:
        eps_u, eps_c = out.chunk(2)
        eps = eps_u + cfg_scale * (eps_c - eps_u)
    else:
        eps_c = eps = out
    for g in guiders:
        runtime.set_word_tokens(None if word_tokens is None else list(word_tokens))
        with runtime.pass_of("perturbed", g):
            eps_p = unet(net_in(xin, b), t, encoder_hidden_states=cond).sample
        eps = g.guide(eps, eps_c, eps_p)
    return eps


def latent_update(unet, scheduler, session, comp: DiffusionComponent, x, t, cond, word_tokens, i, n_steps,
                   net_in: Callable[[torch.Tensor, int], torch.Tensor] | None = None):
    """One test-time update of the sample: x - a_i grad_x loss, the loss read from a conditional pass
    (``net_in`` as in ``guided_prediction``)."""
    net_in = net_in or (lambda z, rows: z)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        comp.begin_update(session)
        session.runtime.set_word_tokens(None if word_tokens is None else list(word_tokens))
        unet(net_in(scheduler.scale_model_input(xg, t), x.shape[0]), t, encoder_hidden_states=cond)
        loss = comp.latent_loss(session)
        if loss.dim() != 0:
            raise ValueError(f"{comp.component_name}.latent_loss returned shape {tuple(loss.shape)}, not a scalar")
        (grad,) = torch.autograd.grad(loss, xg)
    return (x - comp.latent_step_size(i, n_steps) * grad).detach()


def _encode_with(text_encoder, input_ids, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Text-encoder hidden states (B, L, E') with the input-token embeddings at ``positions`` (B, L) bool replaced
    by ``values`` (B, L, E) (a forward hook on the encoder's input embedding layer, removed after the call)."""
    layer = text_encoder.get_input_embeddings()
    handle = layer.register_forward_hook(
        lambda mod, args, out: torch.where(positions[..., None], values.to(out.dtype), out))
    try:
        return text_encoder(input_ids.to(values.device))[0]
    finally:
        handle.remove()


def _embedding_update(unet, scheduler, session, comp: DiffusionComponent, x, t, word_tokens, text_encoder,
                      input_ids, learned, i, n_steps) -> torch.Tensor:
    """One step of prompt learning: at most ``embedding_iterations()`` optimiser iterations on the learned token
    embeddings (kept across steps in ``learned``); returns the prompt encoded with them, (B, L, E')."""
    ids = input_ids.to(x.device)
    if id(comp) not in learned:
        rows = comp.learned_positions(word_tokens)
        positions = torch.zeros(ids.shape, dtype=torch.bool, device=x.device)  # (B, L)
        for row, pos in enumerate(rows):
            positions[row, [p for p in pos if 0 <= p < ids.shape[1]]] = True
        learned[id(comp)] = (positions, text_encoder.get_input_embeddings()(ids).detach())  # (B, L, E)
    positions, values = learned[id(comp)]
    param = values.clone().requires_grad_(True)
    opt = comp.embedding_optimizer([param])
    xin = scheduler.scale_model_input(x, t)
    for _ in range(comp.embedding_iterations()):
        with torch.enable_grad():
            comp.begin_update(session)
            session.runtime.set_word_tokens(list(word_tokens))
            unet(xin, t, encoder_hidden_states=_encode_with(text_encoder, ids, positions, param))
            per_image, done = comp.embedding_loss(session, i, n_steps)
            if per_image.shape != done.shape or per_image.shape[0] != ids.shape[0]:
                raise ValueError(f"{comp.component_name}.embedding_loss returned shapes {tuple(per_image.shape)}, "
                                 f"{tuple(done.shape)}; expected ({ids.shape[0]},) each")
            if bool(done.all()):
                break
            (param.grad,) = torch.autograd.grad(per_image[~done].sum(), param)
        kept = param.detach()[done].clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
        param.data[done] = kept  # images whose targets are met keep their embeddings
    learned[id(comp)] = (positions, param.detach())
    return _encode_with(text_encoder, ids, positions, param.detach()).detach()
