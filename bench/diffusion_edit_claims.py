"""Edit-type diffusion claims on demo-t2i, with 95% intervals over seeds: HD-Painter (the prompt's object inside the
mask more often) and TextCenGen (the text region kept free while the objects stay).

``--claim inpaint`` (HD-Painter, arXiv:2312.14091): each of ``--scenes`` held-out scenes (1..3 objects, a stream
disjoint from training) gets a new object in one free cell. Source: the scene rendered at the model's size; mask:
that cell; prompt: the new object's phrase with its cell ("a red circle at the top left"). Sampler:
``inpaint.sample_inpaint`` (demo-t2i is a plain denoiser, so RePaint-style known-region blending; the paper uses
an inpainting UNet). Metrics (``mask_scores``): ``object_in_mask`` (the asked colour + shape detected with its
centroid in the mask), the colour or the shape alone, and ``empty_mask``. Outside the mask the blended result is
the source exactly. Components get the per-image masks with ``with_mask``.

``--claim text`` (TextCenGen, arXiv:2404.11824): prompts of 1..2 objects whose first object sits in the centre
cell; the text region is ``--text-box`` (default the centre cell). Metrics: ``ink_in_box`` (share of the box's
pixels the detector's pixel classifier calls a palette colour: lower = freer), ``binding`` and ``count`` (the
objects must stay; position is not scored, the method moves objects on purpose).

``--claim compose`` (PrimeComposer, arXiv:2403.05053): the inpainting cases' scenes with the new object pasted in
its cell (the composite; the scene alone is the background) and the whole caption as the prompt, through
``primecomposer.compose`` (tau_b 0.8, tau_c 0.2). The baseline is the same progressive combination without
steering or RCA (``primecomposer(strength=0)``); each method gets the case's cell as its box. Metrics: the pasted
object kept in its box (``object_in_mask``, colour alone) and ``psnr_outside`` against the background.

Methods are specs of the ``diffusion`` family, several joined by " + " (``painta + rasg`` is HD-Painter);
``baseline`` = none; ``ddim(eta=e)`` (inpaint claim) is RASG's control: the same stochastic DDIM step with Gaussian
noise instead of the gradient. Differences to baseline are paired (same scenes, seeds and initial noise).

    python bench/diffusion_edit_claims.py --claim inpaint --methods baseline painta "rasg(eta=0.1)" "painta + rasg"
    python bench/diffusion_edit_claims.py --claim text --methods baseline textcengen
    python bench/diffusion_edit_claims.py --claim compose
    python bench/diffusion_edit_claims.py --smoke
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.diffusion_claims import method_entry, model_dir, save_grid, table_header  # noqa: E402
from components.benchmarks import _scenes, _shape_detect  # noqa: E402
from components.diffusion import t2i_train  # noqa: E402
from components.diffusion.generate import fresh_scheduler  # noqa: E402
from components.diffusion.inpaint import sample_inpaint  # noqa: E402
from components.diffusion.pipeline import is_t2i_dir, load_t2i  # noqa: E402
from components.diffusion.runner import encode_prompts, sample  # noqa: E402
from registry.specs import parse  # noqa: E402
from tasks.claims_stats import mean  # noqa: E402

CLAIMS = {"inpaint": ("object_in_mask", "colour_in_mask", "shape_in_mask", "empty_mask"),
          "text": ("ink_in_box", "binding", "count"),
          "compose": ("object_in_mask", "colour_in_mask", "psnr_outside")}
DEFAULTS = {"inpaint": ("baseline", "ddim(eta=0.1)", "painta", "rasg(eta=0.1)", "painta + rasg(eta=0.1)"),
            "text": ("baseline", "textcengen"),
            "compose": ("baseline", "primecomposer", "primecomposer(words=circle;square;triangle)")}


def build(spec: str, masks: torch.Tensor | None = None, text_box: tuple = ()) -> list:
    """A method spec -> components; masked components read ``masks`` (B, 1, H, W), TextCenGen gets ``text_box``."""
    if spec == "baseline" or ddim_eta(spec) is not None:
        return []
    out = []
    for part in spec.split(" + "):
        ps = parse(part.strip())
        extra = {"box": ",".join(map(str, text_box))} if ps.name == "textcengen" and text_box else None
        comp = ps.create("diffusion", extra=extra if extra and "box" not in ps.params else None)
        out.append(comp.with_mask(masks) if masks is not None and hasattr(comp, "with_mask") else comp)
    return out


def cell_box(cell: int) -> tuple[float, float, float, float]:
    r, c = divmod(cell, 3)
    return (c / 3, r / 3, (c + 1) / 3, (r + 1) / 3)


def inpaint_cases(n: int, seed: int, size: int) -> list[dict]:
    """``n`` (source, mask, prompt) cases: a held-out scene plus one new object in a free cell."""
    rng = random.Random(seed + 31337)
    cases = []
    for scene in t2i_train.scenes(seed + 271828, n):
        free = [c for c in range(9) if c not in {o["cell"] for o in scene["objects"]}]
        new = {"shape": rng.choice(_scenes.SHAPES), "colour": rng.choice(sorted(_scenes.COLOURS)),
               "cell": rng.choice(free)}
        x0, y0, x1, y1 = (round(v * size) for v in cell_box(new["cell"]))
        mask = np.zeros((size, size), dtype=bool)
        mask[y0:y1, x0:x1] = True
        pasted = {**scene, "objects": [*scene["objects"], new]}
        cases.append({"source": _scenes.render(scene, size), "mask": mask, "cell": new["cell"],
                      "prompt": t2i_train.object_phrase(new["colour"], new["shape"], new["cell"]),
                      "composite": _scenes.render(pasted, size), "caption": t2i_train.caption(pasted)})
    return cases


def text_prompts(n: int, seed: int) -> list[str]:
    """``n`` captions of 1..2 objects, the first in the centre cell."""
    out = []
    for scene in t2i_train.scenes(seed + 161803, n, max_objects=2):
        objs = scene["objects"]
        objs[0]["cell"] = 4
        objs[1:] = [o for o in objs[1:] if o["cell"] != 4]
        out.append(t2i_train.caption(scene))
    return out


def ink_in_box(image, box: tuple) -> float:
    lab, _ = _shape_detect.classify_pixels(image)
    h, w = lab.shape
    x0, y0, x1, y1 = round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)
    return float((lab[y0:y1, x0:x1] >= 0).mean())


class EtaDDIM:
    """Control for RASG: the DDIM step with ``eta`` and Gaussian noise (RASG replaces this noise by its normalised
    gradient), so "rasg(eta=e)" vs "ddim(eta=e)" separates the guidance from the stochasticity."""

    def __init__(self, inner, eta: float) -> None:
        self.inner, self.eta = inner, eta

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def step(self, model_output, timestep, sample, generator=None, **kw):
        return self.inner.step(model_output, timestep, sample, eta=self.eta, generator=generator, **kw)


def ddim_eta(spec: str) -> float | None:
    """The eta of a "ddim(eta=...)" control spec; None for component specs."""
    if not spec.startswith("ddim(eta=") or not spec.endswith(")"):
        return None
    return float(spec[len("ddim(eta="):-1])


def run_inpaint(model, spec: str, cases: list[dict], seed: int, steps: int, cfg: float) -> tuple[list, list[dict]]:
    prompts = [c["prompt"] for c in cases]
    src = torch.cat([_pixels(c["source"]) for c in cases])  # (B, 3, S, S)
    masks = torch.stack([torch.from_numpy(c["mask"]).float()[None] for c in cases])  # (B, 1, S, S)
    cond, words = encode_prompts(model.tokenizer, model.text_encoder, prompts, model.max_length)
    uncond, _ = encode_prompts(model.tokenizer, model.text_encoder, [""], model.max_length)
    eta = ddim_eta(spec)
    sched = fresh_scheduler(model) if eta is None else EtaDDIM(fresh_scheduler(model), eta)
    comps = [] if eta is not None else build(spec, masks)
    x = sample_inpaint(model.unet, sched, cond, source=src, mask=masks, uncond=uncond, cfg_scale=cfg,
                       components=comps, word_tokens=words, steps=steps, seed=seed)
    images = model.to_images(x)
    return images, [mask_scores(im, c["mask"], c["prompt"]) for im, c in zip(images, cases)]


def mask_scores(image, mask: np.ndarray, prompt: str) -> dict[str, float]:
    """Of the detections with their centroid in the mask: the asked pair (``object_in_mask``, as
    ``masked_fidelity``), the asked colour or shape alone, and none at all (``empty_mask``: the fill ignored the
    prompt). Outside the mask the blended result equals the source, so no fidelity score is needed there."""
    (asked,) = _shape_detect.parse_prompt(prompt)
    inside = [d for d in _shape_detect.detect(image) if mask[round(d["centroid"][0]), round(d["centroid"][1])]]
    return {"object_in_mask": float(any(d["colour"] == asked["colour"] and d["shape"] == asked["shape"]
                                        for d in inside)),
            "colour_in_mask": float(any(d["colour"] == asked["colour"] for d in inside)),
            "shape_in_mask": float(any(d["shape"] == asked["shape"] for d in inside)),
            "empty_mask": float(not inside)}


def run_compose(model, spec: str, cases: list[dict], seed: int, steps: int, cfg: float) -> tuple[list, list[dict]]:
    """``compose`` per cell (one box per batch); images and scores in the cases' order."""
    from components.diffusion.primecomposer import compose

    spec = "primecomposer(strength=0)" if spec == "baseline" else spec
    images: list = [None] * len(cases)
    for cell in sorted({c["cell"] for c in cases}):
        idx = [i for i, c in enumerate(cases) if c["cell"] == cell]
        ps = parse(spec)
        if ps.name != "primecomposer":
            raise ValueError(f"--claim compose measures primecomposer specs, not {spec!r}")
        comp = ps.create("diffusion", extra={"box": ",".join(f"{v:.4f}" for v in cell_box(cell))})
        captions = [cases[i]["caption"] for i in idx]
        cond, words = encode_prompts(model.tokenizer, model.text_encoder, captions, model.max_length)
        uncond, _ = encode_prompts(model.tokenizer, model.text_encoder, [""], model.max_length)
        composite = torch.cat([_pixels(cases[i]["composite"]) for i in idx])  # (b, 3, S, S)
        x = compose(model.unet, fresh_scheduler(model), cond, composite, comp, uncond=uncond, cfg_scale=cfg,
                    word_tokens=words, steps=steps, seed=seed)
        for i, im in zip(idx, model.to_images(x)):
            images[i] = im
    scores = []
    for im, c in zip(images, cases):
        s = mask_scores(im, c["mask"], c["prompt"])
        fid = _shape_detect.masked_fidelity(im, c["source"], c["mask"])
        scores.append({"object_in_mask": s["object_in_mask"], "colour_in_mask": s["colour_in_mask"],
                       "psnr_outside": fid["psnr_outside"]})
    return images, scores


