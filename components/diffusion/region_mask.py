"""Region-constrained cross-attention: each chosen prompt word may be attended only inside its box.

The shared building block of PrimeComposer's Region-constrained Cross-Attention (Wang et al., arXiv:2403.05053,
reference code github.com/CodeGoat24/PrimeComposer: subject-word attention confined to the desired region) and of
layout control by cross-attention modulation (DenseDiffusion, Kim et al., arXiv:2308.12964, reference code
github.com/naver-ai/DenseDiffusion, which modulates the scores inside / outside each segment with value-range and
area adaptation); TextCenGen (arXiv:2404.11824) steers per-word regions too. This file is the
building block, not a reproduction of any of those papers: each adds its own strength modulation, step schedule and
latent updates on top (docs/diffusion.md).

Formula, on every cross-attention call with queries on an (h, w) grid: a query cell (y, x) is inside the box
(x0, y0, x1, y1) of word k (fractions of the image width / height, origin top-left) when its centre
((x + 0.5) / w, (y + 0.5) / h) lies in [x0, x1) x [y0, y1). For the key tokens j of word k and the queries i
outside its box,

    logits[b, :, i, j] += log(outside)           (outside in [0, 1]; 0 = -inf, the word is invisible there)

which renormalises each query's attention over the remaining tokens. Fast path: the bias is added to the fused
kernel's float mask. ``reference_bias`` is the formula the tests compare against in float64.

Defaults: ``outside`` 0 (hard constraint), every block. Deviations: none of the papers' step schedules (all steps).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import block_of
from components.diffusion.types import DiffusionCallInfo
from registry import register


def inside_box(box: tuple[float, float, float, float], h: int, w: int) -> torch.Tensor:
    """(h * w,) bool, row-major: which grid cells have their centre inside ``box`` = (x0, y0, x1, y1)."""
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h  # (h,)
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w  # (w,)
    x0, y0, x1, y1 = box
    iny = (ys >= y0) & (ys < y1)
    inx = (xs >= x0) & (xs < x1)
    return (iny[:, None] & inx[None, :]).reshape(-1)


def reference_bias(token_masks: list[torch.Tensor], boxes: list[tuple[float, float, float, float]],
                   h: int, w: int, outside: float) -> torch.Tensor:
    """(B, 1, h*w, S) float64 bias from per-word (B, S) token masks and boxes."""
    b, s = token_masks[0].shape
    bias = torch.zeros(b, 1, h * w, s, dtype=torch.float64)
    value = math.log(outside) if outside > 0 else float("-inf")
    for tokens, box in zip(token_masks, boxes):
        out = ~inside_box(box, h, w)  # (T,)
        hit = out[None, :, None] & tokens[:, None, :]  # (B, T, S)
        bias[:, 0] = torch.where(hit, value, bias[:, 0])
    return bias


@register("region_mask", version="0.1.0", family="diffusion", paper="arXiv:2403.05053",
          summary="Region-constrained cross-attention: each chosen prompt word attended only inside its box.")
@dataclasses.dataclass(frozen=True)
class RegionMask(DiffusionComponent):
    """Constrain the cross-attention of chosen prompt words to boxes.

    Parameters
    ----------
    words
        Prompt words to constrain (case-insensitive), one box each.
    boxes
        Four numbers per word, x0, y0, x1, y1 as fractions of width and height (origin top-left), flattened.
    outside
        Factor on a word's attention outside its box, in [0, 1]; 0 removes it there (logit bias -inf).
    blocks
        UNet blocks whose cross-attention is constrained; empty = every block.
    """

    words: tuple[str, ...] = ()
    boxes: tuple[float, ...] = ()
    outside: float = 0.0
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"words": "circle,square", "boxes": "0,0,0.5,1,0.5,0,1,1", "outside": "0.1"}
    needs_word_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.words:
            raise ParamError("region_mask.words: name at least one prompt word")
        if len(self.boxes) != 4 * len(self.words):
            raise ParamError(f"region_mask.boxes: {len(self.boxes)} numbers for {len(self.words)} words; give "
                             "x0, y0, x1, y1 per word")
        for k, box in enumerate(self.box_list()):
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ParamError(f"region_mask.boxes: box {k} ({self.words[k]}) = {box} is not 0 <= x0 < x1 <= 1, "
                                 "0 <= y0 < y1 <= 1")
        check_range("region_mask.outside", self.outside, 0.0, 1.0)

    def box_list(self) -> list[tuple[float, float, float, float]]:
        return [tuple(self.boxes[4 * k: 4 * k + 4]) for k in range(len(self.words))]  # type: ignore[misc]

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        crosses = [n for n, m in modules.items() if getattr(m, "is_cross_attention", False)]
        if not [n for n in crosses if not self.blocks or block_of(n) in self.blocks]:
            raise ValueError(f"region_mask.blocks={self.blocks!r} names no cross-attention module of this denoiser "
                             f"(blocks with one: {sorted({block_of(n) for n in crosses})})")

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        return call.is_cross and (not self.blocks or call.block in self.blocks)

    def score_bias(self, call: DiffusionCallInfo) -> torch.Tensor | None:
        if call.spatial is None:
            raise ValueError(f"region_mask: cross-attention call {call.name} has no known (h, w) grid")
        h, w = call.spatial
        masks = [call.token_mask((word,), "region_mask") for word in self.words]  # each (B, S)
        return reference_bias([m.cpu() for m in masks], self.box_list(), h, w, self.outside).to(
            call.device, call.query.dtype)  # (B, 1, T, S)
