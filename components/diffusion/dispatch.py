"""Scoped attention control of diffusers denoisers through their attention-processor interface.

``with applied(unet_or_pipe, comp_a, comp_b) as session: ...`` replaces every attention processor of a
``UNet2DConditionModel`` (``model.attn_processors`` / ``model.set_attn_processor``, diffusers 0.42) by an
:class:`AttnflowProcessor`, records the denoiser's timestep and latent shape (a forward pre-hook on the denoiser)
and the (h, w) grid of each ``Transformer2DModel`` block (pre-hooks on those blocks), and restores the original
processors and removes the hooks on exit, exceptions included. Nested scopes compose (inner components run after
outer ones); the outermost scope installs and restores.

The processor reproduces diffusers' ``AttnProcessor2_0`` step by step (spatial norm, group norm, cross norm,
q/k norms, residual connection, output rescale) and routes each call:

1. fast path: one fused ``F.scaled_dot_product_attention`` call, with the components' additive score biases added
   to the float mask, closed-form probability edits (``post_attention``) and output edits after it. Without
   components the call is the stock processor's, argument for argument, so outputs match it bit for bit.
2. materialised path: logits in at least float32 -> ``edit_logits`` -> softmax -> ``edit_probs`` -> P V, when a
   probability editor without a fast form is active, or when forced (``force="materialize"``).

Supported original processors: ``AttnProcessor2_0`` and ``AttnProcessor`` (the default ones of
``UNet2DConditionModel``), and ``JointAttnProcessor2_0`` (SD3-style MMDiT joint attention, replaced by
``joint.JointProcessor``; the patch grid is recorded by a pre-hook on the transformer). Others (IP-Adapter,
added-KV, xformers, Flux's ``FluxAttnProcessor`` on ``dispatch_attention_fn``) raise ``UnsupportedModelError``
naming the module and the processor before anything changes.

Deviation from the stock processor: an ``Attention`` built with a non-default ``scale`` gets that scale
(``AttnProcessor2_0`` ignores it and uses 1/sqrt(D), a known diffusers TODO); with the default scale nothing differs.
"""

from __future__ import annotations

import inspect
import re
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F

from components.diffusion.types import DiffusionCallInfo, DiffusionSession, Runtime, WordTokens

if TYPE_CHECKING:  # pragma: no cover
    from components.diffusion.base import DiffusionComponent

SUPPORTED_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor", "JointAttnProcessor2_0")
FORCES = (None, "materialize")


class UnsupportedModelError(TypeError):
    """The denoiser's attention cannot be controlled by the attnflow diffusion processor."""


def denoiser_of(target: Any) -> torch.nn.Module:
    """The denoiser of a pipeline (``pipe.unet`` or ``pipe.transformer``) or the model itself; a TypeError naming
    what was given."""
    model = target
    for attr in ("unet", "transformer"):
        if getattr(target, attr, None) is not None:
            model = getattr(target, attr)
            break
    if not hasattr(model, "attn_processors") or not hasattr(model, "set_attn_processor"):
        raise UnsupportedModelError(
            f"{type(target).__name__} is neither a diffusers denoiser with attention processors nor a pipeline "
            "holding one as `unet` / `transformer`")
    return model


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Attention modules by path, in ``attn_processors`` order; UnsupportedModelError for unsupported processors."""
    found: dict[str, torch.nn.Module] = {}
    for key, proc in model.attn_processors.items():
        name = key.removesuffix(".processor")
        proc = proc.original if isinstance(proc, AttnflowProcessor) else proc
        if type(proc).__name__ not in SUPPORTED_PROCESSORS:
            raise UnsupportedModelError(
                f"{type(model).__name__}: attention module {name} uses {type(proc).__name__}; the attnflow "
                f"diffusion processor replaces only {', '.join(SUPPORTED_PROCESSORS)}")
        found[name] = model.get_submodule(name)
    if not found:
        raise UnsupportedModelError(f"{type(model).__name__} has no attention processors")
    return found


def block_of(name: str) -> str:
    """The block an attention module belongs to: "down_blocks.1", "mid_block", "up_blocks.0"..."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]


