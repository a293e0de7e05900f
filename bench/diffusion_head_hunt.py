"""HeadHunter on demo-t2i: greedy SoftPAG head selection with the shape detector as the objective.

The objective J(component) is the mean of ``--objective`` (default ``binding``: the share of asked colour + shape
pairs detected) over ``--prompts`` search captions x ``--seeds`` seeds, sampled with ``t2i_train.generate`` under
the SoftPAG component. The search captions are a stream disjoint from training and from bench/diffusion_claims.py's
evaluation captions, so the found head set is then measured on unseen prompts and seeds there:

    python bench/diffusion_head_hunt.py --json docs/results/diffusion_head_hunt.json
    python bench/diffusion_claims.py --components baseline "softpag(strength=1.0, scale=2.0)" "<printed spec>"

Candidates: every self-attention head of the UNet (``head_hunter.candidate_heads``); procedure and deviations:
components/diffusion/head_hunter.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.diffusion_claims import METRICS, model_dir  # noqa: E402
from components.benchmarks import _shape_detect  # noqa: E402
from components.diffusion import t2i_train  # noqa: E402
from components.diffusion.head_hunter import candidate_heads, hunt  # noqa: E402
from components.diffusion.pipeline import is_t2i_dir, load_t2i  # noqa: E402
from registry.specs import spec_text  # noqa: E402
from tasks.claims_stats import mean  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="model folder (default ATTNFLOW_HOME/models/demo-t2i, else assets/)")
    ap.add_argument("--objective", choices=METRICS, default="binding")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--blocks", nargs="*", default=[], help="UNet blocks of the candidate heads (default: all)")
    ap.add_argument("--json", default="", help="result path (default: none)")
    ap.add_argument("--smoke", action="store_true", help="2 prompts x 1 seed x 2 steps, mid-block heads, pool 2, "
                    "2 rounds")
    args = ap.parse_args()
    if args.smoke:
        args.prompts, args.seeds, args.steps, args.pool, args.rounds = 2, 1, 2, 2, 2
        args.blocks = ["mid_block"]
    if args.objective == "extra":
        ap.error("--objective extra is lower-is-better; choose a presence metric")
    path = model_dir(args.model)
    if args.smoke and not is_t2i_dir(path):
        model = t2i_train.build_model(image_size=16, channels=(8, 16, 16), text_hidden=16, text_layers=1, heads=2)
        path = Path("tiny-random")
    else:
        model = load_t2i(path)
    prompts = t2i_train.sample_prompts(2, args.prompts)  # seed 2: not diffusion_claims' stream (seed 1)
    seeds = list(range(100, 100 + args.seeds))

    def objective(component) -> float:
        scores = []
        for seed in seeds:
            images = t2i_train.generate(model, prompts, seed=seed, steps=args.steps, cfg_scale=args.cfg_scale,
                                        components=[component], batch_size=len(prompts))
            scores += [_shape_detect.score_image(im, p)[args.objective] for p, im in zip(prompts, images)]
        return mean(scores)

    candidates = candidate_heads(model.unet, args.blocks)
    print(f"model {path}: {len(candidates)} candidate heads, objective {args.objective} on {len(prompts)} prompts x "
          f"{len(seeds)} seeds, {args.steps} steps")
    base = mean([_shape_detect.score_image(im, p)[args.objective] for seed in seeds for p, im in zip(
        prompts, t2i_train.generate(model, prompts, seed=seed, steps=args.steps, cfg_scale=args.cfg_scale,
                                    batch_size=len(prompts)))])
    start = time.perf_counter()
    result = hunt(objective, candidates, strength=args.strength, scale=args.scale, pool=args.pool,
                  rounds=args.rounds, progress=print)
    seconds = time.perf_counter() - start
    from components.diffusion.softpag import SoftPAG

    found = SoftPAG(strength=args.strength, scale=args.scale, blocks=(), heads=result.heads)
    every = SoftPAG(strength=args.strength, scale=args.scale, blocks=())
    spec = spec_text(found)
    all_heads = objective(every)
    print(f"\nno guidance: {base:.4f}; all self-attention heads: {all_heads:.4f}")
    for s in result.steps:
        print(f"  + head {s.head}: {args.objective} {s.score:.4f}")
    print(f"{result.calls} objective calls in {seconds:.0f}s\nfound: {spec}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "model": str(path), "objective": args.objective, "prompts": prompts, "seeds": seeds,
            "steps": args.steps, "baseline": base, "all_heads": all_heads,
            "single": {f"{k[0]}:{k[1]}": v for k, v in result.single.items()},
            "trajectory": [{"head": list(s.head), "score": s.score} for s in result.steps],
            "calls": result.calls, "seconds": seconds, "spec": spec}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
