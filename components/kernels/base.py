"""AttentionKernel: the family base of trainable attention kernels (training-time replacements of softmax).

A kernel is part of a model's architecture, chosen when the model is built (an LM preset's
``model: {attention: "lightning(block=64)", qk_layernorm: true}``) and kept for its whole life. :func:`install`
puts one into any transformers model whose attention dispatches through ``AttentionInterface`` (Llama, Qwen2,
Mistral, ...):

1. ``make_state(config, layer)`` builds the kernel's per-layer parameters (MoH routers, CMHA phases, TNL norm and
   gate) as an ``nn.Module`` registered as ``self_attn.attnflow_kernel``: trained, saved and loaded with the model
   (state-dict keys ``model.layers.<l>.self_attn.attnflow_kernel.*``). qk-layernorm adds
   ``self_attn.attnflow_qk_norm``.
2. ``transform(state, kind, y)`` edits q, k or v right after their projections, before RoPE (forward hooks on
   ``q_proj``/``k_proj``/``v_proj``): qk-layernorm, TNL's SiLU feature map, CMHA's phase re-scaling.
3. Kernels with ``needs_input`` see the attention input x (a forward pre-hook keeps it for the call).
4. ``attend(state, q, k, v, call)`` is the body of the registered attention function: (B, H, T, D) outputs and,
   when ``output_attentions=True``, the attention weights (B, H, T, S).
5. ``finish(state, out, call)`` edits per-head outputs before ``o_proj`` (MoH gates, TNL output norm and gate).
6. Auxiliary losses (MoH load balance) are left on the state during training; :func:`auxiliary_loss` collects them
   and the trainer adds them to the loss.

The model's config records the kernel (``config.attnflow_kernel`` = its spec, ``config.attnflow_qk_layernorm``),
so :func:`load_kernel_model` rebuilds the same architecture from a saved directory. ``observing(model, fn)`` lets
probes see (q, k) of every attention call (maximum attention logit during training).
"""

from __future__ import annotations

import dataclasses
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from components.attention import math as am
from components.attention.session import attention_modules
from components.base import Component, ParamError

IMPLEMENTATION = "attnflow_kernel"
CONFIG_KEY = "attnflow_kernel"
QK_NORM_KEY = "attnflow_qk_layernorm"
BUILTIN = ("sdpa", "eager")  # transformers implementations a preset may still name directly
RNG_LOCK = threading.RLock()  # model init + its seed are one step even when sweeps train in threads

Observer = Callable[[nn.Module, torch.Tensor, torch.Tensor, "KernelCall"], None]


@dataclass(frozen=True)
class KernelCall:
    """One attention call: shapes, scaling and the mask (bool (B, 1, q, kv), True = attend, or None = causal)."""

    layer: int
    n_layers: int
    q_len: int
    kv_len: int
    scaling: float
    mask: torch.Tensor | None
    want_probs: bool
    training: bool

    @property
    def is_causal(self) -> bool:
        return self.mask is None and self.q_len > 1 and self.q_len == self.kv_len

    def visible(self, device: torch.device) -> torch.Tensor:
        """Bool (B|1, 1, q, kv): the given mask, or causal bottom-right aligned (key j seen by query i iff
        j <= i + kv - q)."""
        if self.mask is not None:
            return self.mask
        qpos = torch.arange(self.q_len, device=device)[:, None] + (self.kv_len - self.q_len)
        return (torch.arange(self.kv_len, device=device)[None, :] <= qpos)[None, None]  # (1, 1, q, kv)


class KernelState(nn.Module):
    """Per-layer kernel parameters plus per-call scratch (the attention input x, the auxiliary loss)."""

    def __init__(self, kernel: "AttentionKernel", layer: int, n_layers: int, n_heads: int, n_kv_heads: int,
                 head_dim: int, hidden: int):
        super().__init__()
        self.kernel = kernel
        self.layer, self.n_layers = layer, n_layers
        self.n_heads, self.n_kv_heads, self.head_dim, self.hidden = n_heads, n_kv_heads, head_dim, hidden
        self.x: torch.Tensor | None = None
        self.aux: torch.Tensor | None = None

    def pop_aux(self) -> torch.Tensor | None:
        aux, self.aux = self.aux, None
        return aux