@contextmanager
def applied(target: Any, *components: "DiffusionComponent", force: str | None = None) -> Iterator[DiffusionSession]:
    """Apply ``components`` to the denoiser of ``target`` inside the block; everything is restored on exit."""
    if force not in FORCES:
        raise ValueError(f"force={force!r} is not one of {FORCES}")
    model = denoiser_of(target)
    mods = attention_modules(model)  # checks every processor before anything changes
    for c in components:
        c.check_denoiser(mods)
    stack: list[DiffusionSession] = getattr(model, "_attnflow_diffusion_stack", None) or []
    runtime = stack[0].runtime if stack else Runtime()
    session = DiffusionSession(model=model, components=list(components), runtime=runtime, force=force)
    outermost = not stack
    originals = dict(model.attn_processors) if outermost else None
    handles = []
    surgery = ExitStack()
    stack.append(session)
    try:
        if outermost:
            model._attnflow_diffusion_stack = stack
            from components.diffusion.joint import JointProcessor, patch_grid_hook

            handles.append(model.register_forward_pre_hook(_denoiser_hook(runtime), with_kwargs=True))
            joint = {n for n in mods if type(originals[f"{n}.processor"]).__name__ == "JointAttnProcessor2_0"}
            if joint:  # SD3-style: the image tokens are the patch grid of the denoiser's input
                handles.append(model.register_forward_pre_hook(
                    patch_grid_hook(runtime, int(model.config.patch_size)), with_kwargs=True))
            for mod in model.modules():
                if type(mod).__name__ == "Transformer2DModel":
                    handles.append(mod.register_forward_pre_hook(_grid_hook(runtime), with_kwargs=True))
            model.set_attn_processor({
                f"{name}.processor": (JointProcessor if name in joint else AttnflowProcessor)(
                    originals[f"{name}.processor"], name, layer, stack)
                for layer, name in enumerate(mods)})
        for c in components:  # forward hooks a component reads (a block's input, the denoiser's sample)
            handles.extend(c.scope_hooks(model, session))
        for c in components:  # module surgery (e.g. HiDiffusion's RAU-Net), undone by the exit stack
            surgery.enter_context(c.model_scope(model, session))
        yield session
    finally:
        surgery.close()
        stack.pop()
        for h in handles:
            h.remove()
        if outermost:
            model.set_attn_processor(dict(originals))  # set_attn_processor pops from the dict it is given
            del model._attnflow_diffusion_stack


def _denoiser_hook(runtime: Runtime):
    def hook(module, args, kwargs):
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
        sample = bound.get("sample", bound.get("hidden_states"))
        timestep = bound.get("timestep")
        runtime.latent_shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else None
        runtime.timestep = torch.as_tensor(timestep) if timestep is not None else None
    return hook


def _grid_hook(runtime: Runtime):
    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        runtime.spatial = (int(x.shape[-2]), int(x.shape[-1])) if isinstance(x, torch.Tensor) and x.dim() == 4 \
            else None
    return hook


