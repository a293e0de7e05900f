"""Validate generate-images and inpaint requests before any model loads: the model folder, the prompts (inline or a
txt / JSONL / Parquet file), the diffusion components (one stack per item, ``a(...)+b(...)`` composes), seeds,
sampler settings, metric hooks, the CLIP model, and for inpainting the source images and masks (files, or generated
scenes with one object's cell masked).

Component items: ``baseline`` (no component), a spec (``softpag(scale=2)``) or several joined by ``+`` applied
together in one scope. Every spec must name a registered ``diffusion`` component with valid parameters.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

import registry
from components.diffusion.image_metrics import check_clip, check_hook
from components.diffusion.pipeline import PARTS, is_t2i_dir
from infra.settings import settings
from registry import specs
from registry.specs import ResolvedSpec, SpecError

PROMPT_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Stack:
    """One row of the grid: the components applied together (none for the baseline)."""

    label: str
    specs: tuple[ResolvedSpec, ...] = ()

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "components": [s.record() for s in self.specs]}


@dataclass(frozen=True)
class Source:
    """An inpainting input: source image and mask files (white = fill) and where they came from."""

    name: str
    image: str
    mask: str
    origin: str


@dataclass(frozen=True)
class ImagePlan:
    """A validated request: everything the generation tasks need, no model loaded."""

    model: str
    prompts: tuple[str, ...]
    stacks: tuple[Stack, ...]
    seeds: tuple[int, ...]
    steps: int
    cfg_scale: float
    map_words: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    clip_model: str | None = None
    sources: tuple[Source, ...] = ()
    resample: int = 1

    @property
    def refs(self) -> list[str]:
        return [s.ref for st in self.stacks for s in st.specs]

    def cells(self) -> list[tuple[Stack, Source | None, int, int]]:
        """(stack, source, prompt index, seed) of every image, stack-major."""
        srcs: list[Source | None] = list(self.sources) or [None]
        return [(st, src, p, s) for st in self.stacks for src in srcs for p in range(len(self.prompts))
                for s in self.seeds]


def model_dir(model: str) -> Path:
    """A model folder path, or a name under ``$ATTNFLOW_HOME/models`` (then the checkout's ``assets/``, where the
    committed demo-t2i lives); ValueError naming what is missing."""
    p = Path(model).expanduser()
    if not p.exists() and not p.is_absolute() and "/" not in model:
        p = settings().models_dir / model
        bundled = Path(__file__).resolve().parents[1] / "assets" / model
        if not p.is_dir() and is_t2i_dir(bundled):
            p = bundled
    if not p.is_dir():
        raise ValueError(f"text-to-image model {model!r}: no folder {p} (give a model folder or a name under "
                         f"{settings().models_dir})")
    if not is_t2i_dir(p):
        missing = [part for part in PARTS if not (p / part).is_dir()]
        raise ValueError(f"{p} is not a text-to-image model folder: missing {', '.join(m + '/' for m in missing)}")
    return p


def read_prompts(path: str) -> list[str]:
    """Prompts from a .txt (one per non-empty line), .jsonl ({"prompt": ...} per line) or .parquet (a "prompt"
    column) file; ValueError naming the file and the problem."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"prompt file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    elif suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"prompt file {p} line {i}: not JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"prompt file {p} line {i}: needs a string field \"prompt\"")
            prompts.append(row["prompt"])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "prompt" not in table.column_names:
            raise ValueError(f"prompt file {p}: no \"prompt\" column (columns: {', '.join(table.column_names)})")
        prompts = [str(v) for v in table.column("prompt").to_pylist() if v is not None]
    else:
        raise ValueError(f"prompt file {p}: unknown format {suffix!r}; use one of {', '.join(PROMPT_SUFFIXES)}")
    if not prompts:
        raise ValueError(f"prompt file {p} holds no prompts")
    return prompts


def parse_stacks(items: list[str]) -> list[Stack]:
    """Component items -> stacks (see the module docstring); SpecError naming an unknown or non-diffusion
    component or a bad parameter."""
    stacks = []
    for item in items:
        for text in specs.split_top_level(item, ","):
            if text.strip() == "baseline":
                stacks.append(Stack("baseline"))
                continue
            resolved = []
            for part in specs.split_top_level(text, "+"):
                spec = specs.parse(part)
                try:
                    info = registry.get(spec.ref)
                except registry.UnknownComponentError:
                    info = None
                if info is not None and info.family != "diffusion":
                    raise SpecError(f"{spec.name} is a {info.family} component; generate-images and inpaint run "
                                    f"diffusion components ({', '.join(_diffusion_names())})")
                resolved.append(spec.resolve("diffusion"))
            stacks.append(Stack(" + ".join(r.label for r in resolved), tuple(resolved)))
    if not stacks:
        raise SpecError("give at least one component item (\"baseline\" for none)")
    labels = [s.label for s in stacks]
    if len(set(labels)) != len(labels):
        raise SpecError(f"component items repeat: {labels}")
    return stacks


def _diffusion_names() -> list[str]:
    return sorted({i.name for i in registry.all_components("diffusion")})


