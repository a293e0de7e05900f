"""Forward-time overhead of each attention patch relative to stock SDPA, measured in one process.

Model: random Llama, 4 layers, hidden 512, 8 heads (head_dim 64), vocab 4096, batch 1, full logits.
Method: ``torch.set_num_threads(1)``, CPU time (``time.process_time``), interleaved rounds (every variant once per
round, in order). Reported: the minimum time over rounds, and the ratio = median over rounds of (variant time /
stock-sdpa time in the same round), which cancels slow drifts of the machine. Materialised variants route the
same patch through the fallback path (eager softmax), to show what the fast path saves.

    python bench/patch_overhead.py                      # T = 512, 1024, 2048, 5 rounds
    python bench/patch_overhead.py --lengths 512 --rounds 3 --json out.json
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

from components.attention.session import applied  # noqa: E402
from registry.specs import parse  # noqa: E402

# name -> (component spec or None for stock, force path or None); issue-specific patches append here
VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "sdpa (stock)": (None, None),
    "eager (stock)": ("eager", None),
    "baseline": ("baseline", None),
    "zerotuning": ("zerotuning(gamma=2)", None),
    "zerotuning [channels]": ("zerotuning(gamma=2)", "channels"),
    "zerotuning [materialised]": ("zerotuning(gamma=2)", "materialize"),
    "head_mask uniform 2/8": ("head_mask(heads=0:1;1:3;2:5;3:7)", None),
    "head_mask zero 2/8": ("head_mask(heads=0:1;1:3;2:5;3:7, mode=zero)", None),
    "head_pattern_override 2/8": ("head_pattern_override(heads=0:1;1:3;2:5;3:7, positions=0)", None),
    "head_pattern_override [materialised]": ("head_pattern_override(heads=0:1;1:3;2:5;3:7, positions=0)",
                                             "materialize"),
}


def build_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096)
    return LlamaForCausalLM(cfg).eval()


def time_variant(model, ids, spec, force) -> float:
    with torch.no_grad():
        if spec is None:
            start = time.process_time()
            model(input_ids=ids)
            return time.process_time() - start
        if spec == "eager":
            model.set_attn_implementation("eager")
            try:
                start = time.process_time()
                model(input_ids=ids)
                return time.process_time() - start
            finally:
                model.set_attn_implementation("sdpa")
        patch = parse(spec).create("patch")
        with applied(model, patch, force=force):
            start = time.process_time()
            model(input_ids=ids)
            return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build_model()
    variants = {k: v for k, v in VARIANTS.items() if args.only is None or k in args.only or k == "sdpa (stock)"}
    results: dict[int, dict[str, float]] = {}
    ratios: dict[int, dict[str, float]] = {}
    for T in args.lengths:
        ids = torch.randint(0, 4096, (1, T), generator=torch.Generator().manual_seed(T))
        for spec, force in variants.values():  # warm-up
            time_variant(model, ids[:, :64], spec, force)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, (spec, force) in variants.items():
                times[name].append(time_variant(model, ids, spec, force))
        results[T] = {k: min(v) for k, v in times.items()}
        base = times["sdpa (stock)"]
        ratios[T] = {k: statistics.median(t / b for t, b in zip(v, base)) for k, v in times.items()}
    print(f"# patch overhead: forward CPU time (min of {args.rounds} interleaved rounds) and ratio to stock SDPA "
          f"(median of per-round ratios); 1 thread, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    header = f"{'variant':32s}" + "".join(f"{'T=' + str(T):>20s}" for T in args.lengths)
    print(header)
    for name in variants:
        cells = []
        for T in args.lengths:
            ms, ratio = results[T][name] * 1000, ratios[T][name]
            cells.append(f"{ms:9.0f} ms x{ratio:5.2f}")
        print(f"{name:32s}" + "".join(f"{c:>20s}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"min_seconds": {str(T): r for T, r in results.items()},
                                         "median_ratio": {str(T): r for T, r in ratios.items()}}, indent=2))


if __name__ == "__main__":
    main()
