"""Diffusion components on demo-t2i: shape-detector metrics with 95% intervals over seeds, seconds per image, a grid.

For each component spec (``baseline`` = no component; otherwise a ``diffusion`` family spec such as
``softpag(strength=1.0, scale=2.0)``) the same prompts x seeds are sampled with ``runner.sample`` (DDIM, CFG against
the empty caption), every image is scored by ``components/benchmarks/_shape_detect.py`` (binding, all_bound,
colour_present, shape_present, count, position, extra), metrics are averaged over prompts per seed, and reported as
mean and 95% Student-t interval over seeds, plus the paired difference to ``baseline`` (same prompts, same seeds,
same initial noise) with its interval. Seconds per image: wall time of a method's sampling divided by its images
(all prompts of one seed in one batch, after a one-step warm-up). A grid (first seed, first prompts) per method goes
to ``--images``.

Prompts: unseen captions of 1..3 objects (``t2i_train.sample_prompts``, a stream disjoint from training), or the
two-object subset with ``--two-objects`` (binding is then the question).

    python bench/diffusion_claims.py                                   # demo-t2i, baseline + softpag
    python bench/diffusion_claims.py --components baseline "softpag(strength=0.5, scale=2.0)" astar
    python bench/diffusion_claims.py --smoke                            # 2 prompts x 2 seeds x 2 steps (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.benchmarks import _shape_detect  # noqa: E402
from components.diffusion import t2i_train  # noqa: E402
from components.diffusion.pipeline import is_t2i_dir, load_t2i  # noqa: E402
from registry.specs import parse  # noqa: E402
from tasks.claims_stats import mean, t_interval  # noqa: E402

METRICS = ("binding", "all_bound", "colour_present", "shape_present", "count", "position", "extra")
DEFAULT_COMPONENTS = ("baseline", "softpag(strength=1.0, scale=2.0)")


def build_components(spec: str) -> list:
    """A spec -> the component list (``baseline`` = none); unknown names fail before any sampling."""
    return [] if spec == "baseline" else [parse(spec).create("diffusion")]


def model_dir(arg: str) -> Path:
    if arg:
        return Path(arg)
    from infra.settings import settings

    home = settings().models_dir / "demo-t2i"
    return home if is_t2i_dir(home) else ROOT / "assets" / "demo-t2i"


def interval(values: list[float]) -> dict:
    vals = [v for v in values if math.isfinite(v)]
    lo, hi = t_interval(vals) if len(vals) >= 2 else (math.nan, math.nan)
    return {"mean": mean(vals) if vals else math.nan, "ci95": [lo, hi], "per_seed": values}


def table_header(names) -> str:
    return f"\n| method | s/image | {' | '.join(names)} |\n|---|---|{'---|' * len(names)}"


def method_entry(spec: str, per_seed: dict, seconds_per_image: float, base_per_seed: dict, base_seconds: float,
                 names, is_base: bool) -> tuple[dict, str]:
    """One method's JSON entry (metrics and paired deltas to the baseline with intervals over seeds, time ratio)
    and its markdown row; shared by every diffusion claims script."""
    entry = {"spec": spec, "seconds_per_image": seconds_per_image,
             "time_ratio_to_baseline": seconds_per_image / base_seconds, "metrics": {}, "delta_vs_baseline": {}}
    cells = []
    for m in names:
        s = entry["metrics"][m] = interval(per_seed[m])
        d = entry["delta_vs_baseline"][m] = interval([a - b for a, b in zip(per_seed[m], base_per_seed[m])])
        cells.append(f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
                     + ("" if is_base else f" Δ{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"))
    row = f"| {spec} | {seconds_per_image:.3f} (x{entry['time_ratio_to_baseline']:.2f}) | " + " | ".join(cells) + " |"
    return entry, row


def run_method(model, spec: str, prompts: list[str], seeds: list[int], steps: int, cfg_scale: float,
               size: int = 0) -> dict:
    comps = build_components(spec)
    per_seed = {m: [] for m in METRICS}
    seconds, grid = 0.0, None
    t2i_train.generate(model, prompts[:1], seed=0, steps=1, cfg_scale=cfg_scale, components=comps,
                       size=size)  # warm-up
    for seed in seeds:
        start = time.perf_counter()
        images = t2i_train.generate(model, prompts, seed=seed, steps=steps, cfg_scale=cfg_scale, components=comps,
                                    batch_size=len(prompts), size=size)
        seconds += time.perf_counter() - start
        scores = [_shape_detect.score_image(im, p) for p, im in zip(prompts, images)]
        for m in METRICS:
            per_seed[m].append(mean([s[m] for s in scores]))
        grid = grid or images
    return {"spec": spec, "seconds_per_image": seconds / (len(prompts) * len(seeds)), "per_seed": per_seed,
            "grid": grid}


def save_grid(images, prompts, path: Path, cols: int = 6) -> None:
    """A PNG of the first ``cols`` x 2 images (upscaled x3, nearest) without captions."""
    from PIL import Image

    ims = images[: 2 * cols]
    w, h = ims[0].size[0] * 3, ims[0].size[1] * 3
    sheet = Image.new("RGB", (cols * (w + 2), -(-len(ims) // cols) * (h + 2)), (128, 128, 128))
    for i, im in enumerate(ims):
        sheet.paste(im.resize((w, h), Image.NEAREST), ((i % cols) * (w + 2), (i // cols) * (h + 2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="model folder (default ATTNFLOW_HOME/models/demo-t2i, else assets/)")
    ap.add_argument("--components", nargs="+", default=list(DEFAULT_COMPONENTS))
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--two-objects", action="store_true", help="only prompts with exactly two objects")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=0, help="sample side in pixels (0 = the training size; HiDiffusion "
                    "is measured above it)")
    ap.add_argument("--out", default="", help="JSON result path (default: none)")
    ap.add_argument("--images", default="", help="folder for one grid PNG per method (default: none)")
    ap.add_argument("--smoke", action="store_true", help="2 prompts x 2 seeds x 2 steps")
    args = ap.parse_args()
    if args.smoke:
        args.prompts, args.seeds, args.steps = 2, 2, 2
    if args.prompts < 1 or args.seeds < 2 or args.steps < 1:
        ap.error("need --prompts >= 1, --seeds >= 2 (intervals) and --steps >= 1")
    if "baseline" not in args.components:
        args.components = ["baseline", *args.components]
    for spec in args.components:  # bad specs fail before any model loads
        build_components(spec)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = model_dir(args.model)
    if args.smoke and not is_t2i_dir(path):  # no trained model yet: a tiny random one exercises the pipeline
        model = t2i_train.build_model(image_size=16, channels=(8, 16, 16), text_hidden=16, text_layers=1, heads=2)
        path = Path("tiny-random")
    else:
        model = load_t2i(path)
    pool = t2i_train.sample_prompts(1, 20 * args.prompts)
    if args.two_objects:
        pool = [p for p in pool if p.count(" and ") == 1]
    prompts = pool[: args.prompts]
    seeds = list(range(args.seeds))
    print(f"model {path}: {len(prompts)} prompts x {len(seeds)} seeds, {args.steps} DDIM steps, "
          f"cfg {args.cfg_scale}, {args.size or model.image_size} px")
    runs = [run_method(model, spec, prompts, seeds, args.steps, args.cfg_scale, args.size)
            for spec in args.components]
    base = runs[0]
    result = {"model": str(path), "prompts": prompts, "seeds": seeds, "steps": args.steps,
              "cfg_scale": args.cfg_scale, "size": args.size or model.image_size, "methods": []}
    used: set[str] = set()
    print(table_header(METRICS))
    for r in runs:
        entry, row = method_entry(r["spec"], r["per_seed"], r["seconds_per_image"], base["per_seed"],
                                  base["seconds_per_image"], METRICS, r is base)
        print(row)
        if args.images:
            name = r["spec"].split("(")[0]
            name = name if name not in used else f"{name}_{len(used)}"  # two specs of one component: numbered
            used.add(name)
            tag = f"_{args.size}px" if args.size else ""
            entry["grid"] = f"{args.images.rstrip('/')}/diffusion_{name}{tag}.png"
            save_grid(r["grid"], prompts, Path(entry["grid"]))
        result["methods"].append(entry)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
