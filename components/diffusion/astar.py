"""A-STAR: test-time attention segregation and retention, by latent updates in the first denoising steps.

Paper: Agarwal, Karanam, Joseph, Saxena, Goswami, Srinivasan, "A-STAR: Test-time Attention Segregation and
Retention for Text-to-image Synthesis", ICCV 2023, arXiv:2306.14544. No reference code was released; the parts
the paper leaves open (map normalisation, smoothing, step sizes, schedule) follow Attend-and-Excite (Chefer et
al., arXiv:2301.13826, github.com/yuval-alaluf/Attend-and-Excite ``config.py`` / ``pipeline_attend_and_excite.py``),
on which A-STAR builds and against which it is evaluated.

Maps. In an update pass (the runner's conditional pass under autograd, ``needs_latent_update``) the
cross-attention probabilities of every call on one grid are averaged over heads and calls (``resolution``; 0 = the
grid with the most calls, ties to the coarser: 16 x 16 on SD 1.x at 512 px), normalised as Attend-and-Excite does
(softmax over the tokens 1..S-2 of 100 x the map, per cell), summed over each subject word's tokens and smoothed
by Attend-and-Excite's 3 x 3 Gaussian (sigma ``smooth_sigma``): A^m, one (h, w) map per word m of ``words``.

Losses (paper eqs. 2-4), per image, over the words m, n present in its prompt:

    L_seg = sum_{m > n} sum_ij min(A^m_ij, A^n_ij) / sum_ij (A^m_ij + A^n_ij)
    L_ret = sum_m [1 - sum_ij min(A^m_ij, B^m_ij) / sum_ij (A^m_ij + B^m_ij)],   B^m = 1[A^m_prev >= tau max A^m_prev]
    L = w_seg L_seg + w_ret L_ret,      z_t <- z_t - alpha_i grad_z L

where A^m_prev is the map of the previous update pass (L_ret is 0 at the first step) and the loss of the batch is
the sum over its images (each image's gradient is its own). Step size (Attend-and-Excite): alpha_i =
``scale_factor`` sqrt(linspace(1, 0.5, n_steps)[i]), in the first ``steps`` steps.

Defaults: scale_factor 20, steps 25 (of 50), w_seg = w_ret = 1 (eq. 4), tau 0.5, resolution 0, smooth_sigma 0.5,
every block. ``scale_factor`` 0 (or both weights 0) turns the updates off: the sampler is then the plain one, bit
for bit, with no extra pass.

Deviations: the paper does not say how B^m is binarised; here B^m = 1[A >= tau max A] (``threshold``). Attend-and-
Excite's iterative refinement at steps 0, 10, 20 is not part of A-STAR and not done. The update pass reads only the
conditional prompt (as Attend-and-Excite); maps from the classifier-free-guidance pass are not recorded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from components.base import ParamError, check_range
from components.diffusion import cross_maps as cm
from components.diffusion.base import DiffusionComponent
from components.diffusion.types import DiffusionSession
from registry import register


def segregation_loss(maps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, W, h, w) word maps, (B, W) presence -> (B,) L_seg: pairwise min-overlap over summed mass (eq. 2)."""
    b, n = maps.shape[:2]
    total = maps.new_zeros(b)
    for m in range(n):
        for k in range(m):
            inter = torch.minimum(maps[:, m], maps[:, k]).sum((-1, -2))  # (B,)
            mass = (maps[:, m] + maps[:, k]).sum((-1, -2)).clamp_min(1e-12)
            total = total + torch.where(present[:, m] & present[:, k], inter / mass, 0.0)
    return total


def retention_loss(maps: torch.Tensor, masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, W, h, w) word maps, (B, W, h, w) binary masks of the previous step -> (B,) L_ret (eq. 3)."""
    inter = torch.minimum(maps, masks).sum((-1, -2))  # (B, W)
    mass = (maps + masks).sum((-1, -2)).clamp_min(1e-12)
    return torch.where(present, 1.0 - inter / mass, 0.0).sum(1)


def retention_masks(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, W, h, w) -> binary masks 1[A >= tau max A] (detached, the next step's targets)."""
    peak = maps.detach().amax((-1, -2), keepdim=True)
    return (maps.detach() >= threshold * peak).to(maps.dtype)


def word_maps(maps: torch.Tensor, token_masks: torch.Tensor, smooth_sigma: float) -> torch.Tensor:
    """(B, S, h, w) raw token maps, (B, W, S) word tokens -> (B, W, h, w) normalised, summed, smoothed maps."""
    norm = cm.softmax_over_text(maps)  # (B, S, h, w)
    per_word = torch.einsum("bshw,bks->bkhw", norm, token_masks.to(norm.dtype))
    return cm.gaussian_smooth(per_word, smooth_sigma)


