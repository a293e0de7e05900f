"""Tasks of the generate-images and inpaint flows: load the model once (checking every component against its
denoiser), generate one image per (stack, source, prompt, seed) through the on-disk image cache
(tasks/image_cache.py), score the images (seconds per image always; masked-region fidelity for inpainting; metric
hooks such as the shape detector when present; CLIP score when a CLIP model is given).

The tensor work lives in components/diffusion/generate.py and components/diffusion/image_metrics.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

import registry
from components.diffusion import generate as gen
from components.diffusion import image_metrics
from components.diffusion.dispatch import attention_modules
from components.diffusion.pipeline import T2IModel, load_t2i
from infra.settings import settings
from tasks import image_cache
from tasks.diffusion import ImagePlan, Source, Stack

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass
class LoadedT2I:
    """A loaded text-to-image model, its cache digest and its denoiser layout ("plain" or "inpainting")."""

    model: T2IModel
    path: str
    digest: str
    layout: str

    @property
    def name(self) -> str:
        return Path(self.path).name


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="load t2i {path}")
def load_t2i_model(path: str, plan: ImagePlan, dtype: str = "float32") -> LoadedT2I:
    """Load the model folder and check every component of ``plan`` against its denoiser (parameters naming a
    block or head it lacks fail here, before any image is generated)."""
    import torch

    model = load_t2i(path, dtype=getattr(torch, DTYPES[dtype]))
    mods = attention_modules(model.unet)
    region = torch.ones((1, 1, *model.sample_shape[1:]))  # inpainting: region-filling components read the mask
    for stack in plan.stacks:
        for spec in stack.specs:
            comp = gen.with_region([spec.component], region)[0] if plan.sources else spec.component
            comp.check_denoiser(mods)
    layout = gen.denoiser_layout(model.unet)
    if layout == "inpainting" and not plan.sources:
        raise ValueError(f"{path}: an inpainting denoiser ({model.unet.config.in_channels} input channels) needs "
                         "a source and a mask: use the inpaint flow")
    parts = model.fingerprint_parts()
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    print(f"loaded {path}: {layout} denoiser, {model.image_size}px, weights {parts['weights'][:12]}")
    return LoadedT2I(model=model, path=path, digest=digest, layout=layout)


def cache_inputs(loaded: LoadedT2I, plan: ImagePlan, stack: Stack, source: Source | None, prompt: str,
                 seed: int) -> dict[str, Any]:
    """Everything that determines one image (the image cache's key inputs)."""
    import diffusers
    import torch

    inputs: dict[str, Any] = {
        "kind": "inpaint" if source else "generate", "model": loaded.digest, "prompt": prompt,
        "components": [{"spec": s.text, "version": s.version, "fingerprint": s.fingerprint,
                        "code_fingerprint": s.code_fingerprint} for s in stack.specs],
        "sampler_code": registry.code_fingerprint(gen.Generated), "seed": seed, "steps": plan.steps,
        "cfg_scale": plan.cfg_scale, "map_words": list(plan.map_words),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
    }
    if source is not None:
        image, mask = open_source(source)
        inputs.update(source=image_cache.image_digest(image), mask=image_cache.image_digest(mask),
                      resample=plan.resample)
    return inputs


def open_source(source: Source) -> tuple[Any, Any]:
    from PIL import Image

    with Image.open(source.image) as img, Image.open(source.mask) as mask:
        return img.convert("RGB"), mask.convert("L")


@task(cache_policy=NO_CACHE, persist_result=False,
      task_run_name="image {stack.label} | prompt {prompt_index} | seed {seed}")
def generate_image(loaded: LoadedT2I, plan: ImagePlan, stack: Stack, source: Source | None, prompt_index: int,
                   seed: int) -> dict[str, Any]:
    """One image, from the image cache when the same inputs were generated before; its record."""
    prompt = plan.prompts[prompt_index]
    inputs = cache_inputs(loaded, plan, stack, source, prompt, seed)
    root = settings().cache_dir
    entry = image_cache.lookup(root, inputs)
    cached = entry is not None
    if entry is None:
        src, mask = open_source(source) if source is not None else (None, None)
        out = gen.generate(loaded.model, prompt, [s.component for s in stack.specs], seed=seed, steps=plan.steps,
                           cfg_scale=plan.cfg_scale, map_words=plan.map_words, source=src, mask=mask,
                           resample=plan.resample)
        entry = image_cache.store(root, inputs, out.image, out.maps, out.seconds)
    print(f"{stack.label} | {prompt!r} | seed {seed}{f' | {source.name}' if source else ''}: "
          f"{'cached' if cached else 'generated'} ({entry['seconds']:.2f}s)")
    return {"stack": stack.label, "components": [s.text for s in stack.specs], "prompt": prompt,
            "prompt_index": prompt_index, "seed": seed, "source": source.name if source else None,
            "source_image": source.image if source else None, "source_mask": source.mask if source else None,
            "key": entry["key"], "png": str(entry["png"]), "maps": str(entry["maps"]) if entry["maps"] else None,
            "seconds": entry["seconds"], "cached": cached}


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="score images")
def score_images(records: list[dict[str, Any]], plan: ImagePlan) -> list[dict[str, Any]]:
    """Each record with ``metrics``: seconds_per_image (the generating run's wall time), known_mse / known_psnr
    (inpainting), the available hooks' metrics, clip_score (when ``plan.clip_model``). Skipped metrics are
    printed, with the reason."""
    from PIL import Image

    hooks, skipped = image_metrics.resolve_hooks(plan.metrics)
    for line in skipped:
        print(line)
    if not plan.clip_model:
        print("clip_score skipped: no CLIP model given (clip_model: a hub id or a local CLIPModel folder)")
    out = []
    images = []
    for r in records:
        with Image.open(r["png"]) as img:
            image = img.convert("RGB")
        images.append(image)
        metrics = {"seconds_per_image": float(r["seconds"])}
        if r["source_image"]:
            with Image.open(r["source_image"]) as src, Image.open(r["source_mask"]) as mask:
                metrics.update(image_metrics.masked_fidelity(image, src, mask))
        metrics.update(image_metrics.run_hooks(hooks, image, r["prompt"]))
        out.append({**r, "metrics": metrics})
    if plan.clip_model and out:
        scorer = image_metrics.ClipScorer(plan.clip_model)
        for r, s in zip(out, scorer.score(images, [r["prompt"] for r in out])):
            r["metrics"]["clip_score"] = s
    return out
