"""TextCenGen: force-directed relocation of prompt objects out of a planned text region, on cross-attention maps.

Paper: Liang et al., "TextCenGen: Attention-Guided Text-Centric Background Adaptation for Text-to-Image
Generation", ICML 2025, arXiv:2404.11824; reference code github.com/tianyilt/TextCenGen_Background_Adapt
(``utils/guidance_replacement.py``: ``replace_attn_with_move_object_against_single_point``; ``models/replacement.py``:
the cross-attention processor; defaults from ``sd1.5_replacement.py``). Read, not vendored.

The released code edits the cross-attention probabilities of every call directly (no latent gradient step), so this
component is a probability edit (materialised path; cross-attention is cheap) and declares no latent update.
On every cross-attention call with queries on an (h, w) grid, for each row b and its prompt-word tokens k
(maps A_k = P[b, :, :, j_k], (heads, h, w)):

1. mean over heads, soft threshold: ``n = mm(A), M_k = mm(sigmoid(sharpness (n - threshold)))`` with
   ``mm(x) = (x - min) / (max - min + eps)`` over the grid, eps = float32 machine epsilon;
2. region R (cells with centre in ``box``), its centroid c_R; token centroids c_k = sum (y, x) M_k / sum M_k;
3. conflict: ``mean_R M_k > theta``; a row without a conflicting token is left unchanged;
4. forces (each clamped to [-move, move]): repulsive ``F_rep = -f_rep^2 ||d||^2 / d`` (elementwise, d = c_k - c_R,
   ||d|| over the row's tokens), margin ``F_mar = sum_e -f_margin / (dist_e^2 + eps) u_e`` over the four edges
   (distances y, h - y, x, w - x; u_e = (1, 0), (-1, 0), (0, 1), (0, -1)); D_k = (F_rep + F_mar) * conflict_k;
5. warp: new centroid ``c_k + D_k (h, w)`` clamped into the grid (correction e), scale ``s = min(1, (side - 1) /
   new)``, translation ``o = D_k (h, w) + e``; every head's map is resampled (bilinear, zeros outside,
   ``align_corners=False``) through the affine map ``(x, y) -> (s_x x + o_x / w, s_y y + o_y / h)`` in normalised
   coordinates;
6. spatial exclusion: ``A'_k = rho A~_k + (1 - rho) A~_k (1 - R)`` (rho = ``region_exclusion``), rows not
   renormalised.

Defaults (``sd1.5_replacement.py``): repulsive 50 (``generate.py`` and ``sd2_replacement.py`` use 14; with move 1
the repulsion is usually clamped either way), margin 0.4, move 1, threshold 0.5, sharpness 1, region_exclusion 0.75,
theta 0.25, every cross-attention call and step. ``reference`` in the tests re-derives all of
it in float64 with hand-written bilinear sampling.

Deviations: the reference flattens batch and heads together, averages the maps over the unconditional and
conditional rows at once and then (a broadcast in ``apply_displacements``) writes the warp of the first head of the
first row into every head and row; here each row is handled on its own and each head's map is warped. The reference's
token list ``range(len(tokens))`` starts at BOS and drops the last word; here the tokens are the prompt's words
(``words``, default all of them). The region mask is binary per grid (cell centres in the box); the reference
interpolates a 64x64 mask bilinearly. Forces 0 and ``region_exclusion`` 1 skip the component (plain model exactly).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import block_of
from components.diffusion.region_mask import inside_box
from components.diffusion.types import DiffusionCallInfo
from registry import register

EPS = float(torch.finfo(torch.float32).eps)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """(K, h, w) -> each map scaled to [0, 1] over its grid."""
    lo = x.flatten(1).amin(1)[:, None, None]
    hi = x.flatten(1).amax(1)[:, None, None]
    return (x - lo) / (hi - lo + EPS)


def _centroid(m: torch.Tensor) -> torch.Tensor:
    """(K, h, w) -> (K, 2) weighted mean (y, x) in cell units."""
    h, w = m.shape[-2:]
    ys = torch.arange(h, dtype=m.dtype, device=m.device)[:, None]
    xs = torch.arange(w, dtype=m.dtype, device=m.device)[None, :]
    total = m.sum((1, 2)) + EPS
    return torch.stack([(m * ys).sum((1, 2)) / total, (m * xs).sum((1, 2)) / total], -1)


def relocate(maps: torch.Tensor, region: torch.Tensor, *, f_rep: float, f_margin: float, move: float,
             threshold: float, sharpness: float, rho: float, theta: float) -> torch.Tensor:
    """(heads, K, h, w) maps of one row's tokens, (h, w) 0/1 region -> relocated and excluded maps (steps 1-6)."""
    dtype, dev = maps.dtype, maps.device
    heads, k, h, w = maps.shape
    m = _minmax(torch.sigmoid(sharpness * (_minmax(maps.mean(0)) - threshold)))  # (K, h, w)
    region = region.to(dev, dtype)
    conflict = ((m * region).sum((1, 2)) / region.sum()) > theta  # (K,)
    if not bool(conflict.any()):
        return maps
    c_r = _centroid(region[None])[0]  # (2,)
    c = _centroid(m)  # (K, 2)
    d = c - c_r
    norm = d.norm() + EPS
    rep = (-(f_rep**2) * norm / (d / norm)).clamp(-move, move)  # (K, 2)
    dist = torch.stack([c[:, 0], h - c[:, 0], c[:, 1], w - c[:, 1]], -1)  # (K, 4)
    units = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=dtype, device=dev)  # (4, 2)
    margin = ((-f_margin / (dist**2 + EPS))[..., None] * units).sum(1).clamp(-move, move)  # (K, 2)
    disp = (rep + margin) * conflict[:, None].to(dtype)  # (K, 2) in (y, x), fractions of the sides
    size = torch.tensor([h, w], dtype=dtype, device=dev)
    new = c + disp * size
    clamped = torch.minimum(torch.maximum(new, torch.zeros(2, dtype=dtype, device=dev)), size - 1)
    correction = clamped - new
    s = ((size - 1) / clamped).clamp(max=1.0)  # (K, 2)
    o = disp * size + correction
    affine = torch.zeros(k, 2, 3, dtype=dtype, device=dev)
    affine[:, 0, 0], affine[:, 1, 1] = s[:, 1], s[:, 0]
    affine[:, 0, 2], affine[:, 1, 2] = o[:, 1] / w, o[:, 0] / h
    grid = F.affine_grid(affine, [k, heads, h, w], align_corners=False)  # (K, h, w, 2)
    warped = F.grid_sample(maps.transpose(0, 1), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False).transpose(0, 1)  # (heads, K, h, w)
    return rho * warped + (1 - rho) * warped * (1 - region)


