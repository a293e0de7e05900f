"""Dynamic Prompt Learning (DPL): per-step learned noun-token embeddings against cross-attention leakage.

Paper: Kai Wang, Fei Yang, Shiqi Yang, Muhammad Atif Butt, Joost van de Weijer, "Dynamic Prompt Learning:
Addressing Cross-Attention Leakage for Text-Based Image Editing", NeurIPS 2023, arXiv:2309.15664; reference code
github.com/wangkai930418/DPL (``pipelines/dpl_pipeline.py``, defaults from ``DPL.py``).

Mechanism. At each denoising step the input embeddings of the noun tokens (``words``; in the reference, new
placeholder tokens initialised from the nouns) are optimised with AdamW for at most ``iterations`` iterations; each
iteration encodes the prompt with them, runs the denoiser on the conditional prompt, and averages the cross-attention
maps of one grid over heads and calls (``resolution``; 0 = the grid with the most calls, ties to the coarser: 16 x 16
on SD 1.x at 512 px, the reference's ``attn_res``). The runner (``needs_embedding_update``) keeps the embeddings
from step to step and encodes the step's prompt with the learned ones. Losses per image, on the maps A^v of the
nouns v present in its prompt (a noun's map: the sum over its tokens):

    L_at = max_v max(0, 1 - max_ij G(S(A)^v)_ij)        attention balancing: S = softmax over the tokens 1..S-2 of
                                                        100 A (per cell), G = the 3 x 3 Gaussian (sigma 0.5)
    L_dj = mean_{v > u} cos(A^v, A^u)                   disjoint object attention (raw maps, flattened)
    L_bg = mean_v cos(A^v, BG)                          background leakage (BG = 1 outside every ``object_boxes``)
    L = lam_at L_at + lam_dj L_dj + lam_bg L_bg

An image stops (its embeddings are kept) at step i once L_at < beta_at e^{-i/alpha_at}, L_dj < beta_dj e^{-i/alpha_dj}
and L_bg < beta_bg e^{-i/alpha_bg} (a loss with weight 0 counts as 0, as in the reference).

Defaults (``DPL.py``): lam_at 1.0, lam_dj 0.2, lam_bg 0.1; alpha 25 / 25 / 50, beta 0.3 / 0.9 / 0.3; 21 iterations;
AdamW at torch's defaults (lr 1e-3, weight decay 1e-2); every step; every block. All weights 0, ``iterations`` 0 or
``steps`` 0 turn it off: the sampler is then the plain one, bit for bit.

Deviations: the reference edits a real image (DDIM inversion + null-text inversion of the unconditional embedding
after each step); here it runs in the text-to-image runner from noise, with the unconditional embedding unchanged.
The reference's background map is estimated by clustering the inverted image's self-attention; here it is given as
boxes the objects may occupy (``object_boxes``, no boxes = L_bg off). A noun of several tokens learns one embedding
per token. With several images in a batch each stops on its own targets (the reference runs one image).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from components.base import ParamError, check_range
from components.diffusion import cross_maps as cm
from components.diffusion.base import DiffusionComponent
from components.diffusion.region_mask import inside_box
from components.diffusion.types import DiffusionSession
from registry import register


def background_map(boxes: list[tuple[float, float, float, float]], h: int, w: int) -> torch.Tensor:
    """(h, w) float: 1 on cells whose centre lies outside every box, 0 inside one."""
    inside = torch.zeros(h * w, dtype=torch.bool)
    for box in boxes:
        inside |= inside_box(box, h, w)
    return (~inside).float().reshape(h, w)


def leakage_losses(raw: torch.Tensor, tokens: torch.Tensor, background: torch.Tensor | None,
                   smooth_sigma: float) -> dict[str, torch.Tensor]:
    """(B, S, h, w) raw maps, (B, V, S) noun tokens, (h, w) background or None -> per image (B,) ``at``, ``dj``,
    ``bg``."""
    present = tokens.any(-1)  # (B, V)
    t = tokens.to(raw.dtype)
    words_raw = torch.einsum("bshw,bvs->bvhw", raw, t).flatten(2)  # (B, V, h*w)
    norm = torch.einsum("bshw,bvs->bvhw", cm.softmax_over_text(raw), t)
    peak = cm.gaussian_smooth(norm, smooth_sigma).flatten(2).amax(-1)  # (B, V)
    at = torch.where(present, (1.0 - peak).clamp_min(0.0), 0.0).amax(-1)
    b, v = present.shape
    dj_sum, dj_n = raw.new_zeros(b), raw.new_zeros(b)
    for m in range(v):
        for k in range(m):
            pair = present[:, m] & present[:, k]
            cos = F.cosine_similarity(words_raw[:, m], words_raw[:, k], dim=-1)
            dj_sum = dj_sum + torch.where(pair, cos, 0.0)
            dj_n = dj_n + pair.to(raw.dtype)
    dj = dj_sum / dj_n.clamp_min(1.0)
    if background is None:
        bg = raw.new_zeros(b)
    else:
        cos = F.cosine_similarity(words_raw, background.flatten().to(raw)[None, None], dim=-1)  # (B, V)
        bg = torch.where(present, cos, 0.0).sum(-1) / present.sum(-1).clamp_min(1).to(raw.dtype)
    return {"at": at, "dj": dj, "bg": bg}


@register("dpl", version="0.1.0", family="diffusion", paper="arXiv:2309.15664",
          summary="Dynamic Prompt Learning: noun-token embeddings learned per step against cross-attention "
                  "leakage (balancing, disjoint-object and background losses).")
@dataclasses.dataclass(frozen=True)
class DynamicPromptLearning(cm.CrossMapRecorder, DiffusionComponent):
    """Learn the noun tokens' input embeddings per denoising step against cross-attention leakage.

    Parameters
    ----------
    words
        Nouns of the prompt whose token embeddings are learned (case-insensitive).
    lam_at, lam_dj, lam_bg
        Weights of the attention-balancing, disjoint-object and background-leakage losses.
    iterations
        At most this many AdamW iterations per step (reference ``attn_inner_steps``).
    steps
        Number of first denoising steps with updates (the reference updates at every step).
    lr, weight_decay
        AdamW learning rate and weight decay.
    alpha_at, alpha_dj, alpha_bg, beta_at, beta_dj, beta_bg
        Early-stop targets beta e^{-step / alpha} of each loss.
    object_boxes
        x0, y0, x1, y1 per box (fractions, origin top-left), flattened; the background map is 1 outside all of
        them. Empty: no background loss.
    resolution
        Side of the attention grid the maps are read on; 0 = the grid with the most cross-attention calls.
    smooth_sigma
        Sigma of the Gaussian smoothing in the balancing loss; 0 = none.
    blocks
        UNet blocks whose cross-attention is read; empty = every block.
    """

    words: tuple[str, ...] = ()
    lam_at: float = 1.0
    lam_dj: float = 0.2
    lam_bg: float = 0.1
    iterations: int = 21
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-2
    alpha_at: float = 25.0
    alpha_dj: float = 25.0
    alpha_bg: float = 50.0
    beta_at: float = 0.3
    beta_dj: float = 0.9
    beta_bg: float = 0.3
    object_boxes: tuple[float, ...] = ()
    resolution: int = 0
    smooth_sigma: float = 0.5
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"words": "circle,square", "iterations": "5"}
    edits_probabilities: ClassVar[bool] = True  # a probability observer: recorded on the materialised path
    has_fast_path: ClassVar[bool] = False
    needs_word_tokens: ClassVar[bool] = True
    needs_embedding_update: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.words:
            raise ParamError("dpl.words: name at least one noun of the prompt")
        if len({w.lower() for w in self.words}) != len(self.words):
            raise ParamError(f"dpl.words={self.words!r} names a word twice")
        for name in ("lam_at", "lam_dj", "lam_bg", "weight_decay", "beta_at", "beta_dj", "beta_bg",
                     "smooth_sigma", "lr"):
            check_range(f"dpl.{name}", getattr(self, name), 0.0, None)
        for name in ("alpha_at", "alpha_dj", "alpha_bg"):
            check_range(f"dpl.{name}", getattr(self, name), 0.0, None, lo_open=True)
        for name in ("iterations", "steps", "resolution"):
            if getattr(self, name) < 0:
                raise ParamError(f"dpl.{name}={getattr(self, name)} is negative")
        if len(self.object_boxes) % 4:
            raise ParamError(f"dpl.object_boxes: {len(self.object_boxes)} numbers; give x0, y0, x1, y1 per box")
        for k, box in enumerate(self.box_list()):
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ParamError(f"dpl.object_boxes: box {k} = {box} is not 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")

    def box_list(self) -> list[tuple[float, float, float, float]]:
        return [tuple(self.object_boxes[i: i + 4]) for i in range(0, len(self.object_boxes), 4)]  # type: ignore

    # -- the runner's embedding-update contract ----------------------------------------------------------------
    def embedding_update_steps(self) -> int:
        off = self.iterations == 0 or (self.lam_at == 0 and self.lam_dj == 0 and (self.lam_bg == 0 or not
                                                                                  self.object_boxes))
        return 0 if off else self.steps

    def embedding_iterations(self) -> int:
        return self.iterations

    def learned_positions(self, word_tokens: list) -> list[list[int]]:
        wanted = {w.lower() for w in self.words}
        return [[p for word, pos in row if word.lower() in wanted for p in pos] for row in word_tokens]

    def embedding_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def begin_update(self, session: DiffusionSession) -> None:
        cm.start_recording(self, session)

    def losses(self, session: DiffusionSession) -> dict[str, torch.Tensor]:
        """Per image (B,): ``at``, ``dj``, ``bg`` and the weighted ``total`` from the recorded pass."""
        cm.stop_recording(self, session)
        raw = cm.token_maps(self, session, self.resolution, who="dpl")  # (B, S, h, w)
        rows = session.runtime.word_tokens
        if rows is None or len(rows) != raw.shape[0]:
            raise ValueError("dpl reads prompt-word positions: the update pass had no word tokens per row")
        tokens = cm.word_token_masks(rows, self.words, raw.shape[1], raw.device)  # (B, V, S)
        bg_map = background_map(self.box_list(), raw.shape[-2], raw.shape[-1]) if self.object_boxes else None
        out = leakage_losses(raw, tokens, bg_map, self.smooth_sigma)
        out["total"] = self.lam_at * out["at"] + self.lam_dj * out["dj"] + self.lam_bg * out["bg"]
        return out

    def targets(self, step: int) -> tuple[float, float, float]:
        """Early-stop targets (at, dj, bg) at denoising step ``step``."""
        return (self.beta_at * math.exp(-step / self.alpha_at), self.beta_dj * math.exp(-step / self.alpha_dj),
                self.beta_bg * math.exp(-step / self.alpha_bg))

    def embedding_loss(self, session: DiffusionSession, step: int, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.losses(session)
        t_at, t_dj, t_bg = self.targets(step)
        done = ((out["at"] * (self.lam_at > 0) < t_at) & (out["dj"] * (self.lam_dj > 0) < t_dj)
                & (out["bg"] * (self.lam_bg > 0) < t_bg))
        return out["total"], done.detach()
