"""Per-word cross-attention maps: the observation A-STAR, Attend-and-Excite, Dynamic Prompt Learning, TextCenGen
and the generate-images flow's attention-map figures read.

Papers: Hertz et al., arXiv:2208.01626 (Prompt-to-Prompt: per-token cross-attention maps averaged over heads and
layers at 16x16, reference code github.com/google/prompt-to-prompt ``AttentionStore``); Chefer et al.,
arXiv:2301.13826 (Attend-and-Excite, github.com/yuval-alaluf/Attend-and-Excite, the same store) and Agarwal et al.,
arXiv:2306.14544 (A-STAR), whose losses are computed on these maps.

Formula: for word w with token positions J_w (``dispatch.word_token_indices``), at one cross-attention call with
queries on an (h, w) grid, ``M_w[b, y, x] = mean_heads sum_{j in J_w} A[b, head, y * w + x, j]``; ``maps`` averages
M_w over the recorded calls of one grid size. The probabilities are exactly those the call used (after other
components' biases and edits): the component is a probability observer, so cross-attention calls take the
materialised path (cheap: S is the prompt length).

Defaults: every cross-attention block, plain passes only (not a guidance method's perturbed pass). Deviation from
Prompt-to-Prompt: no softmax over the maps (A-STAR and Attend-and-Excite apply their own normalisation on top).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from components.base import ParamError
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import block_of
from registry import register
from components.diffusion.types import DiffusionCallInfo, DiffusionSession


@register("cross_maps", version="0.1.0", family="diffusion", paper="arXiv:2208.01626",
          summary=(
              "Record head-averaged per-word cross-attention maps per grid (the maps A-STAR / Attend-and-"
              "Excite / DPL read)."))
@dataclasses.dataclass(frozen=True)
class CrossAttentionMaps(DiffusionComponent):
    """Record head-averaged cross-attention maps of chosen prompt words.

    Parameters
    ----------
    words
        Prompt words whose maps are recorded (case-insensitive).
    blocks
        UNet blocks whose cross-attention is recorded; empty = every block.
    """

    words: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"words": "circle,square"}
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = False
    needs_word_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.words:
            raise ParamError("cross_maps.words: name at least one prompt word")

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        crosses = [n for n, m in modules.items() if getattr(m, "is_cross_attention", False)]
        if not [n for n in crosses if not self.blocks or block_of(n) in self.blocks]:
            raise ValueError(f"cross_maps.blocks={self.blocks!r} names no cross-attention module of this denoiser "
                             f"(blocks with one: {sorted({block_of(n) for n in crosses})})")

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        return (call.is_cross and call.pass_kind == "plain" and call.spatial is not None
                and (not self.blocks or call.block in self.blocks))

    def edit_probs(self, call: DiffusionCallInfo, probs: torch.Tensor) -> torch.Tensor:
        h, w = call.spatial
        per_word = torch.stack([call.token_mask((word,), "cross_maps") for word in self.words], 1)  # (B, W, S)
        m = torch.einsum("bhts,bws->bwt", probs.float(), per_word.float()) / probs.shape[1]  # (B, W, T)
        store = call.session.state.setdefault((id(self), "maps"), {})
        total, count = store.get((h, w), (0.0, 0))
        store[(h, w)] = (total + m.reshape(m.shape[0], m.shape[1], h, w), count + 1)
        return probs

    def maps(self, session: DiffusionSession, spatial: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Word -> (B, h, w) map averaged over the recorded calls on grid ``spatial`` (default: the grid with the
        most recorded calls, ties to the larger grid); a ValueError when nothing was recorded there."""
        store = session.state.get((id(self), "maps"), {})
        if not store:
            raise ValueError("cross_maps recorded nothing: no plain-pass cross-attention call ran in this scope")
        if spatial is None:
            spatial = max(store, key=lambda k: (store[k][1], k[0] * k[1]))
        if spatial not in store:
            raise ValueError(f"cross_maps has no maps on grid {spatial}; recorded grids: {sorted(store)}")
        total, count = store[spatial]
        return {word: total[:, i] / count for i, word in enumerate(self.words)}

    def reset(self, session: DiffusionSession) -> None:
        """Forget the recorded maps (e.g. between denoising steps)."""
        session.state.pop((id(self), "maps"), None)
