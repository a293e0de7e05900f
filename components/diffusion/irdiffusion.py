"""IR-Diffusion: Isolation and Reposition Attention for multi-subject consistent generation.

Paper: He, Wang, Zhou, Cai, Chao, Yin, Yang, "Improving Multi-Subject Consistency in Open-Domain Image Generation
with Isolation and Reposition Attention", arXiv:2411.19261, 2024; reference code github.com/hehuiguo/DreamStory
(``attention_processor/DreamStoryScaledAttnProcessor.py``: ``_isolate_subj_sa``, ``rescale_hidden_states_sa``,
``relocate_mask``, ``mask_attention_multi_subj``).

Setting. The batch holds groups of n + 1 images: one reference image per subject (in ``target_boxes`` order), then
the target image that should show all n subjects consistently with their references (with classifier-free guidance
both halves of the batch have this layout). Subject i occupies ``ref_boxes[i]`` in its reference image and
``target_boxes[i]`` in the target; a grid cell belongs to a box when its centre lies inside it.

Isolation Attention (a ``score_bias`` on the target rows of every self-attention call in ``blocks``; fused kernel):

    logits[target, :, q, k] += -inf     for q in target box i, k in target box j, j != i

so no subject of the target attends to another subject (the "internal attraction" the paper removes).

Reposition Attention (an output edit of the target rows; the target's self-attention is recomputed over extended
keys): the reference keys / values of subject i inside its reference box are cropped, resized by nearest-neighbour
interpolation to the target box and pasted there (K'_i, V'_i; valid only on the target box i cells), and

    O = softmax([q K'_1^T s + b_1, ..., q K'_n^T s + b_n, q K^T s + iso]) [V'_1; ...; V'_n; V]
    b_i[q, k] = ``ref_bias`` if q and k lie in target box i, else -inf;     iso = the isolation bias above

so each target subject reads its own reference, at the same position and scale. Resampling the keys equals the
reference's resampling of the hidden states before ``to_k`` / ``to_v`` on every unmasked cell (both are per-token
maps). ``reference_output`` is this formula, which the tests compare against in float64.

Defaults: isolation and reposition on, ``ref_bias`` 0 (the reference's ``ref_sa_lambda``), every self-attention
block, every step. Both off: the plain sampler, bit for bit.

Deviations: the reference finds the subject masks with Grounded-SAM (references) and self- x cross-attention maps
(target); here they are boxes given by the user. In its mutual (reposition) layers the released code leaves the
target's own keys unisolated; here the isolation bias applies there too, as the paper's Isolation Attention states.
The reference restricts the mutual attention to configured steps and decoder layers (``step_idx_list``,
``self_attn_layer_idx_list``) and adds DreamStory's mutual cross-attention and DIFT feature injection; here
``blocks`` chooses the layers, every step is steered, and the two DreamStory extras are not built.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from components.base import ParamError
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import block_of
from components.diffusion.region_mask import inside_box
from components.diffusion.types import DiffusionCallInfo
from registry import register

Box = tuple[float, float, float, float]


def _boxes(flat: tuple[float, ...], what: str) -> list[Box]:
    if len(flat) % 4:
        raise ParamError(f"irdiffusion.{what}: {len(flat)} numbers; give x0, y0, x1, y1 per subject")
    out = [tuple(flat[i: i + 4]) for i in range(0, len(flat), 4)]
    for k, (x0, y0, x1, y1) in enumerate(out):
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ParamError(f"irdiffusion.{what}: box {k} = {out[k]} is not 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
    return out  # type: ignore[return-value]


def isolation_bias(target: list[Box], h: int, w: int) -> torch.Tensor:
    """(h*w, h*w) float64: -inf for queries in target box i and keys in target box j != i, else 0."""
    cells = [inside_box(b, h, w) for b in target]  # each (T,)
    bias = torch.zeros(h * w, h * w, dtype=torch.float64)
    for i, ci in enumerate(cells):
        for j, cj in enumerate(cells):
            if i != j:
                bias[ci[:, None] & cj[None, :]] = float("-inf")
    return bias


def reposition(grid: torch.Tensor, src: Box, dst: Box) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(C, h, w) reference features -> (C, h, w) with the ``src`` box's cells resized (nearest) into the ``dst``
    box's cells, and the (h*w,) bool cells that hold them; None when either box has no cell on this grid."""
    h, w = grid.shape[-2:]
    s = inside_box(src, h, w).reshape(h, w)
    d = inside_box(dst, h, w).reshape(h, w)
    if not s.any() or not d.any():
        return None
    sr, sc = s.nonzero(as_tuple=True)
    dr, dc = d.nonzero(as_tuple=True)
    crop = grid[:, int(sr.min()): int(sr.max()) + 1, int(sc.min()): int(sc.max()) + 1]
    size = (int(dr.max() - dr.min()) + 1, int(dc.max() - dc.min()) + 1)
    out = torch.zeros_like(grid)
    out[:, int(dr.min()): int(dr.max()) + 1, int(dc.min()): int(dc.max()) + 1] = F.interpolate(
        crop[None].float(), size=size, mode="nearest")[0].to(grid.dtype)
    return out, d.reshape(-1)


