"""The attnflow processor for SD3-style joint attention (MMDiT): diffusers' ``JointAttnProcessor2_0``, step by step.

Image tokens (the patch grid, row-major) and text tokens (the projected prompt) are concatenated into one sequence,
``[image; text]``, attended jointly and split after. A call is neither self- nor cross-attention in the UNet sense:
``DiffusionCallInfo.is_cross`` is False, ``n_image`` is the number of image tokens (queries and keys ``0..n_image``),
the text tokens follow; ``spatial`` is the patch grid (latent height and width over ``patch_size``). Calls of a
block without a context (SD3's single / dual-attention blocks) have ``n_image == q_len``.

Without components the call is the stock processor's, so outputs match it bit for bit; components route as in
components/diffusion/dispatch.py (``AttnflowProcessor._attend``).
"""

from __future__ import annotations

import torch

from components.diffusion.dispatch import AttnflowProcessor, block_of
from components.diffusion.types import DiffusionCallInfo


class JointProcessor(AttnflowProcessor):
    """Drop-in replacement of ``JointAttnProcessor2_0`` that hands each call to the scope's components."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args,
                 **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, N, D)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n_image = query.shape[2]
        if encoder_hidden_states is not None:
            ctx_q = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ctx_k = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ctx_v = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                ctx_q = attn.norm_added_q(ctx_q)
            if attn.norm_added_k is not None:
                ctx_k = attn.norm_added_k(ctx_k)
            query = torch.cat([query, ctx_q], dim=2)  # (B, H, N + L, D)
            key = torch.cat([key, ctx_k], dim=2)
            value = torch.cat([value, ctx_v], dim=2)

        runtime = self.stack[0].runtime
        spatial = runtime.spatial
        if spatial is None or spatial[0] * spatial[1] != n_image:
            spatial = None
        call = DiffusionCallInfo(
            name=self.name, layer=self.layer, block=block_of(self.name), is_cross=False, n_heads=attn.heads,
            head_dim=head_dim, batch=batch_size, q_len=query.shape[2], kv_len=key.shape[2], scale=float(attn.scale),
            spatial=spatial, timestep=runtime.timestep, pass_kind=runtime.pass_kind, word_tokens=None, query=query,
            key=key, value=value, session=self.stack[-1], device=query.device, step=runtime.step,
            n_steps=runtime.n_steps, n_image=n_image)
        out = self._attend(call, query, key, value, None)  # (B, H, N + L, D)

        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, : residual.shape[1]], \
                hidden_states[:, residual.shape[1]:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def patch_grid_hook(runtime, patch_size: int):
    """Forward pre-hook on an SD3-style transformer: records the patch grid (H / p, W / p) of its input."""
    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        runtime.spatial = (int(x.shape[-2]) // patch_size, int(x.shape[-1]) // patch_size) \
            if isinstance(x, torch.Tensor) and x.dim() == 4 else None
    return hook


def is_joint(call: DiffusionCallInfo) -> bool:
    """True for a joint (MMDiT) call."""
    return call.n_image is not None
