"""Sink dimensions of a causal LM (the language model under a future demo-vlm): ``find_sink_dims`` on one text,
then, per layer, the largest |RMSNorm(h)| in those dimensions and the tokens above VAR's tau = 20.

    ATTNFLOW_HOME=... python bench/sink_dims.py --model smollm2-135m
    python bench/sink_dims.py --smoke                  # the demo model shipped in assets/ (seconds)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import modeling  # noqa: E402
from components.patches.var import find_sink_dims, sink_tokens  # noqa: E402

TEXT = ("Once upon a time a little dog ran to the park. It saw a red ball and a blue kite. The sun was warm and the "
        "dog was happy.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--tau", type=float, default=20.0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.model = "demo"
    torch.set_num_threads(1)
    model, tok = modeling.load_model(args.model)
    enc = dict(tok([args.text], return_tensors="pt"))
    with torch.no_grad():
        dims = find_sink_dims(model, enc, top_k=2, start_layer=2)
        hidden = model(**enc, output_hidden_states=True).hidden_states
    print(f"{args.model}: {enc['input_ids'].shape[1]} tokens, hidden {hidden[0].shape[-1]}, sink dims {dims}")
    for layer in range(2, len(hidden) - 1):
        h = hidden[layer].float()
        normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).abs()[0]  # (T, d)
        peaks = [round(float(normed[:, d].max()), 1) for d in dims]
        sinks = sink_tokens(hidden[layer], dims, args.tau)[0].nonzero().flatten().tolist()
        print(f"layer {layer:2d}: max |rms(h)| {peaks}, tokens > tau: {sinks}")


if __name__ == "__main__":
    main()