@register("textcengen", version="0.1.0", family="diffusion", paper="arXiv:2404.11824",
          summary="TextCenGen: prompt objects' cross-attention pushed out of a text region by forces, region dimmed.")
@dataclasses.dataclass(frozen=True)
class TextCenGen(DiffusionComponent):
    """Relocate conflicting objects' cross-attention out of a planned text region.

    Parameters
    ----------
    box
        Text region x0, y0, x1, y1 as fractions of width and height (origin top-left).
    words
        Prompt words whose maps are moved; empty = every word of each row's prompt.
    repulsive, margin
        Force coefficients f_rep and f_margin.
    move
        Clamp of each force (the reference's ``move_factor``), > 0.
    threshold, sharpness
        Soft threshold of the head-averaged maps.
    region_exclusion
        rho in [0, 1]: factor on the moved maps inside the region (1 = no exclusion).
    theta
        Conflict threshold on the mean thresholded attention inside the region.
    blocks
        UNet blocks whose cross-attention is edited; empty = every block.
    """

    box: tuple[float, ...] = (0.3, 0.3, 0.7, 0.7)
    words: tuple[str, ...] = ()
    repulsive: float = 50.0
    margin: float = 0.4
    move: float = 1.0
    threshold: float = 0.5
    sharpness: float = 1.0
    region_exclusion: float = 0.75
    theta: float = 0.25
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"box": "0.3,0.3,0.7,0.7", "region_exclusion": "0.75"}
    edits_probabilities: ClassVar[bool] = True
    needs_word_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if len(self.box) != 4 or not (0 <= self.box[0] < self.box[2] <= 1 and 0 <= self.box[1] < self.box[3] <= 1):
            raise ParamError(f"textcengen.box={self.box}: give x0, y0, x1, y1 with 0 <= x0 < x1 <= 1, "
                             "0 <= y0 < y1 <= 1")
        check_range("textcengen.repulsive", self.repulsive, 0.0, None)
        check_range("textcengen.margin", self.margin, 0.0, None)
        check_range("textcengen.move", self.move, 0.0, None, lo_open=True)
        check_range("textcengen.threshold", self.threshold, 0.0, 1.0)
        check_range("textcengen.sharpness", self.sharpness, 0.0, None, lo_open=True)
        check_range("textcengen.region_exclusion", self.region_exclusion, 0.0, 1.0)
        check_range("textcengen.theta", self.theta, 0.0, 1.0)

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        crosses = [n for n, m in modules.items() if getattr(m, "is_cross_attention", False)]
        if not [n for n in crosses if not self.blocks or block_of(n) in self.blocks]:
            raise ValueError(f"textcengen.blocks={self.blocks!r} names no cross-attention module of this denoiser "
                             f"(blocks with one: {sorted({block_of(n) for n in crosses})})")

    def is_identity(self) -> bool:
        return self.repulsive == 0 and self.margin == 0 and self.region_exclusion == 1

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        return (call.is_cross and not self.is_identity() and (not self.blocks or call.block in self.blocks))

    def row_tokens(self, call: DiffusionCallInfo) -> list[list[int]]:
        """Per row, the key positions of the moved words (every word when ``words`` is empty)."""
        if call.word_tokens is None:
            raise ValueError("textcengen reads prompt-word positions, but the prompts' word tokens were not set "
                             "(Runtime.set_word_tokens)")
        if len(call.word_tokens) != call.batch:
            raise ValueError(f"textcengen: word tokens were set for {len(call.word_tokens)} rows, the call has "
                             f"{call.batch}")
        wanted = {w.lower() for w in self.words}
        return [sorted({p for word, pos in row if not wanted or word.lower() in wanted for p in pos
                        if 0 <= p < call.kv_len}) for row in call.word_tokens]

    def edit_probs(self, call: DiffusionCallInfo, probs: torch.Tensor) -> torch.Tensor:
        if call.spatial is None:
            raise ValueError(f"textcengen: cross-attention call {call.name} has no known (h, w) grid")
        h, w = call.spatial
        region = inside_box(tuple(self.box), h, w).reshape(h, w)  # type: ignore[arg-type]
        if not bool(region.any()):
            return probs  # the box holds no cell centre at this resolution
        out = probs.clone()
        for b, toks in enumerate(self.row_tokens(call)):
            if not toks:
                continue
            maps = probs[b][:, :, toks].double()  # (heads, T, K), float64 on the call's device
            maps = maps.transpose(1, 2).reshape(maps.shape[0], len(toks), h, w)  # (heads, K, h, w)
            moved = relocate(maps, region, f_rep=self.repulsive, f_margin=self.margin, move=self.move,
                             threshold=self.threshold, sharpness=self.sharpness, rho=self.region_exclusion,
                             theta=self.theta)
            out[b][:, :, toks] = moved.reshape(maps.shape[0], len(toks), h * w).transpose(1, 2).to(out)
        return out