def run_text(model, spec: str, prompts: list[str], seed: int, steps: int, cfg: float, box: tuple):
    cond, words = encode_prompts(model.tokenizer, model.text_encoder, prompts, model.max_length)
    uncond, _ = encode_prompts(model.tokenizer, model.text_encoder, [""], model.max_length)
    x = sample(model.unet, fresh_scheduler(model), cond, uncond=uncond, cfg_scale=cfg,
               components=build(spec, text_box=box), word_tokens=words, steps=steps, seed=seed)
    images = model.to_images(x)
    scores = []
    for im, p in zip(images, prompts):
        objs = [{**o, "cell": None} for o in _shape_detect.parse_prompt(p)]
        s = _shape_detect.score(objs, _shape_detect.detect(im))
        scores.append({"ink_in_box": ink_in_box(im, box), "binding": s["binding"], "count": s["count"]})
    return images, scores


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--claim", choices=sorted(CLAIMS), default="inpaint")
    ap.add_argument("--model", default="", help="model folder (default ATTNFLOW_HOME/models/demo-t2i, else assets/)")
    ap.add_argument("--methods", nargs="+", default=None, help="specs; ' + ' joins components (default per claim)")
    ap.add_argument("--scenes", type=int, default=24, help="scenes (inpaint) or prompts (text) per seed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--text-box", default="0.3333,0.3333,0.6667,0.6667", help="text region x0,y0,x1,y1 (text claim)")
    ap.add_argument("--out", default="", help="JSON result path (default: none)")
    ap.add_argument("--images", default="", help="folder for one grid PNG per method (default: none)")
    ap.add_argument("--smoke", action="store_true", help="2 scenes x 2 seeds x 2 steps, both claims' defaults")
    args = ap.parse_args()
    if args.smoke:
        args.scenes, args.seeds, args.steps = 2, 2, 2
    if args.scenes < 1 or args.seeds < 2 or args.steps < 1:
        ap.error("need --scenes >= 1, --seeds >= 2 (intervals) and --steps >= 1")
    box = tuple(float(v) for v in args.text_box.split(","))
    methods = list(args.methods or DEFAULTS[args.claim])
    if "baseline" not in methods:
        methods = ["baseline", *methods]
    dummy = torch.zeros(1, 1, 8, 8)
    for spec in methods:  # bad specs fail before any model loads
        build(spec, dummy, box)
    path = model_dir(args.model)
    if args.smoke and not is_t2i_dir(path):
        model = t2i_train.build_model(image_size=16, channels=(8, 16, 16), text_hidden=16, text_layers=1, heads=2)
        path = Path("tiny-random")
    else:
        model = load_t2i(path)
    names = CLAIMS[args.claim]
    if args.claim in ("inpaint", "compose"):
        cases = inpaint_cases(args.scenes, 0, model.image_size)
        runner = run_inpaint if args.claim == "inpaint" else run_compose
        items, run = [c["prompt"] for c in cases], lambda spec, seed: runner(
            model, spec, cases, seed, args.steps, args.cfg_scale)
    else:
        items = text_prompts(args.scenes, 0)
        run = lambda spec, seed: run_text(model, spec, items, seed, args.steps, args.cfg_scale, box)  # noqa: E731
    print(f"model {path}: claim {args.claim}, {len(items)} cases x {args.seeds} seeds, {args.steps} DDIM steps")
    result = {"model": str(path), "claim": args.claim, "cases": items, "seeds": list(range(args.seeds)),
              "steps": args.steps, "cfg_scale": args.cfg_scale, "methods": []}
    per_method = {}
    for spec in methods:
        run(spec, 0)  # warm-up (and the grid)
        per_seed, seconds, grid = {m: [] for m in names}, 0.0, None
        for seed in range(args.seeds):
            start = time.perf_counter()
            images, scores = run(spec, seed)
            seconds += time.perf_counter() - start
            for m in names:
                per_seed[m].append(mean([s[m] for s in scores]))
            grid = grid or images
        per_method[spec] = (per_seed, seconds / (len(items) * args.seeds), grid)
    base = per_method["baseline"]
    print(table_header(names))
    for spec, (per_seed, spi, grid) in per_method.items():
        entry, row = method_entry(spec, per_seed, spi, base[0], base[1], names, spec == "baseline")
        print(row)
        if args.images:
            slug = spec.replace(" + ", "+").split("(")[0].replace("+", "_")
            entry["grid"] = f"{args.images.rstrip('/')}/diffusion_{args.claim}_{slug}.png"
            save_grid(grid, items, Path(entry["grid"]))
        result["methods"].append(entry)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
