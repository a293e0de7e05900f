"""Value types of the diffusion attention dispatcher: what a component reads about one attention call.

Shapes: B batch rows of this call (2B under classifier-free guidance: unconditional rows first), H heads, T query
tokens (h * w latent positions), S key tokens (T for self-attention, the prompt length for cross-attention),
D head dimension.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch

if TYPE_CHECKING:  # pragma: no cover
    from components.diffusion.base import DiffusionComponent

PASS_KINDS = ("plain", "perturbed")

# One prompt's words in order, each with the positions of its tokens in the encoded prompt (after BOS).
WordTokens = list[tuple[str, list[int]]]


@dataclass
class Runtime:
    """Per-denoiser state shared by every scope on it: filled by hooks and by the pipeline runner."""

    timestep: torch.Tensor | None = None  # what the denoiser's forward received (scalar or (B,))
    latent_shape: tuple[int, ...] | None = None  # (B, C, H, W) of the denoiser's input sample
    spatial: tuple[int, int] | None = None  # (h, w) of the Transformer2DModel now running (its 4-D input)
    pass_kind: str = "plain"  # "perturbed" inside a guidance method's extra pass
    perturber: Any = None  # the component whose extra pass is running (each guider perturbs only its own pass)
    word_tokens: list[WordTokens] | None = None  # per batch row of the cross-attention calls
    step: int | None = None  # index of the denoising step the runner is in (None outside the runner)
    n_steps: int | None = None

    @contextmanager
    def pass_of(self, kind: str, owner: Any = None) -> Iterator[None]:
        """Run the block as a pass of ``kind`` ("plain" or "perturbed") for ``owner`` (the guidance component);
        restores the previous pass on exit."""
        if kind not in PASS_KINDS:
            raise ValueError(f"pass kind {kind!r} is not one of {', '.join(PASS_KINDS)}")
        previous = (self.pass_kind, self.perturber)
        self.pass_kind, self.perturber = kind, owner
        try:
            yield
        finally:
            self.pass_kind, self.perturber = previous

    def set_word_tokens(self, rows: list[WordTokens] | None) -> None:
        """Per batch row, the prompt's words and their token positions (see ``dispatch.word_token_indices``);
        rows without a prompt (the unconditional half) hold an empty list."""
        self.word_tokens = None if rows is None else [list(r) for r in rows]


@dataclass
class DiffusionSession:
    """One ``applied`` scope: its components, the path it forces, per-scope state."""

    model: torch.nn.Module
    components: list["DiffusionComponent"]
    runtime: Runtime
    force: str | None = None  # None or "materialize"
    state: dict = field(default_factory=dict)


@dataclass
class DiffusionCallInfo:
    """What a component may read about one attention call (one Attention module, one denoiser forward)."""

    name: str  # module path, e.g. "mid_block.attentions.0.transformer_blocks.0.attn1"
    layer: int  # index of the module in the denoiser's attention-processor order
    block: str  # "down_blocks.1", "mid_block", "up_blocks.0"... (the module path's first one or two parts)
    is_cross: bool  # keys from the encoder hidden states (the prompt) rather than the image tokens
    n_heads: int
    head_dim: int
    batch: int
    q_len: int
    kv_len: int
    scale: float  # logit scale used by the materialised path (the fused kernel's default 1/sqrt(D) when equal)
    spatial: tuple[int, int] | None  # (h, w) of the query tokens (row-major), None when unknown
    timestep: torch.Tensor | None
    pass_kind: str
    word_tokens: list[WordTokens] | None  # cross-attention only: per row, words and token positions
    query: torch.Tensor  # (B, H, T, D)
    key: torch.Tensor  # (B, H, S, D)
    value: torch.Tensor  # (B, H, S, D)
    session: DiffusionSession
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    step: int | None = None  # denoising step index and count, set by the runner (None outside it)
    n_steps: int | None = None
    # joint (MMDiT) calls only: the first n_image queries / keys are image tokens, the text tokens follow
    n_image: int | None = None
    # fast path only, set before ``post_attention``: the fused kernel's float mask (the attention mask plus every
    # active score bias), broadcastable to (B, H, T, S), or None; a closed form that calls the kernel again uses it
    attn_mask: torch.Tensor | None = None

    @property
    def is_self(self) -> bool:
        return not self.is_cross

    def token_mask(self, words: tuple[str, ...] | list[str], who: str) -> torch.Tensor:
        """(B, S) bool: the key tokens of ``words`` (case-insensitive) in each row; a ValueError naming ``who``
        when the call has no word positions (not a cross-attention call, or no prompts were set)."""
        if not self.is_cross or self.word_tokens is None:
            raise ValueError(f"{who} reads prompt-word positions, but this call has none: it is a self-attention call"
                             " or the prompts' word tokens were not set (Runtime.set_word_tokens)")
        if len(self.word_tokens) != self.batch:
            raise ValueError(f"{who}: word tokens were set for {len(self.word_tokens)} rows, the call has "
                             f"{self.batch}")
        wanted = {w.lower() for w in words}
        mask = torch.zeros(self.batch, self.kv_len, dtype=torch.bool, device=self.device)
        for row, entries in enumerate(self.word_tokens):
            for word, positions in entries:
                if word.lower() in wanted:
                    for p in positions:
                        if 0 <= p < self.kv_len:
                            mask[row, p] = True
        return mask

    def state(self, owner: Any) -> dict:
        """Mutable per-(component, module) state for the life of the scope."""
        return self.session.state.setdefault((id(owner), self.layer), {})
