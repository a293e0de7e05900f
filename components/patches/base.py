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
- ``edit_logits(call, logits)``: a logit-level edit on materialised logits, before the softmax (for edits that
  depend on the logits' absolute values, e.g. ``l + alpha |l|``); probability editors only.
- ``edit_output(call, out)``: edit per-head outputs (B, H, T, D) before the output projection.
- ``model_hooks(model, session)``: module hooks for an edit outside attention (``rep_shift`` adds a vector to a
  decoder layer's output, Wings adds its learners after ``o_proj``); ``applied`` installs them after every
  ``check_model`` and removes them on exit, exceptions included.

``query_scale`` and ``key_bias`` return ``None`` when they have nothing to do for a call; the three edit hooks
return their input unchanged. Each hook's docstring gives its argument shapes and when it is called. Patches are
applied in a scope: ``with patch.applied(model): ...`` (several at once with
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
    """Base class of attention patches (family ``patch``).

    The dispatcher (:func:`components.attention.session.attnflow_attention`) calls the hooks of every patch whose
    ``acts_on_layer`` is true, once per attention call, in this order: ``query_scale`` and ``key_bias`` of every
    patch; then, for the probability editors (``edits_probabilities`` and ``active(call)``), either
    ``post_attention`` after the fused kernel (fast path) or ``edit_probs`` on materialised probabilities
    (fallback); finally ``edit_output`` of every patch. Shapes: B batch rows, H query heads, Hkv key/value heads
    (H is a multiple of Hkv), T queries of this call (the prompt in the prefill, 1 per decoding step), S keys
    (cached + new), D head dimension. ``call`` (:class:`~components.attention.types.CallInfo`) holds the layer,
    these sizes, the mask, the 2-D attention mask (left padding) and per-scope state.

    Capability flags (class attributes, read by the dispatcher, tasks and flows):

    - ``onnx_exportable``: the patch can be traced by torch.export (otherwise ``onnx_reason`` says why not).
    - ``edits_probabilities``: the patch edits attention probabilities (``post_attention`` / ``edit_probs``).
    - ``has_fast_path``: ``post_attention`` implements the edit; when False, a call where the patch is active takes
      the materialised path.
    - ``needs_lse``: ``post_attention`` wants the kernel's log-sum-exp (it still receives None where the kernel
      cannot give one).
    - ``needs_inputs``: the patch reads per-batch inputs (texts, spans) attached with ``session.set_inputs``.
    - ``needs_images`` (from :class:`~components.base.Component`): the patch acts on image tokens; ``check_model``
      refuses a configuration without a vision part, so a text-only model fails before any compute.
    """

    onnx_exportable: ClassVar[bool] = True
    edits_probabilities: ClassVar[bool] = False
    has_fast_path: ClassVar[bool] = True
    needs_lse: ClassVar[bool] = False
    needs_inputs: ClassVar[bool] = False  # reads per-batch inputs (texts/spans) set with session.set_inputs
    needs_layer_inputs: ClassVar[bool] = False  # reads call.layer_input (the residual stream entering the layer)
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
        if self.needs_images:
            check_vision_config(config, self.component_name)
        heads = getattr(self, "heads", None)
        if isinstance(heads, HeadSet):
            n_layers, n_heads = model_shape(config)
            heads.validate(n_layers, n_heads, what=f"{self.component_name}.heads")

    def model_hooks(self, model: torch.nn.Module, session: PatchSession) -> list:
        """Extra module hooks for patches that act outside the attention function (e.g. Wings' learners after
        ``o_proj``); ``applied`` registers them after ``check_model`` and removes the returned handles on exit. The
        default adds none."""
        return []

    # -- which layers ---------------------------------------------------------------------------------------------
    def acts_on_layer(self, layer: int, n_layers: int) -> bool:
        """Whether the dispatcher gives this layer's attention calls to the patch at all (default: the layers named
        by a ``heads`` field, every layer without one)."""
        heads = getattr(self, "heads", None)
        if isinstance(heads, HeadSet):
            return any(pl in (-1, layer) for pl, _ in heads.pairs)
        return True

    def head_indices(self, call: CallInfo) -> list[int]:
        """Query-head indices of ``call.layer`` the patch edits (a ``heads`` field's heads, or all heads)."""
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
        """Per-head multiplier on the queries of this call, on every path.

        Parameters
        ----------
        call : CallInfo
            The attention call (layer, sizes, masks). Called whether or not ``active(call)`` holds: a patch that
            acts only in some phases checks that itself.

        Returns
        -------
        torch.Tensor or None
            (H,) factors, applied as ``q * scale[None, :, None, None]`` on q (B, H, T, D) before the logits, so a
            head's logits are multiplied by its factor (0 = all logits 0 = uniform attention over the visible keys,
            1 = unchanged). ``None``: the queries are left alone (the default).
        """
        return None

    def key_bias(self, call: CallInfo) -> KeyBias | None:
        """An additive logit bias ``coef[h] * feature[b, j]`` for this call, on every path.

        Parameters
        ----------
        call : CallInfo
            The attention call. Called whether or not ``active(call)`` holds.

        Returns
        -------
        KeyBias or None
            ``coef`` (H,) or (B, H) (0 for heads left alone) and exactly one feature: ``index`` (B, K) long key
            positions receiving ``coef`` (sparse form; -1 = padding entry or a key no longer cached), or ``keys``
            (B, S) float feature per key (dense form). The dispatcher picks how to apply it (log-sum-exp correction,
            an extra head-dim channel, or an additive mask); every form equals adding the bias to the logits before
            the softmax, which is what probability editors later see. ``None``: no bias (the default).
        """
        return None

    def post_attention(self, call: CallInfo, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor | None, biases: list[KeyBias]) -> torch.Tensor:
        """A probability edit computed after the fused kernel, without the attention matrix (fast path).

        Called only when ``edits_probabilities`` and ``has_fast_path`` are set, ``active(call)`` holds and the call
        takes the fast path (no ``output_attentions``, no soft-capping, no other active probability editor on the
        layer, no ``force="materialize"``). Must equal ``edit_probs`` followed by P @ V.

        Parameters
        ----------
        call : CallInfo
            The attention call.
        q : torch.Tensor
            (B, H, T, D) queries, query scales applied, without bias channels.
        k, v : torch.Tensor
            (B, Hkv, S, D) keys and (B, Hkv, S, Dv) values, not repeated for grouped-query attention: query head h
            reads key/value head ``h // (H // Hkv)``.
        out : torch.Tensor
            (B, H, T, Dv) the fused kernel's output, every key bias of the call already included.
        lse : torch.Tensor or None
            (B, H, T) float32 log-sum-exp over the keys of the logits the kernel computed (query scales and
            channel-form biases included). ``None`` when the patch did not ask for it (``needs_lse``), when the
            kernel cannot return it (non-CPU device, torch.export, ``force="channels"``/``"bias"``), or when sparse
            biases were corrected after the kernel (its log-sum-exp no longer matches ``out``); the patch then falls
            back to computing what it needs (e.g. materialising its own heads' probabilities).
        biases : list of KeyBias
            Every key bias of this call (from all patches on the layer), already in ``out``; a patch that recomputes
            logits adds them (``components.attention.math.dense_bias_logits``).

        Returns
        -------
        torch.Tensor
            (B, H, T, Dv) the edited output; heads the patch does not edit are returned unchanged. The default
            returns ``out`` (no edit).
        """
        return out

    def edit_logits(self, call: CallInfo, logits: torch.Tensor) -> torch.Tensor:
        """A logit edit on materialised logits, before the softmax and every ``edit_probs`` (fallback path).

        Called only when ``edits_probabilities`` is set, ``active(call)`` holds and the call takes the materialised
        path. ``logits`` (B, H, T, S) float32 or wider: scaled q.k, query scales and key biases applied, masked
        entries -inf (an edit must leave those -inf). Returns the edited logits; the default returns them unchanged.
        """
        return logits

    def edit_probs(self, call: CallInfo, probs: torch.Tensor) -> torch.Tensor:
        """The probability edit on materialised attention (the fallback path and ``output_attentions``).

        Called only when ``edits_probabilities`` is set, ``active(call)`` holds and the call takes the materialised
        path; several editors on one layer run in the order their patches were applied.

        Parameters
        ----------
        call : CallInfo
            The attention call.
        probs : torch.Tensor
            (B, H, T, S) softmax probabilities, float32 or wider, query scales and every key bias applied (and the
            edits of earlier editors); masked keys are 0, each row of a query that sees a key sums to 1.

        Returns
        -------
        torch.Tensor
            (B, H, T, S) edited probabilities (rows should still sum to 1); they multiply V and are what
            ``output_attentions`` returns. The default returns ``probs`` (no edit); there is no ``None`` here.
        """
        return probs

    def edit_output(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        """Edit per-head attention outputs before the output projection, on every path.

        Parameters
        ----------
        call : CallInfo
            The attention call. Called whether or not ``active(call)`` holds.
        out : torch.Tensor
            (B, H, T, D) each head's context vector (probabilities @ V, all probability edits included), in the
            model's dtype.

        Returns
        -------
        torch.Tensor
            (B, H, T, D) the edited outputs (e.g. a head zeroed or mixed with a stored vector). The default returns
            ``out`` unchanged; there is no ``None`` here.
        """
        return out

def check_vision_config(config: Any, name: str) -> None:
    """Raise ParamError when ``config`` has no vision part (``name`` acts on image tokens); config only."""
    from components.attention.vision import is_multimodal
    from components.base import ParamError

    if not is_multimodal(config):
        raise ParamError(f"{name} acts on image tokens and needs a vision-language model; "
                         f"{type(config).__name__} (model_type={getattr(config, 'model_type', '?')!r}) is text-only")


def model_shape(config: Any) -> tuple[int, int]:
    """(num_layers, num_attention_heads) of a transformers config (text config for multimodal models)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not n_layers or not n_heads:
        raise ValueError(f"cannot read the number of layers/heads from {type(config).__name__}")
    return int(n_layers), int(n_heads)
