"""Reusing a compressed prefill across queries (SCBench's shared context) vs compressing the context per query.

For one context and N queries, measured in one process:
- per query: the context is compressed again for every query (what a pipeline without reuse does), then answered;
- reuse (memory): the context is compressed once, every query decodes on a copy of the compressed cache;
- reuse (disk): the compressed prefill is written to the reusable cache (tasks/prefill_cache.py) and read back
  (what a second run, mode or process pays instead of the prefill).
The answers of the three ways are compared token by token (they must be equal).

Usage (one process, CPU):
    python bench/scbench_reuse.py --model smollm2-135m --press "snapkv(ratio=0.5)" --words 1000 --queries 4 \
        --out /tmp/scbench_reuse.json
    python bench/scbench_reuse.py --smoke   # the demo model, a 60-word context, 2 queries (make test)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.presses import _reuse  # noqa: E402
from components.scbench import protocol  # noqa: E402
from registry.specs import ResolvedSpec, parse  # noqa: E402
from tasks import prefill_cache  # noqa: E402
from tasks.models import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--press", default="snapkv(ratio=0.5)")
    ap.add_argument("--words", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on the demo model shipped in assets/, seconds, no downloads (make test)")
    a = ap.parse_args()
    if a.smoke:
        a.model, a.words, a.queries = "demo", 60, 2
    torch.set_num_threads(a.threads)
    loaded = load_model.fn(a.model)
    press = ResolvedSpec.of(parse(a.press).create("press"))
    task = protocol.task_from_spec(f"passkey(n_contexts=1, words={a.words}, n_needles={a.queries})")
    session, fmt = task.sessions()[0], task.format()
    ctx = protocol.context_ids(loaded.tokenizer, session.context)
    queries = [protocol.query_ids(loaded.tokenizer, protocol.follow_up(session, fmt, i, "multi_request"))
               for i in range(len(session.turns))]
    n = fmt.max_new_tokens

    t0 = time.perf_counter()
    per_query = [_reuse.answer(loaded.model, press.component, _reuse.compress_context(loaded.model, press.component,
                                                                                      ctx), q, n) for q in queries]
    per_query_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pre = _reuse.compress_context(loaded.model, press.component, ctx)
    prefill_s = time.perf_counter() - t0
    reuse = [_reuse.answer(loaded.model, press.component, pre, q, n) for q in queries]
    reuse_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        prefill_cache.compressed_prefill(loaded, press, ctx, root=Path(root))
        store_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        stored = prefill_cache.compressed_prefill(loaded, press, ctx, root=Path(root))
        load_s = time.perf_counter() - t0
        assert stored.info["hit"]
        file_mb = Path(stored.info["path"]).stat().st_size / 2**20
    disk = [_reuse.answer(loaded.model, press.component, stored, q, n) for q in queries]
    same = all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(per_query, reuse, disk))
    answers = [loaded.tokenizer.decode(x[0], skip_special_tokens=True) for x in reuse]
    out = {"model": loaded.name, "press": press.text, "context_tokens": int(ctx.shape[1]), "queries": len(queries),
           "per_query_s": per_query_s, "reuse_s": reuse_s, "prefill_s": prefill_s,
           "answer_s_mean": (reuse_s - prefill_s) / len(queries), "speedup": per_query_s / reuse_s,
           "store_s": store_s, "load_s": load_s, "file_mb": file_mb, "kv_mb": stored.kv_bytes / 2**20,
           "bytes_ratio": stored.bytes_ratio, "answers_identical": same,
           "correct": [protocol.score(t, turn.answers, fmt.metric) for t, turn in zip(answers, session.turns)]}
    print(json.dumps(out, indent=1))
    print(f"scbench reuse: compress once x{out['speedup']:.2f} vs per query, stored prefill loaded in "
          f"{load_s:.3f} s, answers identical {same}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    if not same:
        raise SystemExit("answers differ between per-query, reused and stored prefills")


if __name__ == "__main__":
    main()
