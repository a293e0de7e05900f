"""Head importance x attention distance of a LLaVA-style model's vision tower (``vision_head_importance``).

Writes the analysis as JSON, a figure (heatmaps of the log-prob drop, the accuracy drop and the mean attention
distance per head, and importance against distance) and prints a markdown table, one row per head.

    ATTNFLOW_HOME=/work/home/bench python bench/vlm_vision_heads.py --model demo-vlm --n-scenes 40 \\
        --json docs/results/vlm_vision_heads.json --figure docs/vlm_vision_heads.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import modeling  # noqa: E402
from components.analyzers.vision_head_importance import VisionHeadImportance  # noqa: E402


def figure(res, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("logprob_drop", "acc_drop", "mean_distance")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, name in zip(axes, names):
        a = res.arrays[name]
        im = ax.imshow(a, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(a):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set(title=name, xlabel="head", ylabel="layer", xticks=range(a.shape[1]), yticks=range(a.shape[0]))
        fig.colorbar(im, ax=ax)
    ax = axes[3]
    lp, dist = res.arrays["logprob_drop"].ravel(), res.arrays["mean_distance"].ravel()
    layers = np.repeat(np.arange(res.arrays["logprob_drop"].shape[0]), res.arrays["logprob_drop"].shape[1])
    sc = ax.scatter(dist, lp, c=layers, cmap="plasma")
    ax.set(xlabel="mean attention distance (px)", ylabel="log-prob drop when masked", title="importance x distance")
    fig.colorbar(sc, ax=ax, label="layer")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def smoke_dir(wings: bool = False) -> str:
    """A tiny random LLaVA saved to a temporary folder (tests/helpers/tiny_vlm.py), for ``--smoke``."""
    import tempfile

    from tests.helpers.tiny_vlm import save_tiny_llava

    return str(save_tiny_llava(Path(tempfile.mkdtemp(prefix="smoke-vlm-")) / "m", wings=wings))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo-vlm")
    ap.add_argument("--n-scenes", type=int, default=40)
    ap.add_argument("--mask-mode", default="zero")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--json", default="")
    ap.add_argument("--figure", default="")
    ap.add_argument("--smoke", action="store_true", help="a tiny random LLaVA, 2 scenes (plumbing check)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.n_scenes = smoke_dir(), 2
    torch.set_num_threads(1)
    from transformers import AutoProcessor

    ref = modeling.resolve(args.model)
    model = modeling.load_vision_model(ref)
    proc = AutoProcessor.from_pretrained(ref.location)
    comp = VisionHeadImportance(n_scenes=args.n_scenes, mask_mode=args.mask_mode, seed=args.seed)
    start = time.time()
    res = comp.analyze(model, proc, comp.build())
    seconds = time.time() - start
    print(json.dumps(res.metrics, indent=1))
    print("| layer | head | log-prob drop | accuracy drop | mean distance (px) |\n|---|---|---|---|---|")
    for r in sorted(res.tables["heads"], key=lambda r: (r["layer"], r["head"])):
        print(f"| {r['layer']} | {r['head']} | {r['logprob_drop']:.3f} | {r['acc_drop']:+.3f} | "
              f"{r['mean_distance']:.1f} |")
    if args.json:
        record = {"model": args.model, "model_fingerprint": modeling.model_fingerprint(ref), "args": vars(args),
                  "seconds": seconds, "machine": platform.platform(), "threads": 1, "result": res.to_json()}
        Path(args.json).write_text(json.dumps(record, indent=1))
    if args.figure:
        figure(res, args.figure, f"{args.model}: vision-tower heads ({int(res.metrics['n_examples'])} questions)")


if __name__ == "__main__":
    main()
