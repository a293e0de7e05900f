"""Cost of retrieval_score and of evaluations relative to plain greedy decoding, measured in one process.

1. retrieval_score: ``RetrievalScore.analyze`` over its needle tests (batched, the default, and ``batch_size=1``)
   against a plain greedy decode of the same prompts: ``model.generate`` one prompt at a time, KV cache, exactly
   as many new tokens per prompt as the analysis decoded (it stops at a newline), stock SDPA, no attnflow scope.
   Ratio = analysis time / greedy time (the issue's goal: <= 3).
2. evaluation: the ``needle`` benchmark's ``evaluate`` (baseline patch scope, prompts batched by length) against a
   bare ``model.generate`` of the same prompts in batches of the same size taken in input order (no length
   sorting, no attnflow scope). Tokens/s counts prompt + generated tokens (padding excluded).

Method: ``torch.set_num_threads(--threads)`` (default 1), CPU time (``time.process_time``), so the ratios hold on
a machine shared with other jobs; every variant runs ``--rounds`` times interleaved and the minimum is kept.

    python bench/analysis_speed.py --model smollm2-135m            # default needle grid
    python bench/analysis_speed.py --model demo --lengths 20,40 --depths 0,1    # quick check
    python bench/analysis_speed.py --smoke     # demo model, one 30-token needle, 4 new tokens (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry
from components.analyzers.retrieval_score import needle_span
from components.attention.session import applied
from components.benchmarks import _scoring
from components.modeling import load_model
from registry.specs import parse


def cpu(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


@torch.no_grad()
def greedy(model, tok, prompts_ids: list[list[int]], n_new: list[int]) -> None:
    """Plain greedy decoding, one prompt at a time, exactly n_new tokens each."""
    for ids, n in zip(prompts_ids, n_new):
        model.generate(torch.tensor([ids]), max_new_tokens=max(n, 1), min_new_tokens=max(n, 1), do_sample=False,
                       num_beams=1, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)


@torch.no_grad()
def bare_generate(model, tok, prompts: list[str], max_new: int, batch_size: int) -> list[torch.Tensor]:
    tok.padding_side = "left"
    outs = []
    for chunk in _scoring.batches(prompts, batch_size):
        enc = tok(list(chunk), return_tensors="pt", padding=True)
        outs.append(model.generate(**enc, max_new_tokens=max_new, do_sample=False, num_beams=1,
                                   pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None))
    return outs


def retrieval(model, tok, grid: dict[str, str], rounds: int) -> dict[str, float]:
    rs = registry.get("retrieval_score").create(grid)
    rs1 = registry.get("retrieval_score").create({**grid, "batch_size": "1"})
    rows = rs.build()
    ids = [needle_span(tok, r["prompt"], r["answer_start"], r["answer_end"])[0] for r in rows]
    times: dict[str, list[float]] = {"analysis": [], "analysis_batch1": [], "greedy": []}
    res = None
    for _ in range(rounds):
        t, res = cpu(lambda: rs.analyze(model, tok, rows))
        times["analysis"].append(t)
        n_new = [t_["generated_tokens"] for t_ in res.tables["tests"]]
        times["analysis_batch1"].append(cpu(lambda: rs1.analyze(model, tok, rows))[0])
        times["greedy"].append(cpu(lambda n_new=n_new: greedy(model, tok, ids, n_new))[0])
    best = {k: min(v) for k, v in times.items()}
    n = len(rows)
    return {"n_tests": n, "mean_prompt_tokens": sum(map(len, ids)) / n,
            "new_tokens": sum(t_["generated_tokens"] for t_ in res.tables["tests"]),
            "s_per_test_analysis": best["analysis"] / n, "s_per_test_analysis_batch1": best["analysis_batch1"] / n,
            "s_per_test_greedy": best["greedy"] / n, "ratio": best["analysis"] / best["greedy"],
            "ratio_batch1": best["analysis_batch1"] / best["greedy"],
            "n_retrieval_heads": res.metrics["n_retrieval_heads"], "max_score": res.metrics["max_score"]}


def evaluation(model, tok, spec: str, batch_size: int, rounds: int, new_tokens: int) -> dict[str, float]:
    bench = parse(spec).create("benchmark")
    new_tokens = new_tokens or getattr(bench, "max_new_tokens", 0)
    if not new_tokens:
        raise SystemExit(f"{bench.component_name} has no max_new_tokens parameter: pass --eval-new-tokens")
    rows = bench.build("eval")
    prompts = [r["prompt"] for r in rows]
    n_prompt = sum(len(tok(p)["input_ids"]) for p in prompts)
    times: dict[str, list[float]] = {"evaluate": [], "bare": []}
    for _ in range(rounds):
        with applied(model) as session:
            times["evaluate"].append(cpu(lambda: bench.evaluate(model, tok, rows, session=session,
                                                                 batch_size=batch_size))[0])
        times["bare"].append(cpu(lambda: bare_generate(model, tok, prompts, new_tokens, batch_size))[0])
    tokens = n_prompt + len(prompts) * new_tokens
    best = {k: min(v) for k, v in times.items()}
    return {"benchmark": bench.label(), "n_prompts": len(prompts), "tokens": tokens, "batch_size": batch_size,
            "tok_s_evaluate": tokens / best["evaluate"], "tok_s_bare_generate": tokens / best["bare"],
            "ratio_tok_s": best["bare"] / best["evaluate"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--lengths", default="60,120,240")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--n-per-cell", default="2")
    ap.add_argument("--max-new-tokens", default="24")
    ap.add_argument("--eval", default="needle", help="benchmark spec for the evaluation part ('' to skip)")
    ap.add_argument("--eval-new-tokens", type=int, default=0,
                    help="tokens the benchmark generates per prompt (default: its max_new_tokens parameter)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-retrieval", action="store_true", help="only the evaluation part")
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.lengths, args.depths, args.n_per_cell, args.max_new_tokens = "demo", "30", "0.5", "1", "4"
        args.eval, args.batch_size, args.rounds = "needle(lengths=30, depths=0.5, n_per_cell=2, max_new_tokens=4)", 2, 1
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype=args.dtype)
    grid = {"lengths": args.lengths, "depths": args.depths, "n_per_cell": args.n_per_cell,
            "max_new_tokens": args.max_new_tokens}
    out: dict = {"model": args.model, "threads": args.threads}
    if not args.no_retrieval:
        r = out["retrieval_score"] = retrieval(model, tok, grid, args.rounds)
        print(f"retrieval_score on {args.model}: {r['n_tests']} tests, {r['mean_prompt_tokens']:.0f} prompt tokens, "
              f"{r['new_tokens']} new tokens; CPU s/test: analysis {r['s_per_test_analysis']:.3f} (batch_size=1 "
              f"{r['s_per_test_analysis_batch1']:.3f}), greedy decode {r['s_per_test_greedy']:.3f}")
        print(f"ratio analysis / greedy decode: {r['ratio']:.2f} (batch_size=1: {r['ratio_batch1']:.2f})")
    if args.eval:
        e = out["evaluation"] = evaluation(model, tok, args.eval, args.batch_size, args.rounds,
                                                     args.eval_new_tokens)
        print(f"evaluation {e['benchmark']}: {e['n_prompts']} prompts, {e['tokens']} tokens: "
              f"{e['tok_s_evaluate']:.0f} tok/s vs bare generate {e['tok_s_bare_generate']:.0f} tok/s "
              f"(ratio {e['ratio_tok_s']:.2f})")
    if args.json:
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
