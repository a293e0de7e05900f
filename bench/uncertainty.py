"""SAR and its baselines on a real model and QA set: AUROC / AUPRC for predicting errors, and the cache speed-up.

One process, CPU:
1. the QA file is prepared (a fixed shuffle, the first ``--n`` questions), the generations cache is built (or
   resumed) and the similarity cache beside it (timed when computed here);
2. every method is scored from the caches (read + score, best of ``--repeats``), nothing generated;
3. regenerating: the first ``--regen`` questions are sampled again into a scratch cache (timed), so the speed-up
   "scoring all methods from the cache vs regenerating" is per question, measured in this process;
4. correctness of the greedy answer (ROUGE-L >= 0.5 against any reference), AUROC / AUPRC with bootstrap CIs, and
   SAR minus each baseline with a paired bootstrap CI.

Usage:
    ATTNFLOW_HOME=/work/home/bench python bench/uncertainty.py --model smollm2-135m --n 100 --k 5 \
        --max-new-tokens 32 --out /tmp/uncertainty.json
    python bench/uncertainty.py --smoke   # the demo model shipped in assets/, 4 generated questions, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("ATTNFLOW_SHARED", REPO / "../shared")).resolve()
TRUTHFULQA = SHARED / "data" / "tasks" / "truthfulqa" / "TruthfulQA.csv"
METHODS = ["predictive_entropy", "ln_predictive_entropy", "semantic_entropy", "lexical_similarity", "token_sar",
           "sentence_sar", "sar"]
BASELINES = ["predictive_entropy", "ln_predictive_entropy", "semantic_entropy", "lexical_similarity"]


def smoke_data(tmp: Path) -> Path:
    """Four made-up questions with references (no files outside the repository)."""
    rows = [{"question": "Who went to the park?", "answers": ["Tom went to the park"]},
            {"question": "What did the cat eat?", "answers": ["The cat ate the fish"]},
            {"question": "Where is the ball?", "answers": ["The ball is under the tree"]},
            {"question": "What color is the sky?", "answers": ["The sky is blue"]}]
    path = tmp / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(TRUTHFULQA))
    ap.add_argument("--question-field", default="Question")
    ap.add_argument("--answers-field", default="Correct Answers")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--template", default="Answer the question in one short sentence.\nQuestion: {question}")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--similarity", default="hidden")
    ap.add_argument("--entailment", default="rouge")
    ap.add_argument("--regen", type=int, default=8, help="questions sampled again to time regeneration")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on the demo model shipped in assets/, seconds, no ../shared, no downloads")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-uncertainty-"))
    if a.smoke:
        a.model, a.data, a.question_field, a.answers_field = "demo", str(smoke_data(tmp)), "question", "answers"
        a.n, a.k, a.max_new_tokens, a.shard_size, a.regen, a.repeats, a.n_boot = 4, 3, 6, 2, 2, 1, 50
        a.template = "{question}"
    torch.set_num_threads(a.threads)

    from components.uncertainty import _eval
    from tasks import generations as G
    from tasks import similarity_cache as S
    from tasks.models import load_model
    from tasks.uncertainty import correctness, plan_methods, score_all, table_markdown
    from tasks.uncertainty_data import prepare_qa

    methods = plan_methods.fn(METHODS)
    data = prepare_qa.fn(a.data, a.question_field, a.answers_field, ";", a.n)
    loaded = load_model.fn(a.model)
    config = G.sampling_config(a.k, a.temperature, 1.0, 0, a.max_new_tokens, 0, ["\n"], a.batch_size, a.shard_size,
                               a.template, True)
    # 1. caches (timed when computed now)
    gens = G.build(loaded, data, config, progress=True)
    sims = S.build_similarity(loaded, gens["dir"], a.similarity, a.entailment, progress=True)
    n = gens["n_rows"]
    gen_s_per_q = sum(s["seconds"] for s in gens["shards"]) / n
    sim_s_per_q = sum(s["seconds"] for s in sims["shards"]) / n
    # 2. scoring every method from the caches: read + score, best of --repeats
    best, out = float("inf"), None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = score_all(methods, gens["dir"], sims["dir"])
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    # 3. regenerating the first --regen questions in this process (a scratch cache: same code path as step 1)
    from tasks.io import write_rows
    from tasks.integrity import seal
    from tasks.uncertainty_data import load_qa

    sub = tmp / "regen.parquet"
    write_rows(load_qa(data)[: a.regen], sub)
    seal(sub)
    t0 = time.perf_counter()
    G.build(loaded, str(sub), {**config, "shard_size": a.regen}, cache_dir=str(tmp / "regen-cache"))
    regen_s_per_q = (time.perf_counter() - t0) / a.regen
    score_s_per_q = best / n
    # 4. correctness, AUROC / AUPRC with CIs, SAR vs baselines
    correct = correctness(out["greedy"], out["references"])
    errors = 1 - correct
    rows = _eval.summary(out["scores"], errors, a.n_boot)
    deltas = {b: _eval.paired_delta(out["scores"]["sar"], out["scores"][b], errors, a.n_boot) for b in BASELINES}
    title = f"{loaded.name}, {Path(a.data).name}, n={n}, K={a.k}, T={a.temperature}, max {a.max_new_tokens} tokens"
    print()
    print(table_markdown(rows, title))
    print(f"accuracy of the greedy answer (ROUGE-L >= 0.5): {correct.mean():.3f} ({int(correct.sum())}/{n})")
    print("\n| SAR minus | dAUROC | 95% CI (paired bootstrap) |\n|---|---|---|")
    for b, d in deltas.items():
        print(f"| {b} | {d['delta']:+.3f} | [{d['lo']:+.3f}, {d['hi']:+.3f}] |")
    print(f"\nper question: generate {gen_s_per_q:.3f}s (cache build), regenerate {regen_s_per_q:.3f}s (this "
          f"process, {a.regen} questions), similarity {sim_s_per_q:.3f}s, score all {len(methods)} methods from the "
          f"cache {score_s_per_q * 1000:.2f} ms")
    print(f"speed-up scoring from cache vs regenerating: x{regen_s_per_q / score_s_per_q:,.0f} "
          f"(vs regenerating + similarity: x{(regen_s_per_q + sim_s_per_q) / score_s_per_q:,.0f})")
    if a.out:
        Path(a.out).write_text(json.dumps({"rows": rows, "deltas": deltas, "accuracy": float(correct.mean()), "n": n,
                                           # the data file by name and content, not by a path on this machine
                                           "args": {**vars(a), "data": Path(a.data).name},
                                           "data_sha256": hashlib.sha256(Path(a.data).read_bytes()).hexdigest(),
                                           "generations_key": gens["key"],
                                           "similarity_key": sims["key"], "gen_s_per_q": gen_s_per_q,
                                           "regen_s_per_q": regen_s_per_q, "sim_s_per_q": sim_s_per_q,
                                           "score_s_per_q": score_s_per_q, "greedy": out["greedy"],
                                           "correct": correct.tolist()}, indent=2))


if __name__ == "__main__":
    main()