class QKNorm(nn.Module):
    """qk-layernorm: LayerNorm over each head's dimension, applied to q and k before RoPE (no biases)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.q = nn.LayerNorm(head_dim, bias=False)
        self.k = nn.LayerNorm(head_dim, bias=False)


@dataclasses.dataclass(frozen=True)
class AttentionKernel(Component):
    """Base class of attention kernels (family ``kernel``)."""

    onnx_exportable: ClassVar[bool] = True
    needs_input: ClassVar[bool] = False  # keeps the attention input x for the call (routers, gates)
    transforms: ClassVar[tuple[str, ...]] = ()  # which of "q", "k", "v" ``transform`` edits (before RoPE)
    patchable: ClassVar[bool] = False  # attention is plain softmax over q, k: attnflow patches still apply
    stateless: ClassVar[bool] = False  # no parameters, no hooks: installs into a pretrained model and uninstalls

    # -- validation -----------------------------------------------------------------------------------------------
    def check_shape(self, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        """Raise ParamError when the kernel cannot run on this model shape."""

    # -- hooks (defaults: plain softmax attention, nothing else) ----------------------------------------------------
    def make_state(self, state: KernelState) -> None:
        """Add this layer's parameters to ``state`` (nn.Parameters / sub-modules)."""

    def transform(self, state: KernelState, kind: str, y: torch.Tensor) -> torch.Tensor:
        """Edit a projection before RoPE: y (B, T, heads, D) for ``kind`` in ``transforms``."""
        return y

    def attend(self, state: KernelState, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               call: KernelCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q (B, H, T, D), k/v (B, Hkv, S, D) -> out (B, H, T, D) and weights (B, H, T, S) if call.want_probs."""
        return softmax_attention(q, k, v, call)

    def finish(self, state: KernelState, out: torch.Tensor, call: KernelCall) -> torch.Tensor:
        """Edit per-head outputs (B, H, T, D) before o_proj."""
        return out

    # -- identity ---------------------------------------------------------------------------------------------------
    def spec_text(self) -> str:
        from registry.specs import spec_text

        return spec_text(self)


# -------------------------------------------------------------------------------------------------------------------
# Shared attention arithmetic
# -------------------------------------------------------------------------------------------------------------------


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      call: KernelCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention: fused SDPA, or materialised when the weights are asked for."""
    if not call.want_probs:
        out, _ = am.sdpa(q, k, v, call.mask if not call.is_causal else None, call.is_causal, call.scaling, False)
        if call.mask is None and not call.is_causal and 1 < call.q_len < call.kv_len:  # chunk against a cache
            out, _ = am.sdpa(q, k, v, call.visible(q.device), False, call.scaling, False)
        return out, None
    logits = scores(q, k, call).masked_fill(~call.visible(q.device), float("-inf"))  # (B, H, T, S)
    probs = am.softmax_rows(logits)
    return torch.matmul(probs.to(v.dtype), am.repeat_kv(v, q.shape[1] // k.shape[1])), probs.to(q.dtype)


def scores(q: torch.Tensor, k: torch.Tensor, call: KernelCall) -> torch.Tensor:
    """Scaled dot products q k^T * scaling, (B, H, T, S), float32 or wider."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    k = am.repeat_kv(k, q.shape[1] // k.shape[1])
    return torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * call.scaling  # (B, H, T, S)


# -------------------------------------------------------------------------------------------------------------------
# Installing a kernel into a model
# -------------------------------------------------------------------------------------------------------------------


def resolve(attention: str, qk_layernorm: bool = False) -> tuple[str, "AttentionKernel | None"]:
    """A preset's ``attention`` value -> (transformers implementation to build with, kernel or None).

    ``sdpa`` / ``eager`` keep their transformers meaning (no kernel unless qk-layernorm asks for one); anything else
    is a kernel spec (``softmax``, ``sigmoid(normalize=true)``, ``lightning(block=64)``...).
    """
    from registry.specs import parse

    text = attention.strip()
    if text in BUILTIN:
        if not qk_layernorm:
            return text, None
        if text == "eager":
            raise ParamError("model.qk_layernorm needs an attnflow kernel (e.g. attention: softmax), not eager")
        return "sdpa", _softmax()
    return "sdpa", parse(text).create("kernel")


def _softmax() -> "AttentionKernel":
    import registry

    return registry.get("softmax", family="kernel").create({})


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(IMPLEMENTATION, kernel_attention)
        AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def install(model: nn.Module, kernel: AttentionKernel, qk_layernorm: bool = False) -> nn.Module:
    """Give every attention module of ``model`` the kernel's parameters and hooks; switch to the kernel function."""
    config = model.config
    mods = attention_modules(model)
    if not mods:
        raise ParamError(f"{type(model).__name__}: no attention modules with a layer_idx to install a kernel into")
    if getattr(model, "_attnflow_kernel", None) is not None:
        raise ParamError(f"{type(model).__name__} already has the kernel {model._attnflow_kernel.spec_text()}")
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    kernel.check_shape(n_layers, n_heads, n_kv, head_dim)
    _register()
    states = []
    for layer, mod in mods.items():
        state = KernelState(kernel, layer, n_layers, n_heads, n_kv, head_dim, config.hidden_size)
        kernel.make_state(state)
        mod.add_module("attnflow_kernel", state)
        if qk_layernorm:
            mod.add_module("attnflow_qk_norm", QKNorm(head_dim))
        _add_hooks(mod, kernel, state, head_dim, qk_layernorm)
        states.append(state)
    model._attnflow_kernel = kernel
    model._attnflow_states = states
    model.attnflow_unpatchable = None if kernel.patchable else kernel.spec_text()
    setattr(config, CONFIG_KEY, kernel.spec_text())
    setattr(config, QK_NORM_KEY, bool(qk_layernorm))
    model.set_attn_implementation(IMPLEMENTATION)
    return model


def uninstall(model: nn.Module) -> nn.Module:
    """Remove a stateless kernel (training-time attention such as sf_attn): the model is a stock SDPA model again."""
    kernel = getattr(model, "_attnflow_kernel", None)
    if kernel is None:
        return model
    if not kernel.stateless:
        raise ParamError(f"the kernel {kernel.spec_text()} has parameters and hooks: it is part of the model")
    for mod in attention_modules(model).values():
        if hasattr(mod, "attnflow_kernel"):
            del mod.attnflow_kernel
    model._attnflow_kernel, model._attnflow_states, model.attnflow_unpatchable = None, [], None
    for key in (CONFIG_KEY, QK_NORM_KEY):
        if hasattr(model.config, key):
            delattr(model.config, key)
    model.set_attn_implementation("sdpa")
    return model


def _add_hooks(mod: nn.Module, kernel: AttentionKernel, state: KernelState, head_dim: int, qk_norm: bool) -> None:
    kinds = set(kernel.transforms) | ({"q", "k"} if qk_norm else set())
    for kind in sorted(kinds):
        proj = getattr(mod, f"{kind}_proj", None)
        if proj is None:
            raise ParamError(f"{type(mod).__name__} has no {kind}_proj to transform")
        proj.register_forward_hook(_projection_hook(mod, kernel, state, kind, head_dim, qk_norm))
    if kernel.needs_input:
        mod.register_forward_pre_hook(_input_hook(state), with_kwargs=True)


def _projection_hook(mod: nn.Module, kernel: AttentionKernel, state: KernelState, kind: str, head_dim: int,
                     qk_norm: bool):
    def hook(_proj: nn.Module, _args: Any, y: torch.Tensor) -> torch.Tensor:
        shape = y.shape
        heads = y.view(*shape[:-1], -1, head_dim)  # (B, T, heads, D)
        if qk_norm and kind in ("q", "k"):
            heads = getattr(mod.attnflow_qk_norm, kind)(heads)
        if kind in kernel.transforms:
            heads = kernel.transform(state, kind, heads)
        return heads.reshape(shape)

    return hook


def _input_hook(state: KernelState):
    def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        state.x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, T, C)

    return hook


def kernel_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The AttentionInterface function of every kernel: dispatch to the module's installed kernel."""
    state: KernelState = module.attnflow_kernel
    kernel = state.kernel
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2  # additive float mask -> bool
    call = KernelCall(layer=state.layer, n_layers=state.n_layers, q_len=query.shape[2], kv_len=key.shape[2],
                      scaling=float(scaling if scaling is not None else query.shape[-1] ** -0.5), mask=mask,
                      want_probs=bool(kwargs.get("output_attentions")), training=module.training)
    out, probs = kernel.attend(state, query, key, value, call)  # (B, H, T, D)
    out = kernel.finish(state, out, call)
    for observer in getattr(module, "_attnflow_observers", ()):
        observer(module, query, key, call)
    state.x = None
    return out.transpose(1, 2).contiguous(), probs  # (B, T, H, D)


def auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """Mean over layers of the auxiliary losses recorded by the last training forward (None when there are none)."""
    losses = [aux for s in getattr(model, "_attnflow_states", ()) if (aux := s.pop_aux()) is not None]
    return torch.stack(losses).mean() if losses else None


@contextmanager
def observing(model: nn.Module, observer: Observer) -> Iterator[None]:
    """Call ``observer(module, q, k, call)`` on every attention call inside the block (q/k after RoPE)."""
    mods = list(attention_modules(model).values())
    for mod in mods:
        mod._attnflow_observers = [*getattr(mod, "_attnflow_observers", ()), observer]
    try:
        yield
    finally:
        for mod in mods:
            rest = [o for o in getattr(mod, "_attnflow_observers", ()) if o is not observer]
            if rest:
                mod._attnflow_observers = rest
            elif hasattr(mod, "_attnflow_observers"):
                del mod._attnflow_observers


# -------------------------------------------------------------------------------------------------------------------
# Building and loading kernel models
# -------------------------------------------------------------------------------------------------------------------


def kernel_of(config: Any) -> tuple["AttentionKernel | None", bool]:
    """The kernel and qk-layernorm flag recorded in a config (None, False for stock models)."""
    from registry.specs import parse

    text = getattr(config, CONFIG_KEY, None)
    return (parse(text).create("kernel") if text else None), bool(getattr(config, QK_NORM_KEY, False))


def load_kernel_model(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild a model saved with a kernel (config.attnflow_kernel) and load its safetensors weights, strictly."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    kernel, qk_norm = kernel_of(config)
    if kernel is None:
        raise ParamError(f"{path} has no {CONFIG_KEY} in its config: load it as a stock model")
    with RNG_LOCK:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    install(model, kernel, qk_norm)
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected one model .safetensors file, found {len(files)}")
    load_model(model, str(files[0]), strict=True)
    return model.eval()
