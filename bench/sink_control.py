"""Attention-sink profile of real models: the demo model vs stories260k, the documented no-sink control.

For each model and probe source: Sink_1 (share of heads whose mean attention to the first token exceeds eps = 0.3,
in %), the mean attention to position 0 per layer, and the strongest first-token head. stories260k (Karpathy's
llama2.c TinyStories checkpoint, in ../shared/data/models) is documented to show no sinks (no head above 0.05 on
position 0 at 256 tokens), so it checks that the metric does not invent sinks; the demo model is attnflow's own.

    python bench/sink_control.py                                   # demo (if present) + stories260k, T = 64 and 256
    python bench/sink_control.py --models demo --lengths 64 --json out.json
    python bench/sink_control.py --smoke          # demo model, generated stories only, T = 32, 4 samples

Reads ../shared (ATTNFLOW_SHARED); the product never does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.analyzers.sink_metric import SinkMetric  # noqa: E402
from components.modeling import load_model, resolve  # noqa: E402

SHARED = Path(os.environ.get("ATTNFLOW_SHARED", REPO / "../shared")).resolve()
MODELS = {"demo": "demo", "stories260k": str(SHARED / "data/models/stories260k")}
TINYSTORIES = SHARED / "data/corpus/tinystories_val_hf_head.txt"


def long_paragraphs(path: Path, n_words: int, out_dir: Path) -> str:
    """A copy of a blank-line-separated corpus whose paragraphs are merged until each has >= n_words words."""
    merged, cur = [], []
    for para in path.read_text(encoding="utf-8").split("\n\n"):
        cur.extend(para.split())
        if len(cur) >= n_words:
            merged.append(" ".join(cur))
            cur = []
    out = out_dir / f"{path.stem}-{n_words}w.txt"
    out.write_text("\n\n".join(merged))
    return str(out)


def profile(model_ref: str, source: str, n_tokens: int, n_samples: int) -> dict:
    model, tok = load_model(model_ref)
    sm = SinkMetric(source=source, n_samples=n_samples, n_tokens=n_tokens, short="skip")
    rows = sm.build()
    start = time.process_time()
    res = sm.analyze(model, tok, rows)
    alpha = res.arrays["alpha_first"]
    top = divmod(int(alpha.argmax()), alpha.shape[1])
    return {"model": model_ref, "source": source, "n_tokens": n_tokens, "n_samples": int(res.metrics["n_samples"]),
            "sink_1": res.metrics["sink_1"], "attention_first": res.metrics["attention_first"],
            "by_layer": [r["attention_first"] for r in res.tables["by_layer"]],
            "max_head": f"{top[0]}:{top[1]}", "max_head_alpha": float(alpha.max()),
            "sink_heads": [f"{a}:{b}" for a, b in res.heads["sink_heads"]],
            "cpu_seconds": time.process_time() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,stories260k")
    ap.add_argument("--lengths", default="64,256")
    ap.add_argument("--n-samples", type=int, default=100)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.models, args.lengths, args.n_samples = "demo", "32", 4
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="sink-control-"))
    out = []
    for name in args.models.split(","):
        ref = MODELS.get(name, name)
        try:
            resolve(ref)
        except FileNotFoundError as e:
            print(f"skipping {name}: {e}")
            continue
        for t in (int(x) for x in args.lengths.split(",")):
            sources = ["builtin:stories"]  # generated stories: the demo model's own training text
            # real text: TinyStories validation, paragraphs merged to > T words (not in smoke runs: ../shared)
            if TINYSTORIES.is_file() and not args.smoke:
                sources.append(long_paragraphs(TINYSTORIES, t + 16, tmp))
            for source in sources:
                r = profile(ref, source, t, args.n_samples)
                r["name"] = name
                out.append(r)
                layers = " ".join(f"{v:.3f}" for v in r["by_layer"])
                uniform = sum(1 / (i + 1) for i in range(t)) / t  # alpha_0 of a head attending uniformly
                print(f"{name:12s} {Path(source).name[:24]:24s} T={t:<4d} n={r['n_samples']:<4d} "
                      f"Sink_1={r['sink_1']:6.2f}% mean a0={r['attention_first']:.3f} (uniform {uniform:.3f})  "
                      f"per layer [{layers}]  max head {r['max_head']} "
                      f"({r['max_head_alpha']:.3f})  sink heads {r['sink_heads'] or '-'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
