"""Which keys are image tokens: the visual layout of vision-language decoders and vision encoders.

The dispatcher (components/attention/session.py) patches one stack of self-attention layers per model:

- **vision-language decoders** (LLaVA ``llava``, Idefics3 ``idefics3``, SmolVLM ``smolvlm``, Qwen2-VL ``qwen2_vl``,
  Qwen2.5-VL ``qwen2_5_vl``): the language model's layers. Their vision towers keep stock attention. An image
  token is a position whose input id is the config's ``image_token_id`` (Qwen2-VL's ``video_token_id`` too: video
  frames are visual tokens for the same purpose), read from ``input_ids`` at every forward; a model called with
  ``inputs_embeds`` only has no image-token information (``CallInfo.image_keys`` is None).
- **vision encoders** (``vit``, CLIP's vision tower ``clip_vision_model``, SigLIP's ``siglip_vision_model``): their
  encoder layers, numbered in module order. Every token is a patch except the ``n_prefix`` leading ones (ViT's and
  CLIP's class token; SigLIP has none); patches are in row-major order on a ``grid`` of rows x cols.

Every other multimodal or vision configuration is refused by :func:`layout_of` before weights load (a text-only
configuration has no layout and goes through the causal-LM checks of components/modeling.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

#: model_type -> kind, the supported families
DECODERS = ("llava", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl")
ENCODERS = {"vit": 1, "clip_vision_model": 1, "siglip_vision_model": 0}  # model_type -> class tokens before patches


class UnsupportedVisionModelError(TypeError):
    """A multimodal or vision configuration outside the supported families."""


@dataclass(frozen=True)
class VisualLayout:
    """Where the image tokens of a model are.

    ``kind`` is ``decoder`` (image tokens marked in ``input_ids`` by ``image_token_ids``) or ``encoder`` (all tokens
    but the ``n_prefix`` class tokens are patches on a ``grid`` (rows, cols) read from the config's image and patch
    sizes; another input resolution gives another grid, see :meth:`grid_for`)."""

    family: str
    kind: Literal["decoder", "encoder"]
    image_token_ids: tuple[int, ...] = ()
    n_prefix: int = 0
    grid: tuple[int, int] | None = None

    def grid_for(self, n_tokens: int) -> tuple[int, int]:
        """(rows, cols) of the patch grid for a sequence of ``n_tokens`` encoder tokens: the config's grid when the
        count matches, else a square grid (``interpolate_pos_encoding`` on square images); ValueError otherwise."""
        n = n_tokens - self.n_prefix
        if self.grid is not None and self.grid[0] * self.grid[1] == n:
            return self.grid
        side = math.isqrt(max(n, 0))
        if n <= 0 or side * side != n:
            raise ValueError(f"{self.family}: {n_tokens} tokens minus {self.n_prefix} class token(s) is not a "
                             f"square patch grid, and the config's grid is {self.grid}")
        return side, side

    def image_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: which positions of ``input_ids`` (B, T) are image tokens (decoders only)."""
        ids = torch.as_tensor(self.image_token_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)


def _supported() -> str:
    return ", ".join(DECODERS) + " (vision-language decoders); " + ", ".join(ENCODERS) + " (vision encoders)"


def is_multimodal(config: Any) -> bool:
    """Does the configuration describe a model with a vision part (a vision sub-config or a vision model type)?"""
    mt = getattr(config, "model_type", "")
    return (getattr(config, "vision_config", None) is not None or mt in ENCODERS or mt in DECODERS
            or mt.endswith(("_vision_model", "_vision")) or "vision" in type(config).__name__.lower())


def layout_of(config: Any) -> VisualLayout | None:
    """The visual layout of a configuration; None for a text-only one. Raises UnsupportedVisionModelError naming
    the configuration when it has a vision part outside the supported families (config only: no weights)."""
    mt = getattr(config, "model_type", "")
    if mt in DECODERS:
        ids = [getattr(config, name, None) for name in ("image_token_id", "video_token_id")]
        if ids[0] is None:
            ids[0] = getattr(config, "image_token_index", None)
        ids = tuple(int(i) for i in ids if i is not None)
        if not ids:
            raise UnsupportedVisionModelError(f"{type(config).__name__} ({mt}) names no image_token_id")
        return VisualLayout(mt, "decoder", image_token_ids=ids)
    if mt in ENCODERS:
        size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
        grid = None
        if isinstance(size, int) and isinstance(patch, int) and patch > 0:
            grid = (size // patch, size // patch)
        return VisualLayout(mt, "encoder", n_prefix=ENCODERS[mt], grid=grid)
    if is_multimodal(config):
        raise UnsupportedVisionModelError(
            f"{type(config).__name__} (model_type={mt!r}) is not a supported vision or vision-language model; "
            f"supported: {_supported()}")
    return None


def model_class(config: Any) -> type:
    """The transformers class that loads a supported vision family (decoders: image-text-to-text; encoders: the base
    model). Config only: raises UnsupportedVisionModelError before any weights are read."""
    from transformers import AutoModel, AutoModelForImageTextToText

    layout = layout_of(config)
    if layout is None:
        raise UnsupportedVisionModelError(f"{type(config).__name__} has no vision part; supported: {_supported()}")
    auto = AutoModelForImageTextToText if layout.kind == "decoder" else AutoModel
    try:
        cls = auto._model_mapping[type(config)]
    except KeyError:
        raise UnsupportedVisionModelError(f"{type(config).__name__}: no transformers class for {layout.family}") \
            from None
    if not getattr(cls, "_supports_attention_backend", False):
        raise UnsupportedVisionModelError(
            f"{cls.__name__}: its attention does not dispatch through transformers' AttentionInterface")
    return cls


def encoder_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of a vision encoder in module order (innermost modules whose class ends in
    'Attention' and that project queries themselves)."""
    found = []
    for _, mod in model.named_modules():
        if not type(mod).__name__.endswith("Attention"):
            continue
        children = {n for n, _ in mod.named_children()}
        if children & {"q_proj", "query", "qkv"}:
            found.append(mod)
    return found
