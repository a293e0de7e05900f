"""In-Context Brush's claim on a tiny MMDiT trained here: the demo subject inserted into the query more faithfully.

In-Context Brush (arXiv:2505.20271) inserts the subject of a demonstration image into a masked region of a target
image, zero-shot, with an in-context inpainting MMDiT (FLUX.1-Fill on a diptych); its latent feature shifting and
head reweighting (components/diffusion/icbrush.py) are claimed to keep the subject's identity better. No
pretrained MMDiT exists offline, so this script first trains one that has the in-context ability the method
presupposes, then measures the method on it:

- model: diffusers ``SD3Transformer2DModel`` (patch 2, 4 joint layers, 4 heads x 16, text 64) on RGB pixels, with
  a small ``CLIPTextModel`` over the demo-t2i caption vocabulary (``t2i_train.build_tokenizer``), both from scratch;
- data: vertical diptychs 32 x 64 px. Top (demo): one coloured shape in the centre cell. Bottom (query): 0-2
  distractor shapes plus the demo's shape in a free cell. Caption: "at the <cell>" of the inserted shape, so its
  colour and shape can only come from the demo half (10 % empty captions for classifier-free guidance);
- training: rectified flow as SD3 (``x_s = (1 - s) x0 + s eps``, target ``eps - x0``, s = sigmoid(N(0, 1)),
  timestep 1000 s), AdamW with warm-up and cosine decay, EMA;
- measurement: held-out diptychs, mask = the inserted shape's cell, sampled by ``flow_runner.sample_flow``
  (FlowMatchEuler, known-region blending, CFG) with and without ``icbrush``. Metrics on the query's masked cell:
  the demo's colour + shape found there (``object_in_mask``), the colour or shape alone, nothing there. Mean and 95 %
  interval over seeds and the paired difference to the baseline, as bench/diffusion_claims.py.

    python bench/icbrush_claim.py --json docs/results/icbrush_claim.json --images docs/images
    python bench/icbrush_claim.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.diffusion_claims import method_entry, save_grid, table_header  # noqa: E402
from bench.diffusion_edit_claims import mask_scores  # noqa: E402
from components.benchmarks import _scenes  # noqa: E402
from components.diffusion import t2i_train  # noqa: E402
from components.diffusion.flow_runner import sample_flow  # noqa: E402
from registry.specs import parse  # noqa: E402
from tasks.claims_stats import mean  # noqa: E402

METRICS = ("object_in_mask", "colour_in_mask", "shape_in_mask", "empty_mask")
S = 32  # side of each half


def build(seed: int = 0):
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = t2i_train.build_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(t2i_train.VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tok.model_max_length, pad_token_id=0, bos_token_id=1,
        eos_token_id=2))
    mmdit = SD3Transformer2DModel(
        sample_size=S, patch_size=2, in_channels=3, out_channels=3, num_layers=4, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=64, pooled_projection_dim=64,
        pos_embed_max_size=S)
    return tok, text, mmdit


def diptych(rng: random.Random) -> dict:
    """One training or evaluation case: image (3, 2S, S) in [-1, 1], caption, the inserted shape and its cell."""
    colour, shape = rng.choice(sorted(_scenes.COLOURS)), rng.choice(_scenes.SHAPES)
    cells = rng.sample(range(9), rng.randint(1, 3))
    others = []
    for c in cells[1:]:
        while True:
            o = {"colour": rng.choice(sorted(_scenes.COLOURS)), "shape": rng.choice(_scenes.SHAPES), "cell": c}
            if (o["colour"], o["shape"]) != (colour, shape):
                break
        others.append(o)
    demo = {"objects": [{"colour": colour, "shape": shape, "cell": 4}], "text": None}
    query = {"objects": [{"colour": colour, "shape": shape, "cell": cells[0]}, *others], "text": None}
    pix = np.concatenate([np.asarray(_scenes.render(demo, S)), np.asarray(_scenes.render(query, S))], axis=0)
    return {"image": torch.from_numpy(pix.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0,
            "caption": f"at the {_scenes.CELLS[cells[0]]}", "colour": colour, "shape": shape, "cell": cells[0]}


def encode(tok, text, captions):
    ids = tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")["input_ids"]
    out = text(ids)
    return out.last_hidden_state, out.pooler_output  # (B, L, 64), (B, 64)


def train(tok, text, mmdit, steps: int, batch: int, lr: float, n_data: int, ema_decay: float, seed: int) -> list:
    rng = random.Random(seed)
    data = [diptych(rng) for _ in range(n_data)]
    images = torch.stack([d["image"] for d in data])  # (N, 3, 2S, S)
    caps = [d["caption"] for d in data]
    parts = torch.nn.ModuleList([mmdit, text])
    ema = copy.deepcopy(parts).requires_grad_(False)
    opt = torch.optim.AdamW(parts.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, t2i_train._lr_lambda(steps, max(1, steps // 20)))
    g = torch.Generator().manual_seed(seed + 1)
    parts.train()
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x0 = images[idx]
        captions = ["" if u < 0.1 else caps[i] for i, u in zip(idx.tolist(), torch.rand(batch, generator=g).tolist())]
        s = torch.sigmoid(torch.randn(batch, generator=g)).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=g)
        xs = (1 - s) * x0 + s * eps
        hidden, pooled = encode(tok, text, captions)
        out = mmdit(hidden_states=xs, timestep=1000 * s.flatten(), encoder_hidden_states=hidden,
                    pooled_projections=pooled).sample
        loss = torch.nn.functional.mse_loss(out, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), parts.parameters()):
                pe.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"step {step + 1}/{steps}: loss {mean(losses[-50:]):.4f} ({time.perf_counter() - start:.0f}s)",
                  flush=True)
    parts.load_state_dict(ema.state_dict())
    parts.eval()
    return losses


@torch.no_grad()
def run(tok, text, mmdit, spec: str, cases: list, seed: int, steps: int, cfg: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    comps = [] if spec == "baseline" else [parse(spec).create("diffusion")]
    src = torch.stack([c["image"] for c in cases])  # (B, 3, 2S, S)
    masks = torch.zeros(len(cases), 1, 2 * S, S)
    for i, c in enumerate(cases):
        r, col = divmod(c["cell"], 3)
        masks[i, 0, S + round(r * S / 3):S + round((r + 1) * S / 3), round(col * S / 3):round((col + 1) * S / 3)] = 1
    cond, pooled = encode(tok, text, [c["caption"] for c in cases])
    uncond, pooled_u = encode(tok, text, [""])
    x = sample_flow(mmdit, FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000), cond, pooled, uncond=uncond,
                    pooled_uncond=pooled_u, cfg_scale=cfg, components=comps, steps=steps, seed=seed, source=src,
                    mask=masks)
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, 2S, S, 3)
    from PIL import Image

    images = [Image.fromarray(a) for a in arr]
    scores = [mask_scores(Image.fromarray(a[S:]), m[0, S:].numpy().astype(bool),
                          t2i_train.object_phrase(c["colour"], c["shape"])) for a, m, c in zip(arr, masks, cases)]
    return images, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="training steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-data", type=int, default=20000)
    ap.add_argument("--methods", nargs="+", default=["baseline", "icbrush", "icbrush(shift=0.3, reweight=0)",
                                                     "icbrush(shift=0, reweight=0.2)"])
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--json", default="")
    ap.add_argument("--images", default="")
    ap.add_argument("--smoke", action="store_true", help="10 training steps, 2 cases x 2 seeds x 2 steps")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.n_data, args.cases, args.seeds, args.sample_steps = 10, 64, 2, 2, 2
    for spec in args.methods:  # bad specs fail before training
        if spec != "baseline":
            parse(spec).create("diffusion")
    tok, text, mmdit = build()
    n = sum(p.numel() for p in mmdit.parameters()) + sum(p.numel() for p in text.parameters())
    print(f"MMDiT + text encoder: {n:,} parameters; training {args.steps} steps x {args.batch}", flush=True)
    start = time.perf_counter()
    losses = train(tok, text, mmdit, args.steps, args.batch, args.lr, args.n_data, 0.995, seed=0)
    train_seconds = time.perf_counter() - start
    rng = random.Random(424242)  # held-out cases: another stream than training
    cases = [diptych(rng) for _ in range(args.cases)]
    per_method = {}
    for spec in args.methods:
        run(tok, text, mmdit, spec, cases[:1], 0, 1, args.cfg_scale)  # warm-up
        per_seed, seconds, grid = {m: [] for m in METRICS}, 0.0, None
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            images, scores = run(tok, text, mmdit, spec, cases, seed, args.sample_steps, args.cfg_scale)
            seconds += time.perf_counter() - t0
            for m in METRICS:
                per_seed[m].append(mean([s[m] for s in scores]))
            grid = grid or images
        per_method[spec] = (per_seed, seconds / (len(cases) * args.seeds), grid)
    base = per_method["baseline"] if "baseline" in per_method else next(iter(per_method.values()))
    result = {"train_steps": args.steps, "train_seconds": train_seconds, "final_loss": mean(losses[-50:]),
              "cases": len(cases), "seeds": args.seeds, "methods": []}
    print(f"\ntrained in {train_seconds:.0f}s, final loss {result['final_loss']:.4f}")
    print(table_header(METRICS))
    for i, (spec, (per_seed, spi, grid)) in enumerate(per_method.items()):
        entry, row = method_entry(spec, per_seed, spi, base[0], base[1], METRICS, spec == "baseline")
        print(row)
        if args.images:
            entry["grid"] = f"{args.images.rstrip('/')}/icbrush_{i}_{spec.split('(')[0]}.png"
            save_grid(grid, [], Path(entry["grid"]))
        result["methods"].append(entry)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=lambda v: None if math.isnan(v) else v))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
