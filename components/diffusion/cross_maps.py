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


# -- per-token map recording for the test-time optimisers (A-STAR, Dynamic Prompt Learning) -----------------------
# They need the maps of every prompt token (Attend-and-Excite's softmax runs over the tokens) and gradients
# through them, and they record only inside their own update passes (``start_recording`` ... ``token_maps``).

class CrossMapRecorder:
    """Mixin for optimisers that read their own cross-attention maps (A-STAR, DPL): validates ``blocks`` against
    the denoiser's cross-attention modules and records token maps during the optimiser's own recording pass (the
    ordinary denoising passes keep the fused kernel). The class needs a ``blocks`` tuple (empty = every block)."""

    blocks: tuple[str, ...]

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        crosses = [n for n, m in modules.items() if getattr(m, "is_cross_attention", False)]
        if not [n for n in crosses if not self.blocks or block_of(n) in self.blocks]:
            raise ValueError(f"{self.component_name}.blocks={self.blocks!r} names no cross-attention module of "
                             f"this denoiser (blocks with one: {sorted({block_of(n) for n in crosses})})")

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        return (call.is_cross and call.pass_kind == "plain" and call.spatial is not None
                and is_recording(self, call.session) and (not self.blocks or call.block in self.blocks))

    def edit_probs(self, call: DiffusionCallInfo, probs: torch.Tensor) -> torch.Tensor:
        record_token_maps(self, call, probs)
        return probs


def start_recording(owner: object, session: DiffusionSession) -> None:
    """Forget ``owner``'s token maps and record the cross-attention calls that follow."""
    session.state[(id(owner), "token_maps")] = {}
    session.state[(id(owner), "recording")] = True


def stop_recording(owner: object, session: DiffusionSession) -> None:
    session.state[(id(owner), "recording")] = False


def is_recording(owner: object, session: DiffusionSession) -> bool:
    return bool(session.state.get((id(owner), "recording"), False))


def record_token_maps(owner: object, call: DiffusionCallInfo, probs: torch.Tensor) -> None:
    """Add one call's head-averaged (B, S, h, w) map to ``owner``'s store of its grid (autograd kept)."""
    h, w = call.spatial
    m = probs.float().mean(1).transpose(1, 2).reshape(probs.shape[0], probs.shape[-1], h, w)  # (B, S, h, w)
    store = call.session.state.setdefault((id(owner), "token_maps"), {})
    total, count = store.get((h, w), (0.0, 0))
    store[(h, w)] = (total + m, count + 1)


def token_maps(owner: object, session: DiffusionSession, resolution: int = 0, who: str = "") -> torch.Tensor:
    """(B, S, h, w) maps averaged over the recorded calls of one grid: ``resolution`` x ``resolution``, or with
    ``resolution`` 0 the grid with the most recorded calls, ties to the coarser grid (16 x 16 on Stable
    Diffusion 1.x at 512 px, Attend-and-Excite's ``attention_res``)."""
    store = session.state.get((id(owner), "token_maps"), {})
    if not store:
        raise ValueError(f"{who}: no cross-attention call was recorded in the update pass")
    key = min(store, key=lambda k: (-store[k][1], k[0] * k[1])) if resolution == 0 else (resolution, resolution)
    if key not in store:
        raise ValueError(f"{who}.resolution={resolution}: no cross-attention call on a {key[0]}x{key[1]} grid; "
                         f"recorded grids: {sorted(store)}")
    total, count = store[key]
    return total / count


def softmax_over_text(maps: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """Attend-and-Excite's normalisation: (B, S, h, w) -> softmax over the tokens 1..S-2 of ``temperature`` x
    the map (start token and last position left out, returned as zeros), per cell."""
    out = torch.zeros_like(maps)
    out[:, 1:-1] = torch.softmax(maps[:, 1:-1] * temperature, dim=1)
    return out


def gaussian_smooth(maps: torch.Tensor, sigma: float = 0.5, kernel_size: int = 3) -> torch.Tensor:
    """(..., h, w) maps smoothed as Attend-and-Excite's ``GaussianSmoothing`` does: a normalised separable kernel
    ``exp(-((x - c) / (2 sigma))^2)`` (its exponent, not the textbook 2 sigma^2), reflect padding."""
    if sigma <= 0:
        return maps
    x = torch.arange(kernel_size, dtype=maps.dtype, device=maps.device) - (kernel_size - 1) / 2
    g = torch.exp(-((x / (2 * sigma)) ** 2))
    k2 = g[:, None] * g[None, :]
    k2 = (k2 / k2.sum())[None, None]  # (1, 1, k, k)
    shape = maps.shape
    flat = maps.reshape(-1, 1, shape[-2], shape[-1])
    pad = kernel_size // 2
    flat = torch.nn.functional.pad(flat, (pad, pad, pad, pad), mode="reflect")
    return torch.nn.functional.conv2d(flat, k2).reshape(shape)


def word_token_masks(rows: list, words: tuple[str, ...], n_tokens: int, device=None) -> torch.Tensor:
    """(B, W, S) bool: the token positions of each of ``words`` in each row's ``WordTokens``."""
    mask = torch.zeros(len(rows), len(words), n_tokens, dtype=torch.bool, device=device)
    wanted = [w.lower() for w in words]
    for b, entries in enumerate(rows):
        for word, positions in entries:
            if word.lower() in wanted:
                for p in positions:
                    if 0 <= p < n_tokens:
                        mask[b, wanted.index(word.lower()), p] = True
    return mask