@register("astar", version="0.1.0", family="diffusion", paper="arXiv:2306.14544",
          summary="A-STAR: test-time latent updates against cross-attention overlap (segregation) and decay "
                  "(retention) of the subject words.")
@dataclasses.dataclass(frozen=True)
class AStar(cm.CrossMapRecorder, DiffusionComponent):
    """Attention segregation and retention by test-time latent updates.

    Parameters
    ----------
    words
        Subject words of the prompt (case-insensitive); segregation acts on each pair present in an image.
    scale_factor
        Step-size scale (Attend-and-Excite ``scale_factor``); 0 turns the updates off.
    steps
        Number of first denoising steps with a latent update (Attend-and-Excite ``max_iter_to_alter``).
    seg_weight, ret_weight
        Weights of L_seg and L_ret (1, 1 = the paper's eq. 4; 0 ablates a loss).
    threshold
        tau in (0, 1): a cell belongs to a word's retention mask when its map reaches tau x the map's maximum.
    resolution
        Side of the attention grid the maps are read on; 0 = the grid with the most cross-attention calls.
    smooth_sigma
        Sigma of the 3 x 3 Gaussian smoothing of the maps; 0 = none.
    blocks
        UNet blocks whose cross-attention is read; empty = every block.
    """

    words: tuple[str, ...] = ()
    scale_factor: float = 20.0
    steps: int = 25
    seg_weight: float = 1.0
    ret_weight: float = 1.0
    threshold: float = 0.5
    resolution: int = 0
    smooth_sigma: float = 0.5
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"words": "circle,square", "scale_factor": "20", "steps": "5"}
    edits_probabilities: ClassVar[bool] = True  # a probability observer: recorded on the materialised path
    has_fast_path: ClassVar[bool] = False
    needs_word_tokens: ClassVar[bool] = True
    needs_latent_update: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.words:
            raise ParamError("astar.words: name at least one subject word")
        if len({w.lower() for w in self.words}) != len(self.words):
            raise ParamError(f"astar.words={self.words!r} names a word twice")
        check_range("astar.scale_factor", self.scale_factor, 0.0, None)
        if self.steps < 0:
            raise ParamError(f"astar.steps={self.steps} is negative")
        check_range("astar.seg_weight", self.seg_weight, 0.0, None)
        check_range("astar.ret_weight", self.ret_weight, 0.0, None)
        check_range("astar.threshold", self.threshold, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.resolution < 0:
            raise ParamError(f"astar.resolution={self.resolution} is negative (0 = the grid with most calls)")
        check_range("astar.smooth_sigma", self.smooth_sigma, 0.0, None)

    # -- the runner's latent-update contract -------------------------------------------------------------------
    def latent_update_steps(self) -> int:
        off = self.scale_factor == 0 or (self.seg_weight == 0 and self.ret_weight == 0)
        return 0 if off else self.steps

    def latent_step_size(self, step: int, n_steps: int) -> float:
        frac = step / (n_steps - 1) if n_steps > 1 else 0.0
        return self.scale_factor * math.sqrt(1.0 - 0.5 * frac)  # sqrt(linspace(1, 0.5, n)[step])

    def begin_update(self, session: DiffusionSession) -> None:
        cm.start_recording(self, session)

    def losses(self, session: DiffusionSession) -> dict[str, torch.Tensor]:
        """Per image (B,): ``seg``, ``ret`` and the weighted ``total`` from the recorded pass; stores this
        pass's retention masks for the next call."""
        cm.stop_recording(self, session)
        raw = cm.token_maps(self, session, self.resolution, who="astar")  # (B, S, h, w)
        rows = session.runtime.word_tokens
        if rows is None or len(rows) != raw.shape[0]:
            raise ValueError("astar reads prompt-word positions: the update pass had no word tokens per row")
        tokens = cm.word_token_masks(rows, self.words, raw.shape[1], raw.device)  # (B, W, S)
        present = tokens.any(-1)  # (B, W)
        maps = word_maps(raw, tokens, self.smooth_sigma)  # (B, W, h, w)
        seg = segregation_loss(maps, present)
        prev = session.state.get((id(self), "masks"))
        ret = retention_loss(maps, prev, present) if prev is not None and prev.shape == maps.shape \
            else maps.new_zeros(maps.shape[0])
        session.state[(id(self), "masks")] = retention_masks(maps, self.threshold)
        return {"seg": seg, "ret": ret, "total": self.seg_weight * seg + self.ret_weight * ret}

    def latent_loss(self, session: DiffusionSession) -> torch.Tensor:
        return self.losses(session)["total"].sum()
