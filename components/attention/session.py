"""Scoped attention patching through transformers' AttentionInterface.

``with applied(model, patch_a, patch_b) as session: ...`` switches the model to the ``attnflow`` attention
implementation, gives every attention module the patches that act on its layer, captures the 2-D attention mask
of each forward (for left padding), and restores the previous implementation on exit, exceptions included.
Nested scopes compose: inner patches run after outer ones.

Routing per attention call, fastest first:

1. fast path: fused SDPA with ``is_causal`` kept; query scales; dense key biases as extra channels; sparse key
   biases >= -log 2 on at most 1/64 of the keys corrected exactly from the kernel's log-sum-exp (more negative ones
   as extra channels, which stay at float32's noise floor, see ``math.LSE_MIN_BIAS``; larger key sets as extra
   channels too, which cost less then, see ``math.LSE_KEYS_PER_CHANNEL``); probability edits that implement
   ``post_attention`` (e.g. ACT, computing its statistics only for its heads); head-output edits.
2. materialised path (the fallback): when attention weights are requested (``output_attentions=True``), for
   ``softcap`` models, when a patch edits probabilities without a fast form, when two probability editors share a
   layer, or when forced (``force="materialize"``). Returns the probabilities.

``force="channels"`` keeps every key bias in the extra-channel form (the form used under torch.export);
``force="lse"`` corrects every sparse bias >= -log 2 from the log-sum-exp, however many keys it has (tests and
benchmarks of that form);
``force="bias"`` folds key biases into an additive float mask instead (slower in PyTorch, but ONNX Runtime fuses it
into ``GroupQueryAttention``, see docs/onnx.md).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import torch
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from components.attention import math as am
from components.attention import vision
from components.attention.types import CallInfo, KeyBias

if TYPE_CHECKING:  # pragma: no cover
    from components.patches.base import AttentionPatch

IMPLEMENTATION = "attnflow"
Force = Literal["lse", "channels", "bias", "materialize"] | None


class UnsupportedModelError(TypeError):
    """The model's attention does not dispatch through transformers' AttentionInterface."""


@dataclass
class PatchSession:
    """The live state of one ``applied`` scope."""

    model: torch.nn.Module
    patches: list["AttentionPatch"]
    force: Force = None
    inputs: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    attention_mask_2d: torch.Tensor | None = None
    layout: vision.VisualLayout | None = None
    image_tokens: torch.Tensor | None = None  # (B, past + new) bool, decoders: image tokens of every position seen
    layer_inputs: dict = field(default_factory=dict)  # layer -> (B, T, hidden) residual stream entering the layer

    def set_inputs(self, **inputs: Any) -> None:
        """Attach per-batch inputs (texts, offsets, spans...) that input-dependent patches read."""
        self.inputs = dict(inputs)


def attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Self-attention modules by layer index (modules with ``layer_idx`` whose class ends in 'Attention'; for a
    vision encoder, its attention modules numbered in module order, see components/attention/vision.py)."""
    if _layout(model) is not None and _layout(model).kind == "encoder":
        return dict(enumerate(vision.encoder_attention_modules(model)))
    found: dict[int, torch.nn.Module] = {}
    for _, mod in model.named_modules():
        if type(mod).__name__.endswith("Attention") and isinstance(getattr(mod, "layer_idx", None), int):
            if getattr(mod, "is_cross_attention", False):
                continue
            found.setdefault(mod.layer_idx, mod)
    return dict(sorted(found.items()))


