"""The analysis claims: attention sinks, retrieval heads, head importance and path patching (circuit reuse), each
checked on a model over seeds with attnflow's analyzers, benchmarks and head masking.

Thresholds and verdict rules are in docs/reproduce.md (written before any run on a real model) and in each
claim's ``criterion``. Seeds change the probe / evaluation data and the random head draws; every figure is
reported per seed, with means and 95% t confidence intervals over seeds (tasks.claims_base).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import numpy as np

from components import data as data_sources
from components.analyzers import _prompts
from components.analyzers._head_patching import patched_logit_diffs
from components.analyzers.base import top_heads
from components.patches.base import model_shape
from infra.settings import settings
from tasks.claims_base import INCONCLUSIVE, Claim, above, at_least, check_seeds, combine, fmt_ci, result, summarize
from tasks.claims_masking import HEAD_IMPORTANCE, RETRIEVAL_HEADS, analysis, loaded_model

SINK_MIN, SINK_RATIO = 30.0, 3.0
IOI_SOLVED_SHARE = 2 / 3


# ------------------------------------------------------------------------------------------ sinks


def probe_file(source: str, seed: int, n: int, min_words: int) -> str:
    """``n`` texts of at least ``min_words`` words drawn from a text source with ``seed`` (file sources are read in
    order by the analyzers, so seeds would otherwise repeat the same probes), written once as JSONL (temp name,
    then rename) in the data directory; returns its path."""
    path = settings().data_dir / f"probes-{data_sources.fingerprint(source)}-{seed}-{n}-{min_words}.jsonl"
    if not path.exists():
        texts = [t for t in data_sources.texts(data_sources.read_records(source), "text", source)
                 if len(t.split()) >= min_words]
        if not texts:
            raise data_sources.DataSourceError(f"{source!r}: no text of at least {min_words} words to probe with")
        picked = random.Random(seed).sample(texts, min(n, len(texts)))
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in picked))
        tmp.replace(path)
    return str(path)


def run_sinks(model: str, *, seeds: list[int], data: dict[str, str], dtype: str = "float32", progress: bool = False,
              control_model: str | None = None, n_samples: int = 32) -> dict[str, Any]:
    """Sink_1 (sink_metric defaults: eps 0.3, T 64) of the model and of the no-sink control, per probe seed."""
    started = time.perf_counter()
    check_seeds(seeds)
    models = {"model": model, **({"control": control_model} if control_model else {})}
    per_seed = []
    for seed in seeds:
        params: dict[str, Any] = {"n_samples": n_samples, "seed": seed}
        if data.get("corpus"):  # T = 64 tokens: texts of >= 64 words (a word is >= 1 token), short ones skipped
            params.update(source=probe_file(data["corpus"], seed, n_samples, 64), short="skip")
        row: dict[str, Any] = {"seed": seed}
        for role, ref in models.items():
            rec = analysis(loaded_model(ref, dtype), ref, "sink_metric", params, progress)
            row[f"sink_1_{role}"] = rec["result"]["metrics"]["sink_1"]
        if control_model:
            row["margin"] = row["sink_1_model"] - SINK_RATIO * row["sink_1_control"]
        per_seed.append(row)
    figures, ci = summarize(per_seed)
    parts = [at_least(ci["sink_1_model"], SINK_MIN)]
    reason = f"Sink_1 {figures['sink_1_model']:.1f}% CI {fmt_ci(ci['sink_1_model'])} vs >= {SINK_MIN:g}%"
    if control_model:
        parts.append(above(ci["margin"], 0.0))
        reason += (f"; control {figures['sink_1_control']:.1f}% CI {fmt_ci(ci['sink_1_control'])}, margin "
                   f"Sink_1 - {SINK_RATIO:g} x control = {figures['margin']:.1f} CI {fmt_ci(ci['margin'])} vs > 0")
    else:
        reason += "; no control model given: only the absolute threshold was checked"
    return result(SINKS, model, verdict=combine(parts), reason=reason, per_seed=per_seed,
                  effect="margin" if control_model else "sink_1_model",
                  threshold=0.0 if control_model else SINK_MIN, started=started, control_model=control_model)


SINKS = Claim(
    name="sinks", paper="arXiv:2410.10781",
    statement="LMs trained at scale put most of the attention of many heads on the first token (attention sink), "
              "unlike a model without a sink.",
    criterion=f"Sink_1 (sink_metric, eps 0.3, T 64) >= {SINK_MIN:g}% and Sink_1(model) - {SINK_RATIO:g} x "
              "Sink_1(no-sink control) > 0, both for the whole 95% CI over probe seeds",
    run=run_sinks)


# ------------------------------------------------------------------------------------------ path patching


def n_name_movers(n_total: int, k: int = 5) -> int:
    """k name-mover-like heads; a quarter of all heads on models with fewer than 20 heads."""
    return k if n_total >= 20 else max(1, n_total // 4)


def run_path_patching(model: str, *, seeds: list[int], data: dict[str, str], dtype: str = "float32",
                      progress: bool = False, n_prompts: int = 16, k: int = 5, n_random: int = 3,
                      batch_size: int = 16, select_per_seed: bool = False) -> dict[str, Any]:
    """Select the top-k heads by direct effect on the IOI logit difference on one prompt set (seed first seed + 1000;
    per seed with ``select_per_seed``: seed + 1000), then per seed patch them (and k random heads) together with
    their corrupted-run outputs on the seed's prompt set (another RNG stream)."""
    started = time.perf_counter()
    check_seeds(seeds)
    loaded = loaded_model(model, dtype)
    n_layers, n_heads = model_shape(loaded.model.config)
    k = min(n_name_movers(n_layers * n_heads, k), n_layers * n_heads // 2)
    all_heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    per_seed, solved, n_eval, chosen = [], 0, 0, {}

    def select(seed: int) -> list[tuple[int, int]]:
        rec = analysis(loaded, model, "path_patching", {"n_prompts": n_prompts, "seed": seed + 1000,
                                                        "batch_size": batch_size}, progress)
        effect = np.asarray(rec["result"]["arrays"]["effect"]["data"], dtype=float).reshape(n_layers, n_heads)
        return top_heads(np.nan_to_num(effect, nan=-np.inf), k)

    shared = None if select_per_seed else select(seeds[0])
    for seed in seeds:
        movers = shared or select(seed)
        rng = random.Random(f"path_patching-{seed}")
        others = [h for h in all_heads if h not in movers]
        draws = [sorted(rng.sample(others, k)) for _ in range(n_random)]
        rows = _prompts.prompt_pairs("ioi", n_prompts, seed)
        out = patched_logit_diffs(loaded.model, loaded.tokenizer, rows, [movers, *draws], batch_size)
        clean = np.asarray(out["clean"])
        solved, n_eval = solved + int((clean > 0).sum()), n_eval + len(clean)
        ld = [float(np.mean(p)) for p in out["patched"]]
        red_top = float(clean.mean()) - ld[0]
        red_rnd = float(np.mean([float(clean.mean()) - x for x in ld[1:]]))
        chosen[seed] = [list(h) for h in movers]
        per_seed.append({"seed": seed, "clean_ld": float(clean.mean()), "corrupt_ld": float(np.mean(out["corrupt"])),
                         "solved_share": float((clean > 0).mean()), "patched_ld_movers": ld[0],
                         "patched_ld_random": float(np.mean(ld[1:])), "reduction_movers": red_top,
                         "reduction_random": red_rnd, "reduction_gap": red_top - red_rnd})
    figures, ci = summarize(per_seed)
    share = solved / n_eval
    reason = (f"name movers reduce the logit difference by {figures['reduction_movers']:.3g} CI "
              f"{fmt_ci(ci['reduction_movers'])}, random heads by {figures['reduction_random']:.3g}; gap "
              f"{figures['reduction_gap']:.3g} CI {fmt_ci(ci['reduction_gap'])} vs > 0")
    if share < IOI_SOLVED_SHARE:
        verdict = INCONCLUSIVE
        reason = f"the model solves only {share:.0%} of the IOI prompts (< {IOI_SOLVED_SHARE:.0%}); " + reason
    else:
        verdict = combine([above(ci["reduction_movers"], 0.0), above(ci["reduction_gap"], 0.0)])
        reason = f"clean logit difference > 0 on {share:.0%} of prompts; " + reason
    return result(PATH_PATCHING, model, verdict=verdict, reason=reason, per_seed=per_seed,
                  figures={**figures, "ioi_solved_share": share}, ci=ci, effect="reduction_gap", threshold=0.0,
                  started=started, k=k, name_movers=chosen)


PATH_PATCHING = Claim(
    name="path_patching", paper="arXiv:2310.08744",
    statement="On IOI the model's name-mover heads carry the logit difference: patching them with their "
              "corrupted-prompt outputs reduces logit(IO) - logit(S).",
    criterion="on IOI prompts the model solves (clean logit difference > 0 on >= 2/3 of prompts, else "
              "inconclusive), patching the top-5 heads by direct effect (chosen on disjoint prompts) reduces the "
              "logit difference (> 0) and by more than patching 5 random heads (gap > 0), for the whole 95% CI",
    run=run_path_patching)


CLAIMS: dict[str, Claim] = {c.name: c for c in (SINKS, RETRIEVAL_HEADS, HEAD_IMPORTANCE, PATH_PATCHING)}
