"""KV-cache presses on a real model: cache bytes ratio, prefill time, decode tokens/s, process RSS.

Usage (one process, CPU):
    python bench/kv_press.py --model smollm2-135m \
        --lengths 2048 4096 --ratios 0.5 --decode 32 --repeats 2 --out /tmp/kv_press.json
    python bench/kv_press.py --smoke    # the demo model, T=128, 4 decode steps: checks the script runs (make test)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.modeling import load_model  # noqa: E402
from components.presses.base import cache_bytes  # noqa: E402
from registry.specs import parse  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # peak RSS so far (Linux: KiB)


@torch.no_grad()
def run_point(model, ids, press, n_decode):
    """Prefill (timed), measure cache bytes, decode n_decode greedy steps (timed)."""
    scope = press.applied(model) if press is not None else None
    if scope is not None:
        scope.__enter__()
    try:
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill = time.perf_counter() - t0
        cache = out.past_key_values
        nbytes = cache_bytes(cache)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(n_decode):
            out = model(input_ids=tok, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        decode = time.perf_counter() - t0
    finally:
        if scope is not None:
            scope.__exit__(None, None, None)
    return dict(prefill_s=prefill, cache_bytes=nbytes, decode_tok_s=n_decode / decode, rss_mb=rss_mb())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--presses", nargs="+", default=["streaming_llm", "knorm", "snapkv", "tova", "h2o", "pyramidkv",
                                                     "adakv"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5])
    ap.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096])
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on the demo model shipped in assets/, seconds, no downloads (make test)")
    a = ap.parse_args()
    if a.smoke:
        a.model, a.lengths, a.decode, a.repeats = "demo", [128], 4, 1
    torch.set_num_threads(a.threads)
    model, _ = load_model(a.model)
    vocab = model.config.vocab_size
    rows = []
    for t in a.lengths:
        ids = torch.randint(min(100, vocab // 4), vocab, (1, t), generator=torch.Generator().manual_seed(t))
        run_point(model, ids[:, :64], None, 2)  # warm-up
        for spec in a.presses:
            for r in a.ratios:
                press = parse(spec).create("press").with_ratio(r)
                # baseline and press interleaved, ``repeats`` times each; the fastest run of each is kept (the CPU
                # is shared, so the minimum is the least disturbed measurement)
                base, pts = [], []
                for _ in range(a.repeats):
                    base.append(run_point(model, ids, None, a.decode))
                    pts.append(run_point(model, ids, press, a.decode))
                b = dict(prefill_s=min(x["prefill_s"] for x in base), decode_tok_s=max(x["decode_tok_s"] for x in base))
                p = dict(pts[-1], prefill_s=min(x["prefill_s"] for x in pts),
                         decode_tok_s=max(x["decode_tok_s"] for x in pts))
                rows.append(dict(press=spec, ratio=r, T=t, **p, bytes_ratio=p["cache_bytes"] / base[0]["cache_bytes"],
                                 base_prefill_s=b["prefill_s"], base_decode_tok_s=b["decode_tok_s"],
                                 prefill_x=p["prefill_s"] / b["prefill_s"],
                                 decode_x=p["decode_tok_s"] / b["decode_tok_s"]))
                print(json.dumps(rows[-1]), flush=True)
                print(f"{spec:>14} ratio {r:.3f} T={t}: cache x{rows[-1]['bytes_ratio']:.3f}, prefill "
                      f"x{rows[-1]['prefill_x']:.2f}, decode x{rows[-1]['decode_x']:.2f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
