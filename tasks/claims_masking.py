"""The head-masking claims: retrieval heads (Wu et al., arXiv 2404.15574) and head importance (Li et al., arXiv
2303.13731 with Michel et al.'s gate importance), plus the helpers the analysis claims share (one model load per
process, a validated + cached analyzer run, an evaluation of a head-masked model).

Thresholds and verdict rules: docs/reproduce.md and each claim's ``criterion``.
"""

from __future__ import annotations

import functools
import math
import random
import time
from typing import Any

from components.patches.base import model_shape
from registry.specs import resolved
from tasks.analysis import analysis_data, head_mask_spec, plan_analysis, run_analysis
from tasks.claims_base import (INCONCLUSIVE, Claim, above, at_least, at_most, check_seeds, combine, fmt_ci, point,
                               result, summarize)
from tasks.data import benchmark_data
from tasks.evaluate import evaluate
from tasks.models import LoadedModel, load_model

RETRIEVAL_SHARE, COLLAPSE, SPARE, RETRIEVAL_FLOOR = 0.10, 0.5, 0.9, 0.2
PRUNE_SHARE, KV_FLOOR = 0.2, 0.25


@functools.lru_cache(maxsize=2)
def loaded_model(model: str, dtype: str) -> LoadedModel:
    """The model loaded once per process for all claims (load_model is a Prefect task, never cached)."""
    return load_model(model, dtype=dtype)


def analysis(loaded: LoadedModel, model: str, analyzer: str, params: dict[str, Any], progress: bool) -> dict:
    """Validate, prepare and run (cached) one analyzer; returns the run_analysis record."""
    spec = plan_analysis(model, analyzer, params)
    return run_analysis(loaded, spec, analysis_data(spec), progress=progress)


def score(loaded: LoadedModel, heads: list | None, benchmark: str, *, mode: str, batch_size: int,
          progress: bool) -> float:
    """Primary metric of a benchmark with ``heads`` masked (None = the unmasked model); evaluations are cached."""
    bench = resolved(benchmark, "benchmark")  # parsed and built once, for the data and the evaluation
    comp = resolved("baseline" if heads is None else head_mask_spec([list(h) for h in heads], mode, "all"), "patch")
    r = evaluate(loaded, comp, bench, benchmark_data(bench.component), batch_size=batch_size, progress=progress)
    return float(r["metrics"][bench.component.primary_metric])


# ------------------------------------------------------------------------------------------ retrieval heads


