"""AttentionPatch: the family base of training-free attention edits.

A patch declares *how* it acts, so the dispatcher keeps the fused SDPA kernel wherever the math allows:

- ``query_scale(call)``: per-head multiplier on the queries (0 makes a head's logits all zero = uniform).
- ``key_bias(call)``: an additive logit bias ``coef[h] * feature[j]`` (sparse index form or dense form, see
  :class:`~components.attention.types.KeyBias`). One logit bias equals a whole family of probability edits
  ("scale key j's attention by g and renormalise" = "+log g on logit j").
- ``post_attention(call, q, k, v, out, lse, biases)``: a probability-level edit with a fast form, computed only for
  its own heads after the fused kernel (set ``edits_probabilities = True`` and ``has_fast_path = True``).
- ``edit_probs(call, probs)``: the same edit on materialised probabilities (B, H, T, S); the fallback path and
  ``output_attentions`` use it.
- ``edit_output(call, out)``: edit per-head outputs (B, H, T, D) before the output projection.

Every hook returns ``None`` (or its input unchanged) when it has nothing to do for this call. Patches are applied
in a scope: ``with patch.applied(model): ...`` (several at once with
:func:`components.attention.session.applied`).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch

from components.attention.session import Force, PatchSession, applied
from components.attention.types import CallInfo, KeyBias
from components.base import Component
from components.heads import HeadSet
from components.search import HeadSearch


@dataclasses.dataclass(frozen=True)
class AttentionPatch(Component):
    """Base class of attention patches (family ``patch``)."""

    onnx_exportable: ClassVar[bool] = True
    edits_probabilities: ClassVar[bool] = False
    has_fast_path: ClassVar[bool] = True
    needs_lse: ClassVar[bool] = False
    needs_inputs: ClassVar[bool] = False  # reads per-batch inputs (texts/spans) set with session.set_inputs
    # head_search: set to a components.search.HeadSearch to make the patch searchable by the head-search flow (what
    # the single-head trials use, how heads are selected, which parameters are searched afterwards); None: not
    # searchable. The patch must have a ``heads: HeadSet`` parameter.
    head_search: ClassVar[HeadSearch | None] = None

    # -- scope ----------------------------------------------------------------------------------------------------
    @contextmanager
    def applied(self, model: torch.nn.Module, *, force: Force = None) -> Iterator[PatchSession]:
        """Apply this patch to ``model`` inside the block; restores the model on exit, exceptions included."""
        with applied(model, self, force=force) as session:
            yield session

    def check_model(self, config: Any) -> None:
        """Validate parameters against a model config (head ranges...); raise ValueError naming the problem."""
        heads = getattr(self, "heads", None)
        if isinstance(heads, HeadSet):
            n_layers, n_heads = model_shape(config)
            heads.validate(n_layers, n_heads, what=f"{self.component_name}.heads")

    # -- which layers ---------------------------------------------------------------------------------------------
    def acts_on_layer(self, layer: int, n_layers: int) -> bool:
        heads = getattr(self, "heads", None)
        if isinstance(heads, HeadSet):
            return any(pl in (-1, layer) for pl, _ in heads.pairs)
        return True

    def head_indices(self, call: CallInfo) -> list[int]:
        heads = getattr(self, "heads", None)
        if isinstance(heads, HeadSet):
            return heads.heads_in_layer(call.layer, call.n_heads)
        return list(range(call.n_heads))

    def head_vector(self, call: CallInfo, on: float, off: float, dtype=torch.float32) -> torch.Tensor:
        """(H,) tensor with ``on`` at this patch's heads of the layer and ``off`` elsewhere."""
        vec = torch.full((call.n_heads,), off, dtype=dtype, device=call.device)
        idx = self.head_indices(call)
        if idx:
            vec[idx] = on
        return vec

    def active(self, call: CallInfo) -> bool:
        """Whether the patch acts on this call (override for phase-restricted patches)."""
        return bool(self.head_indices(call))

    # -- hooks (defaults: do nothing) -----------------------------------------------------------------------------
    def query_scale(self, call: CallInfo) -> torch.Tensor | None:
        return None

    def key_bias(self, call: CallInfo) -> KeyBias | None:
        return None

    def post_attention(self, call: CallInfo, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor | None, biases: list[KeyBias]) -> torch.Tensor:
        return out

    def edit_probs(self, call: CallInfo, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def edit_output(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        return out


def model_shape(config: Any) -> tuple[int, int]:
    """(num_layers, num_attention_heads) of a transformers config (text config for multimodal models)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not n_layers or not n_heads:
        raise ValueError(f"cannot read the number of layers/heads from {type(config).__name__}")
    return int(n_layers), int(n_heads)
