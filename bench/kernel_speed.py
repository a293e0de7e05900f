"""Lightning attention (tiled, pure PyTorch) vs softmax SDPA: forward + backward throughput by sequence length.

Fixed 8192 tokens per batch (batch = 8192 / n), 4 heads, head dim 64, causal, float32, one thread. Each variant
runs forward + backward of sum(output); the time is the CPU time (``time.process_time``) of the fastest of
``--rounds`` interleaved rounds, so the ratios come from one process on one machine state. Prints tokens/s per
length and the lightning / SDPA speed ratio.

    python bench/kernel_speed.py [--lengths 256,512,1024,2048,4096,8192] [--rounds 3] [--json out.json]
    python bench/kernel_speed.py --smoke          # 512 tokens per batch, n = 64 and 128, one round (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.kernels.lightning import alibi_slopes, lightning_tiled, linear_attention  # noqa: E402

TOKENS, HEADS, DIM = 8192, 4, 64


def step(kind: str, n: int, block: int, tokens: int = TOKENS) -> float:
    """CPU seconds of one forward + backward at length n."""
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(tokens // n, HEADS, n, DIM, generator=gen).mul_(0.1).requires_grad_() for _ in range(3))
    slopes = torch.tensor(alibi_slopes(HEADS))
    t0 = time.process_time()
    if kind == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif kind == "lightning":
        out = lightning_tiled(q, k, v, slopes, block)
    else:
        out = linear_attention(q, k, v, slopes)
    out.sum().backward()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="256,512,1024,2048,4096,8192")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--naive-max", type=int, default=2048, help="longest length for the quadratic lightning form")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--tokens", type=int, default=TOKENS, help="tokens per batch")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.lengths, args.rounds, args.tokens, args.naive_max = "64,128", 1, 512, 128
    torch.set_num_threads(1)
    lengths = [int(x) for x in args.lengths.split(",")]
    kinds = ["sdpa", "lightning", "lightning-naive"]
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):  # interleaved rounds: every variant sees the same machine state
        for n in lengths:
            for kind in kinds:
                if kind == "lightning-naive" and n > args.naive_max:
                    continue
                t = step(kind, n, args.block, args.tokens)
                best[(kind, n)] = min(best.get((kind, n), float("inf")), t)
    print(f"torch {torch.__version__}, 1 thread, {args.tokens} tokens per batch, {HEADS} heads, d={DIM}, "
          f"block {args.block}, fastest of {args.rounds} rounds (CPU time)")
    print(f"{'n':>6} {'sdpa tok/s':>12} {'lightning tok/s':>16} {'naive tok/s':>12} {'lightning/sdpa':>15}")
    rows = []
    for n in lengths:
        sd, li = args.tokens / best[("sdpa", n)], args.tokens / best[("lightning", n)]
        nv = args.tokens / best[("lightning-naive", n)] if ("lightning-naive", n) in best else None
        rows.append({"n": n, "sdpa_tok_s": sd, "lightning_tok_s": li, "naive_tok_s": nv, "ratio": li / sd})
        print(f"{n:>6} {sd:>12,.0f} {li:>16,.0f} {'-' if nv is None else f'{nv:,.0f}':>12} {li / sd:>14.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
