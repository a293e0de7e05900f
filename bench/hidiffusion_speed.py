"""Seconds per image of HiDiffusion (components/diffusion/hidiffusion.py) against the plain sampler, at the
denoiser's sample size and at 2x it.

Model: a text-to-image folder (``--model``, e.g. demo-t2i from the train-t2i flow, read by
``components.diffusion.pipeline.load_t2i``), or by default a random UNet2DConditionModel shaped like SD 1.5 (four
blocks, attention in the first three down / last three up blocks, 2 layers per block) but narrow (channels 32, 64,
128, 128; 8 heads), pixel space, sample size 32, with a random 16-wide prompt embedding. Random weights make the
images meaningless; only the time is measured.
Method: ``torch.set_num_threads(1)``, CPU time (``time.process_time``) of ``runner.sample`` (DDIM, ``--steps``
steps, batch 1, no CFG), interleaved rounds (each variant once per round). Reported: the minimum over rounds per
variant and the median over rounds of the per-round ratio to the plain sampler at the same size.

    python bench/hidiffusion_speed.py                          # sizes 32 and 64, 10 steps, 3 rounds
    python bench/hidiffusion_speed.py --model DIR --rounds 5 --json out.json
    python bench/hidiffusion_speed.py --smoke                  # sample size 16, 2 steps, 1 round
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.diffusion.hidiffusion import HiDiffusion  # noqa: E402
from components.diffusion.runner import sample  # noqa: E402

VARIANTS = {
    "plain": [],
    "hidiffusion": [HiDiffusion()],
    "msw-msa only": [HiDiffusion(raunet=False)],
    "rau-net only": [HiDiffusion(msw_msa=False)],
}


def random_unet(sample_size: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(32, 64, 128, 128),
        layers_per_block=2, cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="text-to-image model folder (default: a random SD-1.5-shaped UNet)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from diffusers import DDIMScheduler

    if args.model:
        from components.diffusion.pipeline import load_t2i

        model = load_t2i(args.model)
        unet, base = model.unet, int(model.unet.config.sample_size)
        enc = model.text_encoder(model.tokenizer(["a red circle"], padding="max_length", max_length=model.max_length,
                                                 truncation=True, return_tensors="pt")["input_ids"])[0].detach()
        scheduler_config = model.scheduler.config
    else:
        base = 16 if args.smoke else 32
        unet = random_unet(base)
        enc = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
        scheduler_config = DDIMScheduler(num_train_timesteps=1000).config
    steps, rounds = (2, 1) if args.smoke else (args.steps, args.rounds)
    times: dict[str, list[float]] = {f"{name} @{s}": [] for s in (base, 2 * base) for name in VARIANTS}
    for _ in range(rounds):
        for side in (base, 2 * base):
            for name, comps in VARIANTS.items():
                t0 = time.process_time()
                sample(unet, DDIMScheduler.from_config(scheduler_config), enc, components=comps, steps=steps,
                       sample_size=(side, side), seed=0)
                times[f"{name} @{side}"].append(time.process_time() - t0)
    result = {"model": args.model or "random SD-1.5-shaped UNet (32/64/128/128, 2 layers per block)",
              "steps": steps, "rounds": rounds, "platform": platform.processor() or platform.machine(),
              "torch": torch.__version__, "rows": []}
    for side in (base, 2 * base):
        plain = times[f"plain @{side}"]
        for name in VARIANTS:
            t = times[f"{name} @{side}"]
            result["rows"].append({"variant": name, "size": side, "s_per_image_min": round(min(t), 3),
                                   "ratio_to_plain_median": round(statistics.median(a / b for a, b in zip(t, plain)),
                                                                  3)})
    print(f"| variant | size | s/image (min of {rounds}) | / plain (median) |\n|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['variant']} | {r['size']} | {r['s_per_image_min']} | {r['ratio_to_plain_median']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