def check_patchable(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Return the attention modules, or raise UnsupportedModelError naming the model class."""
    name = type(model).__name__
    if not isinstance(model, PreTrainedModel) or not model._can_set_attn_implementation():
        raise UnsupportedModelError(
            f"{name} cannot be patched: its attention does not dispatch through transformers' AttentionInterface"
        )
    kernel = getattr(model, "attnflow_unpatchable", None)  # set by components.kernels.base.install
    if kernel:
        raise UnsupportedModelError(
            f"{name} uses the attention kernel {kernel}: attnflow patches edit softmax attention and do not apply to it"
        )
    try:
        vision.layout_of(model.config)  # a multimodal model outside the supported families is named here
    except vision.UnsupportedVisionModelError as e:
        raise UnsupportedModelError(f"{name} cannot be patched: {e}") from None
    mods = attention_modules(model)
    if not mods:
        raise UnsupportedModelError(f"{name} cannot be patched: no self-attention modules with a layer_idx found")
    return mods


def _layout(model: torch.nn.Module) -> vision.VisualLayout | None:
    return vision.layout_of(model.config) if hasattr(model, "config") else None


def _install_impl() -> None:
    # A named implementation, used only by models switched to it inside an ``applied`` scope.
    if IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(IMPLEMENTATION, attnflow_attention)
        AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


@contextmanager
def applied(model: torch.nn.Module, *patches: "AttentionPatch", force: Force = None) -> Iterator[PatchSession]:
    """Apply patches to ``model`` for the duration of the block; everything is restored on exit."""
    mods = check_patchable(model)
    config = model.config
    n_layers = len(mods)
    n_heads = config.get_text_config().num_attention_heads
    for p in patches:
        p.check_model(config)  # validation before anything changes
    session = PatchSession(model=model, patches=list(patches), force=force, layout=_layout(model))
    _install_impl()
    previous = config._attn_implementation
    stack: list[PatchSession] = getattr(model, "_attnflow_stack", None) or []
    stack.append(session)
    handles = []
    try:
        model._attnflow_stack = stack
        for layer, mod in mods.items():
            mod._attnflow_stack = stack
            mod._attnflow_layers = (n_layers, n_heads)
            mod._attnflow_layer = layer
        handles.append(_capture_mask_hook(model, session))
        if any(getattr(p, "needs_layer_inputs", False) for s in stack for p in s.patches):  # outer scopes too
            handles.extend(_capture_layer_inputs(model, mods, session))
        for p in patches:  # module hooks of patches that act outside attention (e.g. residual-stream steering)
            if hasattr(p, "install_hooks"):
                handles.extend(p.install_hooks(model, mods, session))
        if previous != IMPLEMENTATION:
            model.set_attn_implementation(IMPLEMENTATION)
        yield session
    finally:
        for h in handles:
            h.remove()
        stack.remove(session)
        if not stack:
            for mod in mods.values():
                for attr in ("_attnflow_stack", "_attnflow_layers", "_attnflow_layer"):
                    if hasattr(mod, attr):
                        delattr(mod, attr)
            if hasattr(model, "_attnflow_stack"):
                del model._attnflow_stack
        if model.config._attn_implementation != previous and previous != IMPLEMENTATION:
            model.set_attn_implementation(previous)


def _capture_mask_hook(model: torch.nn.Module, session: PatchSession):
    """Record the 2-D attention mask of every forward (generate passes the mask for past + new tokens)."""
    base = getattr(model, "base_model", model)
    sig = inspect.signature(base.forward)

    def hook(_module, args, kwargs):
        try:
            bound = sig.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = kwargs
        mask = bound.get("attention_mask")
        session.attention_mask_2d = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        if session.layout is not None and session.layout.kind == "decoder":
            session.image_tokens = _track_image_tokens(session, bound.get("input_ids"), _cache_of(bound))

    return base.register_forward_pre_hook(hook, with_kwargs=True)


def _capture_layer_inputs(model: torch.nn.Module, mods: dict[int, torch.nn.Module], session: PatchSession) -> list:
    """Record the hidden state entering each patched layer (the input of the block that holds the attention module,
    before its norm), for patches with ``needs_layer_inputs`` (e.g. VAR's massive-activation sink test)."""
    parents = {}
    for _, parent in model.named_modules():
        for child in parent.children():
            for layer, mod in mods.items():
                if child is mod:
                    parents[layer] = parent
    if len(parents) != len(mods):
        raise UnsupportedModelError(f"{type(model).__name__}: cannot find the blocks holding the attention modules")

    def make(layer: int):
        def hook(_module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            session.layer_inputs[layer] = h
        return hook

    return [parents[layer].register_forward_pre_hook(make(layer), with_kwargs=True) for layer in parents]


def _cache_of(bound: dict):
    """The KV cache argument of a forward (``cache`` in transformers >= 5.x, ``past_key_values`` before)."""
    cache = bound.get("cache")
    return cache if cache is not None else bound.get("past_key_values")


def _track_image_tokens(session: PatchSession, input_ids, cache) -> torch.Tensor | None:
    """(B, past + new) bool image-token flags: reset at a prefill, extended at each cached step. None when the forward
    has no ``input_ids`` (embeddings only) or continues a cache this scope did not see from its prefill."""
    past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        return None
    new = session.layout.image_tokens(input_ids)  # (B, T)
    if past == 0:
        return new
    seen = session.image_tokens
    if seen is None or seen.shape[0] != new.shape[0] or seen.shape[1] != past:
        return None
    return torch.cat([seen, new], dim=1)


def _image_keys(session: PatchSession, batch: int, kv_len: int, device: torch.device) -> torch.Tensor | None:
    """(B, S) bool image-key flags of one attention call (the last S positions seen; right-padded with False under
    a static cache longer than the sequence)."""
    layout = session.layout
    if layout is None:
        return None
    if layout.kind == "encoder":
        flags = torch.ones(batch, kv_len, dtype=torch.bool, device=device)
        flags[:, : layout.n_prefix] = False
        return flags
    seen = session.image_tokens
    if seen is None or seen.shape[0] != batch:
        return None
    seen = seen[:, -kv_len:].to(device)
    return torch.nn.functional.pad(seen, (0, kv_len - seen.shape[1]))


# ---------------------------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------------------------


def attnflow_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    stack: Sequence[PatchSession] | None = getattr(module, "_attnflow_stack", None)
    if not stack:  # a module outside any scope (e.g. a second model sharing the config): stock SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    session = stack[-1]
    layer = module._attnflow_layer
    n_layers, _ = module._attnflow_layers
    patches = [p for s in stack for p in s.patches if p.acts_on_layer(layer, n_layers)]
    force = next((s.force for s in reversed(stack) if s.force), None)

    b, h, q_len, d = query.shape
    kv_len = key.shape[2]
    scaling = float(scaling if scaling is not None else d**-0.5)
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2  # additive float mask -> bool
    is_causal = q_len > 1 and mask is None and getattr(module, "is_causal", True)
    if is_causal and kv_len > q_len:  # empty static-cache prefill: crop as stock SDPA does
        key, value, kv_len = key[:, :, :q_len], value[:, :, :q_len], q_len
    call = CallInfo(
        layer=layer, n_heads=h, n_kv_heads=key.shape[1], batch=b, q_len=q_len, kv_len=kv_len, scaling=scaling,
        mask=mask, is_causal=is_causal, attention_mask_2d=session.attention_mask_2d, session=session,
        device=query.device, image_keys=_image_keys(session, b, kv_len, query.device),
    )

    # 1. Query scales (e.g. uniform head masking = zero query) and key biases.
    for p in patches:
        scale = p.query_scale(call)
        if scale is not None:
            query = query * scale.to(query.dtype)[None, :, None, None]
    biases = [bias for p in patches if (bias := p.key_bias(call)) is not None]
    prob_editors = [p for p in patches if p.edits_probabilities and p.active(call)]

    softcap = kwargs.get("softcap")
    materialize = (
        force == "materialize"
        or bool(kwargs.get("output_attentions"))
        or softcap is not None
        or len(prob_editors) > 1
        or any(not p.has_fast_path for p in prob_editors)
    )
    if materialize:
        out, probs = _materialized(query, key, value, call, biases, prob_editors, softcap)
    else:
        out, probs = _fast(query, key, value, call, biases, prob_editors, force), None

    # 3. Head-output edits on (B, H, T, D).
    for p in patches:
        out = p.edit_output(call, out)
    return out.transpose(1, 2).contiguous(), probs  # (B, T, H, D)


def _fast(query, key, value, call: CallInfo, biases: list[KeyBias], prob_editors, force: Force) -> torch.Tensor:
    """Fused SDPA plus exact corrections."""
    use_lse = am.lse_available(query) and force not in ("channels", "bias")
    # sparse biases below -log 2 take the channel form: see am.LSE_MIN_BIAS (precision); so do large key sets, for
    # which the channel is the cheaper exact form (am.LSE_KEYS_PER_CHANNEL), unless force="lse"
    sparse = [b for b in biases if am.lse_correctable(b) and (force == "lse" or am.lse_cheaper(b, call.kv_len))] \
        if use_lse else []
    dense = [b for b in biases if b not in sparse]
    d = value.shape[-1]
    q, k, v, mask, is_causal = query, key, value, call.mask, call.is_causal
    if dense and force == "bias":
        mask, is_causal = am.bias_mask(dense, call, query.dtype), False  # (B, H, T, S) additive
    elif dense:
        q, k, v = am.append_bias_channels(q, k, v, dense, call.scaling)
    need_lse = bool(sparse) or any(p.needs_lse for p in prob_editors)
    out, lse = am.sdpa(q, k, v, mask, is_causal, call.scaling, want_lse=need_lse and use_lse)
    out = out[..., :d]  # drop the bias channels
    if sparse:
        extra = am.dense_bias_logits(dense, call.batch, call.kv_len, torch.float32) if dense else None
        out = am.correct_sparse_biases(out, lse, query, key, value, sparse, call, extra_logits=extra)
        if prob_editors:  # the editor needs the lse of the biased logits: log(Z') = lse + log(1 + sum w)
            lse = None
    for p in prob_editors:
        out = p.post_attention(call, query, key, value, out, lse, biases)
    return out


def _materialized(query, key, value, call: CallInfo, biases, prob_editors, softcap):
    """Reference-style attention: logits + biases -> softmax -> probability edits -> P V."""
    logits = am.materialized_logits(query, key, call, biases, softcap)  # (B, H, T, S)
    for p in prob_editors:
        logits = p.edit_logits(call, logits)
    probs = am.softmax_rows(logits)
    for p in prob_editors:
        probs = p.edit_probs(call, probs)
    n_rep = query.shape[1] // key.shape[1]
    out = torch.matmul(probs.to(value.dtype), am.repeat_kv(value, n_rep))  # (B, H, T, D)
    return out, probs.to(query.dtype)
