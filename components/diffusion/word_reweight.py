"""Cross-attention reweighting of prompt words: the building block of A-STAR, Dynamic Prompt Learning and
PrimeComposer's region-constrained cross-attention.

Papers: Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control", arXiv:2208.01626, 2022
(attention re-weighting, reference code github.com/google/prompt-to-prompt, ``AttentionReweight``: the maps of the
chosen tokens multiplied by c, no renormalisation); the renormalised form is the PASTA-style logit bias (Zhang et
al., arXiv:2311.02262) applied to the prompt tokens. A-STAR (Agarwal et al., arXiv:2306.14544), DPL (Wang et al.,
arXiv:2309.15664) and PrimeComposer (Wang et al., arXiv:2403.05053) act on the same per-word cross-attention maps.

Mechanism, on every cross-attention call (all blocks, or those in ``blocks``), for the key tokens j of ``words``
(token positions from the tokenizer's offsets, ``dispatch.word_token_indices``):

- ``mode="logit"`` (renormalised): ``A'_ij = A_ij c / (1 + (c - 1) sum_{j in W} A_ij)``, i.e. logit bias
  ``+log c`` on j. Fast path: the bias is added to the fused kernel's float mask.
- ``mode="p2p"`` (Prompt-to-Prompt): ``A'_ij = c A_ij`` on j, rows not renormalised. No fused form: the call
  takes the materialised path (``edit_probs``).

``reference_probs`` is the formula the tests compare both against in float64. Defaults: c = 2.0, mode "logit",
every block. Deviations: Prompt-to-Prompt applies its reweighting only to the edited prompt of a pair and only for
the first steps (``cross_replace_steps``); here it applies at every step to every row that names the words (the
unconditional rows name none), and the step schedule is left to the runner (not implemented yet).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

import torch

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import block_of
from registry import register
from components.diffusion.types import DiffusionCallInfo


def reference_probs(probs: torch.Tensor, token_mask: torch.Tensor, c: float, mode: str) -> torch.Tensor:
    """(B, H, T, S) cross-attention probabilities, (B, S) chosen tokens -> reweighted probabilities."""
    w = torch.where(token_mask, c, 1.0).to(probs.dtype)[:, None, None, :]  # (B, 1, 1, S)
    scaled = probs * w
    return scaled if mode == "p2p" else scaled / scaled.sum(-1, keepdim=True)


@register("word_reweight", version="0.1.0", family="diffusion", paper="arXiv:2208.01626",
          summary=(
              "Scale the cross-attention image tokens pay to chosen prompt words (renormalised logit bias"
              " or Prompt-to-Prompt product)."))
@dataclasses.dataclass(frozen=True)
class WordReweight(DiffusionComponent):
    """Scale the cross-attention that image tokens pay to chosen prompt words.

    Parameters
    ----------
    words
        Prompt words to reweight (case-insensitive, matched against each row's prompt words).
    scale
        c > 0: factor on the chosen words' attention (c > 1 strengthens them, c < 1 weakens them).
    mode
        "logit": renormalised (logit bias log c, fused kernel); "p2p": Prompt-to-Prompt's unnormalised product
        (materialised path).
    blocks
        UNet blocks whose cross-attention is reweighted ("mid_block", "up_blocks.1", ...); empty = every block.
    """

    words: tuple[str, ...] = ()
    scale: float = 2.0
    mode: Literal["logit", "p2p"] = "logit"
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"words": "circle", "scale": "2.0", "mode": "logit"}
    needs_word_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.words:
            raise ParamError("word_reweight.words: name at least one prompt word")
        check_range("word_reweight.scale", self.scale, 0.0, None, lo_open=True)
        if self.mode not in ("logit", "p2p"):
            raise ParamError(f"word_reweight.mode={self.mode!r} is not one of 'logit', 'p2p'")

    @property
    def edits_probabilities(self) -> bool:  # type: ignore[override]
        return self.mode == "p2p"

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        crosses = [n for n, m in modules.items() if getattr(m, "is_cross_attention", False)]
        if not [n for n in crosses if not self.blocks or block_of(n) in self.blocks]:
            raise ValueError(f"word_reweight.blocks={self.blocks!r} names no cross-attention module of this "
                             f"denoiser (blocks with one: {sorted({block_of(n) for n in crosses})})")

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        return call.is_cross and (not self.blocks or call.block in self.blocks)

    def score_bias(self, call: DiffusionCallInfo) -> torch.Tensor | None:
        if self.mode != "logit":
            return None
        mask = call.token_mask(self.words, "word_reweight")  # (B, S)
        return torch.where(mask, math.log(self.scale), 0.0).to(call.query.dtype)[:, None, None, :]  # (B,1,1,S)

    def edit_probs(self, call: DiffusionCallInfo, probs: torch.Tensor) -> torch.Tensor:
        if self.mode != "p2p":
            return probs
        return reference_probs(probs, call.token_mask(self.words, "word_reweight"), self.scale, "p2p")