def _common(model: str, prompts: list[str], prompt_file: str | None, components: list[str], seeds: list[int],
            steps: int, cfg_scale: float, maps: list[str], metrics: list[str], clip_model: str | None) -> dict:
    folder = model_dir(model)
    texts = read_prompts(prompt_file) if prompt_file else [p for p in prompts if p.strip()]
    if not texts:
        raise ValueError("give at least one prompt (prompts, or prompt_file)")
    if not seeds:
        raise ValueError("give at least one seed")
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one denoising step")
    if cfg_scale < 1.0:
        raise ValueError(f"cfg_scale={cfg_scale}: use 1 (no guidance) or more")
    bad_words = [w for w in maps if not w.strip() or " " in w.strip()]
    if bad_words:
        raise ValueError(f"maps: {bad_words} are not single prompt words")
    for m in metrics:
        check_hook(m)
    if clip_model:
        check_clip(clip_model)
    return dict(model=str(folder), prompts=tuple(texts), stacks=tuple(parse_stacks(components)),
                seeds=tuple(dict.fromkeys(seeds)), steps=steps, cfg_scale=float(cfg_scale),
                map_words=tuple(w.strip() for w in maps), metrics=tuple(metrics), clip_model=clip_model or None)


@task(cache_policy=NO_CACHE, task_run_name="validate generate-images request")
def plan_images(model: str, prompts: list[str], prompt_file: str | None, components: list[str], seeds: list[int],
                steps: int = 20, cfg_scale: float = 1.0, maps: list[str] | None = None,
                metrics: list[str] | None = None, clip_model: str | None = None) -> ImagePlan:
    """Check every input of a generate-images request before any model loads."""
    return ImagePlan(**_common(model, prompts, prompt_file, components, seeds, steps, cfg_scale, maps or [],
                               metrics or [], clip_model))


@task(cache_policy=NO_CACHE, task_run_name="validate inpaint request")
def plan_inpaint(model: str, prompts: list[str], prompt_file: str | None, components: list[str], seeds: list[int],
                 images: list[str], masks: list[str], scenes: int = 0, scene_seed: int = 0, steps: int = 20,
                 cfg_scale: float = 1.0, resample: int = 1, maps: list[str] | None = None,
                 metrics: list[str] | None = None, clip_model: str | None = None) -> ImagePlan:
    """Check every input of an inpaint request before any model loads; generated scenes are written as PNGs to
    ``$ATTNFLOW_HOME/data/inpaint-scenes`` (deterministic in ``scene_seed``)."""
    common = _common(model, prompts, prompt_file, components, seeds, steps, cfg_scale, maps or [], metrics or [],
                     clip_model)
    if resample < 1:
        raise ValueError(f"resample={resample}: need at least 1 (1 = no resampling jumps)")
    if images:  # scenes are ignored when source images are given
        sources = file_sources(images, masks)
    elif masks:
        raise ValueError("masks were given without source images")
    elif scenes > 0:
        sources = scene_sources(scenes, scene_seed)
    else:
        raise ValueError("give source images with masks, or scenes > 0 to generate sources")
    return ImagePlan(**common, sources=tuple(sources), resample=resample)


def file_sources(images: list[str], masks: list[str]) -> list[Source]:
    """One source per image; ``masks`` has one file per image, or one for all. Files must open as images."""
    from PIL import Image, UnidentifiedImageError

    if len(masks) not in (1, len(images)):
        raise ValueError(f"{len(images)} source images and {len(masks)} masks: give one mask per image, or one")
    pairs = list(zip(images, masks if len(masks) == len(images) else masks * len(images)))
    for path in dict.fromkeys([p for pair in pairs for p in pair]):
        if not Path(path).expanduser().is_file():
            raise ValueError(f"inpaint input {path} does not exist")
        try:
            with Image.open(Path(path).expanduser()) as img:
                img.verify()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"inpaint input {path} is not a readable image ({e})") from None
    return [Source(Path(i).stem, str(Path(i).expanduser()), str(Path(m).expanduser()), "file") for i, m in pairs]


def scene_sources(n: int, seed: int, size: int = 96) -> list[Source]:
    """``n`` generated scenes (components/benchmarks/_scenes.py) with the cell of their first object masked; the
    source keeps that object (the prompt says what to paint there)."""
    from PIL import Image, ImageDraw

    from components.benchmarks._scenes import render, sample_scene
    from tasks.io import atomic_path

    rng = random.Random(seed)
    out = []
    root = settings().data_dir / "inpaint-scenes"
    for i in range(n):
        scene = sample_scene(rng, max_objects=3, text_prob=0.0)
        cell = scene["objects"][0]["cell"]
        r, c = divmod(cell, 3)
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).rectangle((c * size / 3, r * size / 3, (c + 1) * size / 3 - 1, (r + 1) * size / 3 - 1),
                                       fill=255)
        name = f"scene{seed}_{i}"
        paths = []
        for kind, img in (("image", render(scene, size)), ("mask", mask)):
            dest = root / f"{name}_{kind}.png"
            with atomic_path(dest) as tmp:
                img.save(tmp, format="PNG")
            paths.append(str(dest))
        obj = scene["objects"][0]
        out.append(Source(name, paths[0], paths[1], f"scene seed {seed} #{i}: {obj['colour']} {obj['shape']} masked"))
    return out
