"""Metrics of generated images that the generate-images and inpaint flows log: masked-region fidelity, CLIP score
and pluggable per-image hooks (the coloured-shape detector). Seconds per image are measured by ``generate``.

Masked-region fidelity (inpainting): on the pixels outside the mask (the known region), at the model's image size,
with pixels in [0, 1]:

    known_mse  = mean over known pixels and channels of (out - source)^2
    known_psnr = 10 log10(1 / known_mse)            (+inf when the known region is reproduced exactly)

A blending sampler on a pixel-space model reproduces the known region exactly (known_mse 0) by construction
(components/diffusion/inpaint.py); a latent model or an inpainting denoiser without blending does not.

CLIP score: ``100 * max(cos(E_image, E_text), 0)`` with a transformers ``CLIPModel`` (the torchmetrics
``CLIPScore`` definition; Hessel et al., "CLIPScore", arXiv:2104.08718, weight their variant by 2.5 instead of 100).

Hooks: a metric name maps to ``"module:function"``; the function takes (PIL image, prompt) and returns
{name: float}. Built in: ``shapes`` -> ``components.benchmarks._shape_detect:score_image`` (the deterministic
coloured-shape detector: attribute binding, object count, position). A hook whose module is absent is skipped with a
message naming it (``resolve_hooks``); a user may name any importable ``module:function``.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

HOOKS = {"shapes": "components.benchmarks._shape_detect:score_image"}


def masked_fidelity(image: Any, source: Any, mask: Any) -> dict[str, float]:
    """known_mse / known_psnr of ``image`` against ``source`` outside ``mask`` (PIL images; mask white = filled;
    source and mask are resized to the image's size: bicubic / nearest, as the sampler saw them)."""
    from PIL import Image

    size = image.size
    out = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0  # (H, W, 3)
    src = np.asarray(source.convert("RGB").resize(size, resample=Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    keep = np.asarray(mask.convert("L").resize(size, resample=Image.Resampling.NEAREST)) < 128  # (H, W)
    if not keep.any():
        return {}
    mse = float(((out - src)[keep] ** 2).mean())
    return {"known_mse": mse, "known_psnr": math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)}


def check_hook(spec: str) -> str:
    """A hook name (``HOOKS``) or ``module:function`` -> its ``module:function``; ValueError when malformed."""
    target = HOOKS.get(spec, spec)
    if ":" not in target:
        raise ValueError(f"metric {spec!r}: not one of {sorted(HOOKS)} and not a 'module:function' path")
    return target


def resolve_hooks(names: Sequence[str]) -> tuple[dict[str, Callable[[Any, str], dict[str, float]]], list[str]]:
    """Importable hooks by short name (the ``HOOKS`` name, or the function's name for a ``module:function`` path),
    and one message per skipped hook (module absent or no such function)."""
    hooks, skipped = {}, []
    for name in names:
        module, _, func = check_hook(name).partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                skipped.append(f"metric {name!r} skipped: module {module} is not available")
                continue
            raise
        fn = getattr(mod, func, None)
        if not callable(fn):
            skipped.append(f"metric {name!r} skipped: {module} has no function {func}")
            continue
        hooks[name if name in HOOKS else func] = fn
    return hooks, skipped


def run_hooks(hooks: dict[str, Callable[[Any, str], dict[str, float]]], image: Any, prompt: str) -> dict[str, float]:
    """Every hook on one image; metric names are prefixed by the hook's name (``shapes/count_correct``). A hook
    with an ``applies(prompt)`` attribute is skipped for prompts it does not apply to (the shape detector scores
    only prompts in its grammar), so those images have no value for it rather than a made-up one."""
    out = {}
    for name, fn in hooks.items():
        applies = getattr(fn, "applies", None)
        if applies is not None and not applies(prompt):
            continue
        for k, v in dict(fn(image, prompt)).items():
            out[f"{name}/{k}"] = float(v)
    return out


def check_clip(model_id: str) -> None:
    """Config-only check that ``model_id`` (hub id or path) is a CLIP model; ValueError naming the problem."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"CLIP model {model_id!r} could not be read: {e}") from e
    if config.model_type != "clip":
        raise ValueError(f"CLIP model {model_id!r} is a {config.model_type!r} model, not 'clip'")


class ClipScorer:
    """CLIP score of (image, prompt) pairs with one loaded ``CLIPModel`` (formula in the module docstring)."""

    def __init__(self, model_id: str, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model_id = model_id
        self.model = CLIPModel.from_pretrained(model_id, use_safetensors=None).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model_id)

    @torch.no_grad()
    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        batch = self.processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True,
                               truncation=True)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        out = self.model(**batch)  # image_embeds, text_embeds: (N, P), L2-normalised projections
        cos = (out.image_embeds.float() * out.text_embeds.float()).sum(-1)  # (N,) the pairs' cosines
        return [float(100.0 * max(c, 0.0)) for c in cos.tolist()]
