"""SoftPAG: head-level perturbed-attention guidance with a soft perturbation (HeadHunter).

Paper: Ahn et al., "Fine-Grained Perturbation Guidance via Attention Head Selection" (HeadHunter / SoftPAG),
arXiv:2506.10978, 2025; reference code github.com/cvlab-kaist/HeadHunter (not vendored here; the formula follows
the paper). Builds on perturbed-attention guidance (PAG), Ahn et al., arXiv:2403.17377, 2024, whose identity
perturbation is diffusers' ``PAGIdentitySelfAttnProcessor2_0``.

Mechanism. In an extra denoiser pass (``Runtime.pass_kind == "perturbed"``) the self-attention map of every
selected head is interpolated toward the identity:

    A'_h = (1 - u) A_h + u I            (u = ``strength`` in [0, 1]; u = 1 is PAG's identity map)

and the guided noise prediction moves away from the perturbed one:

    eps = eps_cfg + s (eps_cond - eps_perturbed)            (s = ``scale``)

Fast path: since I V = V for self-attention (T = S), the edit is an output edit on the fused kernel's result,
``O'_h = (1 - u) O_h + u V_h``, so the kernel stays fused. The materialised path edits the probabilities
(``edit_probs``); ``reference_probs`` is the formula the tests compare both against in float64.

Defaults: ``strength`` 1.0 (PAG's identity), ``scale`` 3.0 (diffusers' PAG pipelines' ``pag_scale``), the
self-attention of ``mid_block`` (diffusers' PAG default ``pag_applied_layers=["mid"]``), every head there.

On an SD3-style joint call (components/diffusion/joint.py) the interpolation applies to the whole joint map
(image and text tokens), ``O' = (1 - u) O + u V`` over all of them; diffusers' ``PAGJointAttnProcessor2_0``
replaces only the image-to-image block by the identity (image queries still see the text keys). Which of the two
HeadHunter's SoftPAG uses on SD3 is to be checked against its code; the UNet form is unaffected.

Deviations: HeadHunter selects heads by an iterative search against a user objective on SD3/FLUX; here the heads
are given (``heads``, a HeadSet over attention-module indices), and the search that picks them is
components/diffusion/head_hunter.py (``hunt``). Its native setting (SD3 / FLUX) is supported for SD3 only.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from components.base import check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import block_of
from registry import register
from components.diffusion.types import DiffusionCallInfo
from components.heads import HeadSet


def reference_probs(probs: torch.Tensor, heads: list[int], strength: float) -> torch.Tensor:
    """(B, H, T, T) self-attention probabilities -> SoftPAG's ``(1 - u) A + u I`` on ``heads``."""
    out = probs.clone()
    eye = torch.eye(probs.shape[-1], dtype=probs.dtype, device=probs.device)  # (T, T)
    out[:, heads] = (1.0 - strength) * probs[:, heads] + strength * eye
    return out


@register("softpag", version="0.1.0", family="diffusion", paper="arXiv:2506.10978",
          summary=(
              "SoftPAG / HeadHunter: chosen self-attention heads interpolated toward identity in an extra"
              " pass; guide away from it."))
@dataclasses.dataclass(frozen=True)
class SoftPAG(DiffusionComponent):
    """Soft perturbed-attention guidance on chosen self-attention heads.

    Parameters
    ----------
    strength
        u in [0, 1]: how far each selected head's attention map moves toward the identity (1 = PAG).
    scale
        s >= 0: guidance weight of ``eps_cond - eps_perturbed``; 0 makes the runner skip the extra pass.
    blocks
        Names of the UNet blocks whose self-attention is perturbed ("mid_block", "down_blocks.1", ...); empty =
        every block.
    heads
        HeadSet over attention-module indices (``DiffusionCallInfo.layer``) and heads; "all" = every head of the
        chosen blocks.
    """

    strength: float = 1.0
    scale: float = 3.0
    blocks: tuple[str, ...] = ("mid_block",)
    heads: HeadSet = HeadSet.all()

    example: ClassVar[dict] = {"strength": "0.5", "scale": "2.0", "blocks": "mid_block", "heads": "all"}
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = True
    needs_extra_pass: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("softpag.strength", self.strength, 0.0, 1.0)
        check_range("softpag.scale", self.scale, 0.0, None)

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        selfs = {i: m for i, (name, m) in enumerate(modules.items())
                 if not getattr(m, "is_cross_attention", False) and self._in_blocks(name)}
        if not selfs:
            raise ValueError(f"softpag.blocks={self.blocks!r} names no self-attention module of this denoiser "
                             f"(blocks: {sorted({block_of(n) for n in modules})})")
        n_heads = max(m.heads for m in modules.values())
        self.heads.validate(len(modules), n_heads, what="softpag.heads")
        if not any(self.heads.heads_in_layer(i, m.heads) for i, m in selfs.items()):
            raise ValueError(f"softpag.heads={self.heads} selects no head of the self-attention modules in "
                             f"{self.blocks!r} (their indices: {sorted(selfs)})")

    def guidance_weight(self) -> float:
        return self.scale

    def _in_blocks(self, name: str) -> bool:
        return not self.blocks or block_of(name) in self.blocks

    def _heads(self, call: DiffusionCallInfo) -> list[int]:
        return self.heads.heads_in_layer(call.layer, call.n_heads)

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        perturber = call.session.runtime.perturber
        return (call.pass_kind == "perturbed" and (perturber is None or perturber is self) and call.is_self
                and self.strength > 0 and self._in_blocks(call.name) and bool(self._heads(call)))

    def post_attention(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        heads = self._heads(call)
        v = call.value[:, heads].to(out.dtype)  # (B, h, T, D): I V = V, self-attention has T = S
        out = out.clone()
        out[:, heads] = (1.0 - self.strength) * out[:, heads] + self.strength * v
        return out

    def edit_probs(self, call: DiffusionCallInfo, probs: torch.Tensor) -> torch.Tensor:
        return reference_probs(probs, self._heads(call), self.strength)