def word_token_indices(tokenizer: Any, prompt: str, *, max_length: int | None = None) -> WordTokens:
    """The prompt's words (runs of letters/digits) in order, each with the positions of the tokens that cover
    it, read from a fast tokenizer's offsets (special tokens such as BOS have empty spans and belong to no word).
    Positions index the encoded prompt as the text encoder sees it (BOS included)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: word positions need its offsets")
    enc = tokenizer(prompt, return_offsets_mapping=True, truncation=max_length is not None, max_length=max_length)
    offsets = enc["offset_mapping"]
    out: WordTokens = []
    for m in re.finditer(r"\w+", prompt):
        toks = [i for i, (s, e) in enumerate(offsets) if e > s and s < m.end() and e > m.start()]
        out.append((m.group(0), toks))
    return out


class AttnflowProcessor:
    """Drop-in replacement of ``AttnProcessor2_0`` that hands each call to the scope's components."""

    def __init__(self, original: Any, name: str, layer: int, stack: list[DiffusionSession]) -> None:
        self.original = original
        self.name = name
        self.layer = layer
        self.stack = stack

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        runtime = self.stack[0].runtime
        spatial = runtime.spatial
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
            spatial = (height, width)
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = hidden_states.shape if not is_cross else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, T, D)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, S, D)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, S, D)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        q_len = query.shape[2]
        if spatial is not None and spatial[0] * spatial[1] != q_len:
            spatial = None
        call = DiffusionCallInfo(
            name=self.name, layer=self.layer, block=block_of(self.name), is_cross=is_cross, n_heads=attn.heads,
            head_dim=head_dim, batch=batch_size, q_len=q_len, kv_len=key.shape[2], scale=float(attn.scale),
            spatial=spatial, timestep=runtime.timestep, pass_kind=runtime.pass_kind,
            word_tokens=runtime.word_tokens if is_cross else None, query=query, key=key, value=value,
            session=self.stack[-1], device=query.device, step=runtime.step, n_steps=runtime.n_steps)
        out = self._attend(call, query, key, value, attention_mask)  # (B, H, T, D)

        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend(self, call: DiffusionCallInfo, query, key, value, attention_mask) -> torch.Tensor:
        comps = []
        force = None
        for s in self.stack:
            force = s.force or force
            for c in s.components:
                call.session = s
                if c.acts_on(call):
                    comps.append((s, c))
        biases = []
        for s, c in comps:
            call.session = s
            if (b := c.score_bias(call)) is not None:
                biases.append(b)
        editors = [(s, c) for s, c in comps if c.edits_probabilities]
        materialize = force == "materialize" or any(not c.has_fast_path for _, c in editors)
        mask = attention_mask
        for b in biases:
            mask = b if mask is None else mask + b
        if materialize:
            out = self._materialized(call, query, key, value, mask, editors)
        else:
            default_scale = call.scale == call.head_dim**-0.5
            if mask is not None:
                mask = mask.to(query.dtype)
            kernels = [(s, c) for s, c in editors if c.replaces_kernel]
            if len(kernels) > 1:
                raise ValueError(f"{call.name}: {', '.join(c.component_name for _, c in kernels)} each replace the "
                                 "attention kernel; at most one may act on a call")
            if kernels:
                call.session = kernels[0][0]
                out = kernels[0][1].fused_attention(call, query, key, value, mask)
            elif default_scale:  # exactly the stock call
                out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                                     is_causal=False)
            else:
                out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                                     is_causal=False, scale=call.scale)
            call.attn_mask = mask  # closed forms that re-run the kernel (a second call) add the same biases
            for s, c in editors:
                call.session = s
                out = c.post_attention(call, out)
        for s, c in comps:
            call.session = s
            out = c.edit_output(call, out)
        call.session = self.stack[-1]
        return out

    @staticmethod
    def _materialized(call: DiffusionCallInfo, query, key, value, mask, editors) -> torch.Tensor:
        dtype = torch.promote_types(query.dtype, torch.float32)
        logits = torch.matmul(query.to(dtype), key.to(dtype).transpose(-1, -2)) * call.scale  # (B, H, T, S)
        if mask is not None:
            logits = logits + (mask.to(dtype) if mask.dtype != torch.bool
                               else torch.zeros_like(mask, dtype=dtype).masked_fill(~mask, float("-inf")))
        for s, c in editors:
            call.session = s
            logits = c.edit_logits(call, logits)
        probs = torch.softmax(logits, dim=-1)
        for s, c in editors:
            call.session = s
            probs = c.edit_probs(call, probs)
        return torch.matmul(probs, value.to(dtype)).to(query.dtype)  # (B, H, T, D)
