"""Calibrate the ONNX parity gate: error / float32 floor on correct exports and between two correct torch paths.

The gate of ``components/onnx/parity.py`` passes an export when max |ORT - torch32| <= multiple x max |torch32 -
torch64| for every compared quantity. This script measures, on models the gate is NOT tuned for, how large that
ratio is when everything is correct:

- ``ort``: correct exports (``--kv-cache``, ``--optimize ort-cpu``) of the tiny test models (llama, qwen2, mistral,
  gpt2; 2 and 6 layers) with baseline, ZeroTuning and head masking, and optionally a real small model (``--model
  DIR``, e.g. llama2.c stories260K);
- ``torch paths``: the same patched model computed by two correct PyTorch paths (the dispatcher's fused SDPA path
  vs the materialised-softmax path, ``force="materialize"``), divided by the same float64 floor.

    python bench/onnx_parity_floor.py                             # tiny models only (about 2 minutes)
    python bench/onnx_parity_floor.py --model /path/to/stories260k
    python bench/onnx_parity_floor.py --smoke                     # one tiny Llama, baseline, T = 16
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.onnx import export as onnx_export  # noqa: E402
from components.onnx import optimize as onnx_optimize  # noqa: E402
from components.onnx.parity import PrefillGraph, _max_diff, _Reference, check_parity, patched  # noqa: E402
from registry.specs import parse  # noqa: E402
from tests.helpers.tiny import tiny_model  # noqa: E402

SPECS = {"baseline": None, "zerotuning": "zerotuning(gamma=3)", "head_mask": "head_mask(heads=0:1)"}


@torch.no_grad()
def torch_paths_ratio(model, patches, lengths, vocab) -> float:
    """max over cases of |sdpa path - materialised path| / |sdpa path - float64| on prefill logits."""
    ref = _Reference(model, patches)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for length in lengths:
        ids = torch.randint(0, vocab, (2, length), generator=g)
        mask = torch.ones_like(ids)
        r32, r64 = ref.prefill(ids, mask)
        with patched(model, patches, force="materialize"):
            alt = PrefillGraph(model)(ids, mask)[0]
        worst = max(worst, _max_diff(alt.numpy(), r32[0].numpy()) / _max_diff(r32[0].numpy(), r64[0].numpy()))
    return worst


def measure(label: str, model, spec: str | None, root: Path, lengths) -> dict:
    patches = [] if spec is None else [parse(spec).create("patch")]
    out = root / label.replace(" ", "_")
    for info in onnx_export.export_graphs(model, patches, out, kv_cache=True, form="bias"):
        onnx_optimize.optimize(out / info.file, "ort-cpu")
    res = check_parity(model, patches, out, lengths=lengths, multiple=1e9)
    vocab = int(onnx_export.text_config(model.config).vocab_size)
    shutil.rmtree(out, ignore_errors=True)
    row = {k: w["ratio"] for k, w in res["worst"].items()}
    row["floor_logits"] = res["worst"]["logits"]["floor"]
    row["torch_paths"] = torch_paths_ratio(model, patches, lengths, vocab)
    row["greedy"], row["top5"] = res["tokens"]["greedy_agreement"], res["tokens"]["top5_agreement"]
    print(f"{label:32s} " + " ".join(f"{k} {v:9.3g}" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="A real model directory to add (float32).")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--families", nargs="+", default=["llama", "qwen2", "mistral", "gpt2"])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    specs = SPECS
    if args.smoke:
        args.model, args.lengths, args.families, args.layers = None, [16], ["llama"], [2]
        specs = {"baseline": None}
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="onnx-floor-"))
    rows = {}
    try:
        if args.model:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
            for name, spec in specs.items():
                rows[f"{args.model.name} {name}"] = measure(f"{args.model.name} {name}", model, spec, root,
                                                            args.lengths)
        for family in args.families:
            for layers in args.layers:
                for name, spec in specs.items():
                    if family == "gpt2" and spec is not None:
                        continue  # GPT-2's conv1d attention: the other families cover the patches
                    model = tiny_model(family, layers=layers)
                    rows[f"{family} L{layers} {name}"] = measure(f"{family} L{layers} {name}", model, spec, root,
                                                                 args.lengths)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    keys = ("logits", "present", "decode", "text_decode")
    ort = np.array([[r[k] for k in keys] for r in rows.values()])
    paths = np.array([r["torch_paths"] for r in rows.values()])
    print(f"# {len(rows)} correct exports: err/floor max {ort.max():.3g}, median {np.median(ort):.3g}; "
          f"two torch paths: max {paths.max():.3g}, median {np.median(paths):.3g}")


if __name__ == "__main__":
    main()
