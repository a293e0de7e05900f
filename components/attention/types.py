"""Small value types shared by the attention dispatcher and the patches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from components.attention.session import PatchSession


@dataclass(eq=False)  # compared by identity: field equality would compare tensors (ambiguous truth value)
class KeyBias:
    """An additive logit bias that factorises as ``bias[b, h, j] = coef[(b,) h] * feature[b, j]``.

    Exactly one of ``index`` (sparse form) and ``keys`` (dense form) is given:

    - sparse: ``index`` (B, K) long key positions, each receiving ``coef`` (feature 1); K small (e.g. ZeroTuning's
      first real token). The dispatcher applies it after the SDPA call from the kernel's log-sum-exp, so the fast
      kernel keeps ``is_causal`` and costs O(T*K*D) extra.
    - dense: ``keys`` (B, S) float feature over every key (e.g. PASTA's "outside the user span" indicator). The
      dispatcher appends one channel to q/k/v: ``q' = [q, coef/scale]``, ``k' = [k, keys]``, ``v' = [v, 0]``.

    Both are exact: softmax(l + log(g) e_j) renormalises p_j * g, which is how the probability-space formulas of
    the papers (ZeroTuning, PASTA) become logit biases.
    """

    coef: torch.Tensor  # (H,) or (B, H)
    index: torch.Tensor | None = None  # (B, K) long
    keys: torch.Tensor | None = None  # (B, S) float

    def __post_init__(self) -> None:
        if (self.index is None) == (self.keys is None):
            raise ValueError("KeyBias needs exactly one of index (sparse) or keys (dense)")

    def coef_bh(self, batch: int) -> torch.Tensor:
        """Coefficients as (B, H)."""
        c = self.coef
        return c.unsqueeze(0).expand(batch, -1) if c.dim() == 1 else c

    def dense(self, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
        """The feature over all keys, (B, S)."""
        if self.keys is not None:
            return self.keys[:, :kv_len].to(dtype)
        idx = self.index  # (B, K); negative = padding or not in the cache
        out = torch.zeros(idx.shape[0], kv_len, dtype=dtype, device=idx.device)
        # scatter_add, not scatter: a padding entry clamped onto key 0 must add 0, never overwrite key 0's 1
        return out.scatter_add(1, idx.clamp(0, kv_len - 1), (idx >= 0).to(dtype))


@dataclass
class CallInfo:
    """What a patch may read about one attention call (one layer, one forward)."""

    layer: int
    n_heads: int
    n_kv_heads: int
    batch: int
    q_len: int
    kv_len: int
    scaling: float
    mask: torch.Tensor | None  # (B|1, 1, q, kv) bool as built by transformers' sdpa_mask, or None (causal)
    is_causal: bool
    attention_mask_2d: torch.Tensor | None  # (B, kv) 1 = real token, captured from the model's inputs
    session: "PatchSession"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # (B, S) bool: which keys are image tokens (vision-language decoders: input id == the config's image token id;
    # vision encoders: every patch, not the class token); None for text-only models or unknown (embeddings input)
    image_keys: torch.Tensor | None = None

    @property
    def past_len(self) -> int:
        return self.kv_len - self.q_len

    @property
    def is_prefill(self) -> bool:
        """True for a forward over the whole prompt (no cached keys before it)."""
        return self.past_len == 0

    @property
    def is_decode(self) -> bool:
        return self.past_len > 0

    @property
    def key_offset(self) -> int:
        """Absolute position of key index 0: > 0 when a sliding-window cache dropped the oldest keys."""
        am = self.attention_mask_2d
        return max(am.shape[1] - self.kv_len, 0) if am is not None else 0

    def first_real(self) -> torch.Tensor:
        """(B,) key index of each row's first real (non-pad) token: "key 0" under left padding; -1 when a
        sliding-window cache no longer holds it."""
        am = self.attention_mask_2d
        if am is None:
            return torch.zeros(self.batch, dtype=torch.long, device=self.device)
        idx = (am != 0).int().argmax(dim=-1).to(self.device) - self.key_offset
        return torch.where(idx >= 0, idx, -1)

    def last_real_query(self) -> torch.Tensor:
        """(B,) index (within this call's queries) of each row's last real token."""
        am = self.attention_mask_2d
        if am is None or am.shape[1] < self.kv_len:
            return torch.full((self.batch,), self.q_len - 1, dtype=torch.long, device=self.device)
        q_mask = am[:, self.past_len : self.kv_len] != 0  # (B, q)
        pos = torch.arange(self.q_len, device=q_mask.device).expand_as(q_mask)
        return torch.where(q_mask, pos, -1).max(dim=-1).values.clamp(min=0).to(self.device)

    def visible(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 1, q, K) bool: may query i see key ``index[b, k]``? Follows the mask the model built; negative
        indices (keys no longer cached) are never visible."""
        idx = index.clamp(0, self.kv_len - 1)
        in_cache = (index >= 0)[:, None, None, :]  # (B, 1, 1, K)
        if self.mask is not None:
            m = self.mask.expand(self.batch, -1, -1, -1)  # (B, 1, q, kv)
            return m.gather(3, idx[:, None, None, :].expand(-1, 1, m.shape[2], -1)) & in_cache
        qpos = torch.arange(self.q_len, device=idx.device) + self.past_len  # (q,)
        if self.is_causal or self.q_len == 1:
            vis = idx[:, None, :] <= qpos[None, :, None]  # (B, q, K)
        else:
            vis = torch.ones(idx.shape[0], self.q_len, idx.shape[1], dtype=torch.bool, device=idx.device)
        return vis[:, None] & in_cache

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the patch grid of a vision encoder's call (patches in row-major order after
        ``n_prefix`` class tokens); None for decoders and text models."""
        layout = self.session.layout
        return layout.grid_for(self.kv_len) if layout is not None and layout.kind == "encoder" else None

    @property
    def n_prefix(self) -> int:
        """Class tokens before the patches of a vision encoder (0 for decoders and text models)."""
        layout = self.session.layout
        return layout.n_prefix if layout is not None and layout.kind == "encoder" else 0

    @property
    def layer_input(self) -> torch.Tensor | None:
        """(B, T, hidden) the residual stream entering this layer's block in this forward (only for patches with
        ``needs_layer_inputs``; None otherwise)."""
        return self.session.layer_inputs.get(self.layer)

    def image_spans(self) -> list[list[tuple[int, int]]] | None:
        """Per batch row, the runs of image keys as half-open key-index spans [start, end) (one per image on
        LLaVA-style decoders, one for all patches on encoders); None when ``image_keys`` is None."""
        if self.image_keys is None:
            return None
        flags = torch.nn.functional.pad(self.image_keys.int(), (1, 1))  # (B, S + 2)
        edges = flags[:, 1:] - flags[:, :-1]  # (B, S + 1): +1 at a run's start, -1 after its end
        return [list(zip((row == 1).nonzero().flatten().tolist(), (row == -1).nonzero().flatten().tolist()))
                for row in edges]

    def require_image_keys(self, who: str) -> torch.Tensor:
        """``image_keys``, or a ValueError naming ``who`` and why there are none."""
        if self.image_keys is None:
            raise ValueError(
                f"{who} acts on image tokens, but this attention call has none: the model is not a supported "
                "vision(-language) model, or it was called without input_ids (embeddings only) or with a KV cache "
                "whose prefill ran outside the patch scope")
        return self.image_keys

    def state(self, owner: Any) -> dict:
        """Mutable per-(patch, layer) state kept for the life of the ``applied`` scope (e.g. running sums)."""
        return self.session.state.setdefault((id(owner), self.layer), {})

    @property
    def inputs(self) -> dict:
        """Per-batch inputs the caller attached with ``session.set_inputs`` (texts, offsets, spans...)."""
        return self.session.inputs
