"""Prefill time of the VLM attention patches (visual boost, VAR, VHR) on their fast and materialised paths.

Model: a random LLaVA (``LlavaForConditionalGeneration``): CLIP vision tower with 2 layers, hidden 128, 224-pixel
images in 14-pixel patches (256 image tokens, class token dropped); Llama language model with 4 layers, hidden 512,
8 heads (head dim 64), vocab 4096. Input: one image and ``--text`` random text tokens after it, batch 1 (VHR: its
paired batch of 2 rows). Random weights have no massive activations, so VAR runs with a low threshold on four
dimensions (the setting of tests/integration/test_var.py) to select sinks at all; the times do not depend on
what the patches select, only on the path.

Method: ``torch.set_num_threads(1)``, CPU time (``time.process_time``), interleaved rounds after one warm-up
round; reported: minimum time over rounds and the median ratio to stock SDPA on the same input in the same round.

    python bench/vlm_patch_overhead.py                 # text 256, 3 rounds
    python bench/vlm_patch_overhead.py --smoke         # text 16, 1 round, tiny sizes (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.attention import vision  # noqa: E402
from components.attention.session import applied  # noqa: E402
from components.patches.var import VisualAttentionRedistribution  # noqa: E402
from components.patches.vhr import VisionAwareHeadReinforcement, paired_batch  # noqa: E402
from components.patches.visual_boost import VisualLogitBoost  # noqa: E402


def build(smoke: bool):
    torch.manual_seed(0)
    hidden, layers, size = (64, 2, 56) if smoke else (512, 4, 224)
    cfg = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(hidden_size=128 if not smoke else 32, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4, image_size=size, patch_size=14),
        text_config=T.LlamaConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8),
        image_token_id=4000, vision_feature_layer=-1)
    return T.LlavaForConditionalGeneration(cfg).eval(), (size // 14) ** 2, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.text, args.rounds = 16, 1
    torch.set_num_threads(1)
    model, n_img, size = build(args.smoke)
    g = torch.Generator().manual_seed(1)
    text = torch.randint(5, 3990, (1, args.text), generator=g)
    ids = torch.cat([torch.tensor([[1]]), torch.full((1, n_img), 4000), text], 1)  # BOS, image, text
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(1, 3, size, size, generator=g)}
    paired = paired_batch(inputs, vision.layout_of(model.config))
    var = VisualAttentionRedistribution(sink_dims=(0, 1, 2, 3), tau=1.8, start_layer=0)
    variants = {
        "sdpa (stock)": (inputs, None, None),
        "baseline": (inputs, "baseline", None),
        "visual_boost(all)": (inputs, VisualLogitBoost(selection="all", start_layer=0), None),
        "visual_boost(all) [materialised]": (inputs, VisualLogitBoost(selection="all", start_layer=0), "materialize"),
        "var": (inputs, var, None),
        "var [materialised]": (inputs, var, "materialize"),
        "sdpa (stock), paired batch": (paired, None, None),
        "vhr, paired batch": (paired, VisionAwareHeadReinforcement(), None),
    }
    import registry

    times: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, (inp, patch, force) in variants.items():
            if patch == "baseline":
                patch = registry.get("baseline").create()
            with torch.no_grad():
                start = time.process_time()
                if patch is None:
                    model(**inp)
                else:
                    with applied(model, patch, force=force):
                        model(**inp)
                if rnd:
                    times[name].append(time.process_time() - start)
    print(f"LLaVA-shaped random model, {n_img} image tokens + {args.text + 1} text tokens, {args.rounds} rounds")
    for name, ts in times.items():
        ref = times["sdpa (stock), paired batch" if "paired" in name else "sdpa (stock)"]
        ratio = statistics.median(t / r for t, r in zip(ts, ref))
        print(f"{name:36s} {min(ts) * 1000:9.1f} ms   x{ratio:5.2f}")


if __name__ == "__main__":
    main()