def reference_output(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, target: list[Box],
                     ref: list[Box], h: int, w: int, scale: float, ref_bias: float, isolate: bool) -> torch.Tensor:
    """One group: q (H, T, D) of the target, keys / values (n + 1, H, T, D) of the n references then the target ->
    the Reposition Attention output (H, T, D) in the dtype of q (at least float32)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    hh, t, d = q.shape
    blocks_k, blocks_v, biases = [], [], []
    for i, (src, dst) in enumerate(zip(ref, target)):
        kg = reposition(keys[i].to(dtype).permute(0, 2, 1).reshape(hh * d, h, w), src, dst)
        vg = reposition(values[i].to(dtype).permute(0, 2, 1).reshape(hh * d, h, w), src, dst)
        if kg is None or vg is None:
            continue
        cells = kg[1].to(q.device)
        blocks_k.append(kg[0].reshape(hh, d, t).permute(0, 2, 1))  # (H, T, D)
        blocks_v.append(vg[0].reshape(hh, d, t).permute(0, 2, 1))
        allowed = cells[:, None] & cells[None, :]  # (T, T): query and key in target box i
        biases.append(torch.where(allowed, ref_bias, float("-inf")).to(dtype))
    iso = isolation_bias(target, h, w).to(q.device, dtype) if isolate else torch.zeros(t, t, dtype=dtype,
                                                                                         device=q.device)
    blocks_k.append(keys[-1].to(dtype))
    blocks_v.append(values[-1].to(dtype))
    biases.append(iso)
    logits = torch.cat([q.to(dtype) @ k.transpose(-1, -2) * scale + b for k, b in zip(blocks_k, biases)], -1)
    probs = torch.softmax(logits, dim=-1)  # (H, T, (m + 1) T)
    return (probs @ torch.cat(blocks_v, dim=1)).to(q.dtype)


@register("irdiffusion", version="0.1.0", family="diffusion", paper="arXiv:2411.19261",
          summary="IR-Diffusion: target subjects isolated from each other in self-attention; each reads its "
                  "reference image's subject, repositioned to its box.")
@dataclasses.dataclass(frozen=True)
class IRDiffusion(DiffusionComponent):
    """Isolation and Reposition Attention over groups of (n reference images, 1 target image).

    Parameters
    ----------
    target_boxes
        x0, y0, x1, y1 per subject in the target image (fractions, origin top-left), flattened; boxes must not
        overlap.
    ref_boxes
        x0, y0, x1, y1 of each subject in its own reference image, flattened (same count).
    isolation
        Mask attention between different subjects of the target (Isolation Attention).
    reposition
        Let each target subject attend to its repositioned reference subject (Reposition Attention).
    ref_bias
        Logit bias added to the reference keys (reference ``ref_sa_lambda``).
    blocks
        UNet blocks whose self-attention is edited; empty = every block.
    """

    target_boxes: tuple[float, ...] = ()
    ref_boxes: tuple[float, ...] = ()
    isolation: bool = True
    reposition: bool = True
    ref_bias: float = 0.0
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"target_boxes": "0,0,0.5,1,0.5,0,1,1", "ref_boxes": "0.25,0,0.75,1,0.25,0,0.75,1"}

    def __post_init__(self) -> None:
        target = _boxes(self.target_boxes, "target_boxes")
        ref = _boxes(self.ref_boxes, "ref_boxes")
        if not target:
            raise ParamError("irdiffusion.target_boxes: give one box per subject")
        if len(ref) != len(target):
            raise ParamError(f"irdiffusion.ref_boxes: {len(ref)} boxes for {len(target)} subjects")
        for i, a in enumerate(target):
            for j, b in enumerate(target[:i]):
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    raise ParamError(f"irdiffusion.target_boxes: boxes {j} and {i} overlap")
        if self.ref_bias != self.ref_bias or abs(self.ref_bias) == float("inf"):
            raise ParamError(f"irdiffusion.ref_bias={self.ref_bias!r} is not a finite number")

    @property
    def n_subjects(self) -> int:
        return len(self.target_boxes) // 4

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        selfs = [n for n, m in modules.items() if not getattr(m, "is_cross_attention", False)]
        if not [n for n in selfs if not self.blocks or block_of(n) in self.blocks]:
            raise ValueError(f"irdiffusion.blocks={self.blocks!r} names no self-attention module of this denoiser "
                             f"(blocks: {sorted({block_of(n) for n in modules})})")

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        active = call.is_self and call.spatial is not None and (self.isolation or self.reposition)
        if not active or (self.blocks and call.block not in self.blocks) or call.n_image is not None:
            return False
        if call.batch % (self.n_subjects + 1):
            raise ValueError(f"irdiffusion: a batch of {call.batch} rows is not made of groups of "
                             f"{self.n_subjects} reference images + 1 target image")
        return True

    def _targets(self, batch: int) -> list[int]:
        return list(range(self.n_subjects, batch, self.n_subjects + 1))

    def score_bias(self, call: DiffusionCallInfo) -> torch.Tensor | None:
        if not self.isolation or self.reposition:  # with reposition the bias is part of the recomputed rows
            return None
        h, w = call.spatial
        bias = torch.zeros(call.batch, 1, call.q_len, call.kv_len, dtype=call.query.dtype, device=call.device)
        bias[self._targets(call.batch), 0] = isolation_bias(_boxes(self.target_boxes, "target_boxes"), h, w).to(
            call.device, call.query.dtype)
        return bias  # (B, 1, T, T)

    def edit_output(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        if not self.reposition:
            return out
        h, w = call.spatial
        target, ref = _boxes(self.target_boxes, "target_boxes"), _boxes(self.ref_boxes, "ref_boxes")
        out = out.clone()
        for t in self._targets(call.batch):
            rows = list(range(t - self.n_subjects, t + 1))
            out[t] = reference_output(call.query[t], call.key[rows], call.value[rows], target, ref, h, w, call.scale,
                                      self.ref_bias, self.isolation).to(out.dtype)
        return out