def run_retrieval_heads(model: str, *, seeds: list[int], data: dict[str, str], dtype: str = "float32",
                        progress: bool = False, lengths: str = "60;120", detect_depths: str = "0;0.5;1",
                        depths: str = "0;0.25;0.5;0.75;1", n_per_cell: int = 1, max_new_tokens: int = 16,
                        batch_size: int = 16) -> dict[str, Any]:
    """Detect retrieval heads once (first seed), then per seed: needle and passkey accuracy unmasked, with the K
    retrieval heads masked, and with K random non-retrieval heads masked (uniform attention, the paper's mask)."""
    started = time.perf_counter()
    check_seeds(seeds)
    loaded = loaded_model(model, dtype)
    n_layers, n_heads = model_shape(loaded.model.config)
    haystack = data.get("haystack", "builtin:stories")
    grid = f"lengths={lengths}, n_per_cell={n_per_cell}, haystack={haystack}"
    rec = analysis(loaded, model, "retrieval_score",
                   {"lengths": lengths.replace(";", ","), "depths": detect_depths.replace(";", ","),
                    "n_per_cell": 1, "max_new_tokens": max_new_tokens, "haystack": haystack, "seed": seeds[0]},
                   progress)
    ranking = [tuple(p) for p in rec["result"]["heads"]["ranking"]]
    retrieval = [tuple(p) for p in rec["result"]["heads"]["retrieval_heads"]]
    k, share = len(retrieval), len(retrieval) / (n_layers * n_heads)
    extra = {"retrieval_heads": [list(h) for h in retrieval], "k": k}
    if k == 0 or 2 * k > n_layers * n_heads:
        why = "no retrieval head found (no score > 0.1)" if k == 0 else f"{k} retrieval heads leave too few others"
        return result(RETRIEVAL_HEADS, model, verdict=INCONCLUSIVE, reason=why, per_seed=[], figures={
            "retrieval_share": share}, ci={}, started=started, **extra)
    pool = [h for h in ranking if h not in retrieval]
    per_seed = []
    for seed in seeds:
        draw = sorted(random.Random(f"retrieval_heads-{seed}").sample(pool, k))
        row: dict[str, Any] = {"seed": seed}
        for task in ("needle", "passkey"):
            spec = (f"needle({grid}, depths={depths}, max_new_tokens={max_new_tokens}, seed={seed})"
                    if task == "needle"
                    else f"passkey(lengths={lengths}, depths={depths}, n_per_cell={n_per_cell}, seed={seed})")
            base, top, rnd = (score(loaded, h, spec, mode="uniform", batch_size=batch_size, progress=progress)
                              for h in (None, retrieval, draw))
            row.update({f"{task}_base": base, f"{task}_top": top, f"{task}_random": rnd,
                        f"{task}_top_ratio": top / base if base else math.nan,
                        f"{task}_random_ratio": rnd / base if base else math.nan})
        per_seed.append(row)
    figures, ci = summarize(per_seed)
    figures["retrieval_share"] = share
    parts, notes = [point(share < RETRIEVAL_SHARE)], [f"{k} retrieval heads ({share:.1%} of heads, < 10%)"]
    floor_ok = all(r[f"{t}_base"] > RETRIEVAL_FLOOR for r in per_seed for t in ("needle", "passkey"))
    for t in ("needle", "passkey"):
        parts += [at_most(ci[f"{t}_top_ratio"], COLLAPSE), at_least(ci[f"{t}_random_ratio"], SPARE)]
        notes.append(f"{t}: base {figures[f'{t}_base']:.2f}, top/base {figures[f'{t}_top_ratio']:.2f} CI "
                     f"{fmt_ci(ci[f'{t}_top_ratio'])} (<= {COLLAPSE}), random/base {figures[f'{t}_random_ratio']:.2f}"
                     f" CI {fmt_ci(ci[f'{t}_random_ratio'])} (>= {SPARE})")
    verdict = combine(parts) if floor_ok else INCONCLUSIVE
    reason = ("" if floor_ok else f"baseline accuracy <= {RETRIEVAL_FLOOR} on some seed/task; ") + "; ".join(notes)
    return result(RETRIEVAL_HEADS, model, verdict=verdict, reason=reason, per_seed=per_seed, figures=figures, ci=ci,
                  effect="needle_top_ratio", threshold=COLLAPSE, started=started, **extra)


RETRIEVAL_HEADS = Claim(
    name="retrieval_heads", paper="arXiv:2404.15574",
    statement="A few heads (retrieval score > 0.1) do the copying in needle retrieval: masking them collapses it, "
              "masking as many random heads does not.",
    criterion="under 10% of heads score > 0.1 (one detection), and on needle and passkey: masked-retrieval-heads "
              "accuracy / baseline <= 0.5 and masked-random / baseline >= 0.9 for the whole 95% CI over seeds "
              "(baseline > 0.2 required, else inconclusive)",
    run=run_retrieval_heads)


# ------------------------------------------------------------------------------------------ head importance


def run_head_importance(model: str, *, seeds: list[int], data: dict[str, str], dtype: str = "float32",
                        progress: bool = False, n_importance: int = 32, n_eval: int = 50, ppl_tokens: int = 4000,
                        n_random: int = 3, batch_size: int = 16) -> dict[str, Any]:
    """Per seed: Taylor importance on kv_retrieval (data seed + 100), then mask the least important 20% of heads vs
    20% random heads (n_random draws) and score perplexity and kv_retrieval (data seed = the seed)."""
    started = time.perf_counter()
    check_seeds(seeds)
    loaded = loaded_model(model, dtype)
    n_layers, n_heads = model_shape(loaded.model.config)
    all_heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    k = max(1, round(PRUNE_SHARE * len(all_heads)))
    source = data.get("corpus", "builtin:stories")
    ppl = f"perplexity(source={source}, max_tokens={ppl_tokens})"
    per_seed, least_sets = [], {}
    for seed in seeds:
        rec = analysis(loaded, model, "head_importance", {
            "task": f"kv_retrieval(n_examples={n_importance}, seed={seed + 100})", "measures": "taylor",
            "batch_size": batch_size}, progress)
        ranking = [tuple(p) for p in rec["result"]["heads"]["ranking_taylor"]]  # most important first
        least = sorted(ranking[-k:])
        rng = random.Random(f"head_importance-{seed}")
        draws = [sorted(rng.sample(all_heads, k)) for _ in range(n_random)]
        kv = f"kv_retrieval(n_examples={n_eval}, seed={seed})"

        def both(heads, kv=kv):
            return (score(loaded, heads, ppl, mode="zero", batch_size=batch_size, progress=progress),
                    score(loaded, heads, kv, mode="zero", batch_size=batch_size, progress=progress))

        (p0, a0), (p1, a1) = both(None), both(least)
        rnd = [both(d) for d in draws]
        log_rnd = sum(math.log(p) for p, _ in rnd) / n_random
        acc_rnd = sum(a for _, a in rnd) / n_random
        least_sets[seed] = [list(h) for h in least]
        per_seed.append({"seed": seed, "ppl_base": p0, "ppl_least": p1, "ppl_random": math.exp(log_rnd),
                         "acc_base": a0, "acc_least": a1, "acc_random": acc_rnd,
                         "logppl_gap": log_rnd - math.log(p1), "acc_gap": a1 - acc_rnd})
    figures, ci = summarize(per_seed)
    task_ok = all(r["acc_base"] >= KV_FLOOR for r in per_seed)
    parts = [above(ci["logppl_gap"], 0.0), above(ci["acc_gap"], 0.0) if task_ok else INCONCLUSIVE]
    reason = (f"{k} heads masked; perplexity {figures['ppl_base']:.3g} -> least {figures['ppl_least']:.3g} vs random "
              f"{figures['ppl_random']:.3g} (log-ppl gap {figures['logppl_gap']:.3g} CI {fmt_ci(ci['logppl_gap'])} vs "
              f"> 0); kv_retrieval {figures['acc_base']:.2f} -> least {figures['acc_least']:.2f} vs random "
              f"{figures['acc_random']:.2f} (gap {figures['acc_gap']:.3g} CI {fmt_ci(ci['acc_gap'])} vs > 0)")
    if not task_ok:
        reason += f"; kv_retrieval baseline < {KV_FLOOR} on some seed: the task part is inconclusive"
    return result(HEAD_IMPORTANCE, model, verdict=combine(parts), reason=reason, per_seed=per_seed, figures=figures,
                  ci=ci, effect="logppl_gap", threshold=0.0, started=started, k=k, least_important=least_sets)


HEAD_IMPORTANCE = Claim(
    name="head_importance", paper="arXiv:2303.13731",
    statement="Heads differ in importance: removing the least important heads (by importance measured on other "
              "data) costs less than removing as many random heads.",
    criterion="masking the 20% least important heads (Taylor importance on a disjoint kv_retrieval split) degrades "
              "log-perplexity and kv_retrieval accuracy less than masking 20% random heads (3 draws): both gaps "
              "> 0 for the whole 95% CI over seeds (kv_retrieval baseline >= 0.25, else that part is inconclusive)",
    run=run_head_importance)
