"""Few-shot and steering claims (ACT, ZeroTuning supervised/unsupervised, SITE, PASTA) as ``attnflow reproduce``
checks: ``CLAIMS`` maps a claim name to a ``Claim`` (tasks/claims_base.py). Protocol, criteria and sizes:
docs/reproduce-fewshot.md.

Classification claims: each dataset file (fields ``text``, ``label`` = label word) is cut into disjoint test /
validation / train parts; heads (and gamma) come from the ``head-search`` flow on the validation part; the test
rows are scored with k demonstrations from the train part drawn with each seed; SITE is fitted on the train part
and evaluated zero-shot against the same k-shot baseline. The gain per seed is the mean over usable datasets
(baseline above chance) of method - baseline accuracy; 95% t-interval over seeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import registry
from registry.specs import spec_text
from components.base import ParamError, check_range
from components.benchmarks import _userdata
from infra.settings import settings
from tasks import claims_stats as stats
from tasks.claims_base import Claim
from tasks.claims_pasta import PASTA_CLAIM
from tasks.data import benchmark_data
from tasks.evaluate import evaluate
from tasks.models import load_model

DATASETS = ("sst2", "agnews", "trec")
#: prompt template per dataset key (any other key: the benchmark's generic template)
TEMPLATES = {"sst2": "Review: {text}\\nSentiment:", "agnews": "Article: {text}\\nTopic:",
             "trec": "Question: {text}\\nAnswer type:"}
DEFAULT_TEMPLATE = "Input: {text}\\nLabel:"
_SPLIT_SEED = 1234


@dataclass(frozen=True)
class Sizes:
    """Sizes of one classification claim run (options of ``run``).

    n_test: test rows per dataset. n_val: validation rows (head search). n_train: at most this many train rows
    (demonstrations, SITE fit). shots: demonstrations per test prompt. search_layers: head-search candidates,
    a head set ("all", "10-12:*") or "middle" (every head of the middle layer). n_fit: SITE fit rows (its last
    fifth validates). site_*: SITE's n_shots, n_prompts, steps, valid_every. batch_size: evaluation batch.
    """

    n_test: int = 32
    n_val: int = 12
    n_train: int = 200
    shots: int = 4
    search_layers: str = "middle"
    n_fit: int = 64
    site_shots: int = 4
    site_prompts: int = 16
    site_steps: int = 50
    site_valid_every: int = 25
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("n_test", "n_val", "n_train", "n_fit", "site_shots", "site_prompts", "site_valid_every",
                     "batch_size"):
            check_range(f"claim option {name}", getattr(self, name), 1)
        check_range("claim option site_steps", self.site_steps, 0)
        check_range("claim option shots", self.shots, 1, 64)
        if self.n_val < self.shots + 2:
            raise ParamError(f"claim option n_val={self.n_val} must be >= shots + 2 = {self.shots + 2} (the "
                             "validation rows are also their own demonstrations)")
        if not self.search_layers.strip():
            raise ParamError("claim option search_layers is empty (a head set or 'middle')")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Sizes:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names - {"datasets"})
        if unknown:
            raise ParamError(f"unknown claim option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}, "
                             "datasets")
        return cls(**{k: v for k, v in options.items() if k in names})


# -- data ------------------------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """Write to a temp name in the same folder, then rename (no half-written file under the final name)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def prepare_splits(source: str, sizes: Sizes, root: Path | None = None) -> dict[str, Any]:
    """Disjoint test / val / train JSONL files of ``source`` (fields text, label), the label words and chance."""
    records = _userdata.read(source, ["text", "label"])
    rows = [{"text": str(r["text"]), "label": str(r["label"]).strip()} for r in records]
    random.Random(_SPLIT_SEED).shuffle(rows)
    need = sizes.n_test + sizes.n_val + sizes.shots + 1
    if len(rows) < need:
        raise ParamError(f"{source!r} has {len(rows)} usable rows; n_test={sizes.n_test} + n_val={sizes.n_val} + "
                         f"shots + 1 = {need} are needed")
    test, val = rows[: sizes.n_test], rows[sizes.n_test: sizes.n_test + sizes.n_val]
    train = rows[sizes.n_test + sizes.n_val:][: sizes.n_train]
    words = sorted({r["label"] for r in rows})
    if len(words) < 2:
        raise ParamError(f"{source!r} has a single label {words}: nothing to classify")
    digest = hashlib.sha256(json.dumps([test, val, train]).encode()).hexdigest()[:16]
    folder = (root or settings().cache_dir / "claims") / digest
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("test", test), ("val", val), ("train", train)):
        paths[name] = folder / f"{name}.jsonl"
        if not paths[name].exists():
            _write_jsonl(paths[name], part)
    return {**{k: str(v) for k, v in paths.items()}, "labels": words,
            "chance": stats.chance_rate([r["label"] for r in test]), "n": {"test": len(test), "val": len(val),
                                                                           "train": len(train)}}


def bench_spec(splits: dict[str, Any], key: str, *, part: str, shots: int, seed: int, n_examples: int) -> str:
    """Pinned ``classification`` spec: ``part`` (test or val) queried, demonstrations from train (test) or from
    the validation rows themselves (val: its train split is the validation part)."""
    demos = splits["train"] if part == "test" else splits["val"]
    bench = registry.get("classification", family="benchmark").create({
        "source": splits[part], "train_source": demos, "labels": ",".join(splits["labels"]),
        "template": TEMPLATES.get(key, DEFAULT_TEMPLATE), "shots": str(shots), "seed": str(seed),
        "n_examples": str(n_examples)})
    return spec_text(bench)


def _patch_spec(name: str, params: dict[str, str]) -> str:
    return spec_text(registry.get(name, family="patch").create(params))


def _middle(model: str, search_layers: str) -> str:
    if search_layers != "middle":
        return search_layers
    from components import modeling
    from components.patches.base import model_shape

    n_layers, _ = model_shape(modeling.load_config(model))
    return f"{n_layers // 2}:*"


# -- one dataset ------------------------------------------------------------------------------------------------------
def _searched(method: str, model: str, val_spec: str, sizes: Sizes, dtype: str) -> tuple[str | None, dict]:
    """The method's component spec chosen by head-search on the validation part (None: the search found nothing)."""
    from flows.head_search import head_search

    patch, objective = {"act": ("act", "accuracy"), "zerotuning_supervised": ("zerotuning", "accuracy"),
                        "zerotuning_unsupervised": ("zerotuning", "entropy")}[method]
    found = head_search(model=model, method=patch, task=val_spec, layers=_middle(model, sizes.search_layers),
                        objective=objective, grid={"gamma": [1.5, 2.0, 4.0]} if patch == "zerotuning" else {},
                        batch_size=sizes.batch_size, experiment="reproduce-head-search", dtype=dtype)
    heads = ",".join(f"{lay}:{h}" for lay, h in found["heads"])
    gamma = (found.get("refined") or {}).get("gamma")
    info = {"heads": heads or "none", "gamma": gamma, "search_run": found["run_id"],
            "search_baseline": found["selection"]["baseline"]}
    if not heads or (patch == "zerotuning" and not gamma):
        return None, info
    params = {"heads": heads, **({"gamma": str(gamma)} if patch == "zerotuning" else {})}
    return _patch_spec(patch, params), info


def _accuracy(loaded: Any, component: str, bench: str, batch_size: int, progress: bool,
              train_bench: str | None = None) -> float:
    from registry.specs import resolved

    spec = resolved(bench, "benchmark")  # parsed and built once, for the data and the evaluation
    data = benchmark_data(spec.component)
    train = benchmark_data(resolved(train_bench, "benchmark").component, split="train") if train_bench else None
    out = evaluate(loaded, resolved(component, "patch"), spec, data, batch_size=batch_size, progress=progress,
                   **({"train_path": train} if train else {}))
    return float(out["metrics"]["accuracy"])


def _dataset(method: str, model: str, loaded: Any, key: str, source: str, seeds: list[int], sizes: Sizes,
             dtype: str, progress: bool) -> dict[str, Any]:
    """Baseline and method accuracy per seed on one dataset."""
    splits = prepare_splits(source, sizes)
    out: dict[str, Any] = {"chance": splits["chance"], "n": splits["n"], "baseline": [], "method": []}
    spec = None
    if method != "soft_injection":
        val = bench_spec(splits, key, part="val", shots=sizes.shots, seed=0, n_examples=sizes.n_val)
        spec, out["search"] = _searched(method, model, val, sizes, dtype)
    else:
        out["zero_shot"] = []
    for seed in seeds:
        test = bench_spec(splits, key, part="test", shots=sizes.shots, seed=seed, n_examples=sizes.n_test)
        base = _accuracy(loaded, "baseline", test, sizes.batch_size, progress)
        if method == "soft_injection":
            zero = bench_spec(splits, key, part="test", shots=0, seed=seed, n_examples=sizes.n_fit)
            site = _patch_spec("soft_injection", {
                "n_shots": str(sizes.site_shots), "n_prompts": str(sizes.site_prompts), "steps": str(sizes.site_steps),
                "valid_every": str(sizes.site_valid_every), "separator": "\\n\\n", "seed": str(seed)})
            out["zero_shot"].append(_accuracy(loaded, "baseline", zero, sizes.batch_size, progress))
            acc = _accuracy(loaded, site, zero, sizes.batch_size, progress, train_bench=zero)
        else:
            acc = _accuracy(loaded, spec, test, sizes.batch_size, progress) if spec else base
        out["baseline"].append(base)
        out["method"].append(acc)
    out["component"] = spec or ("soft_injection" if method == "soft_injection" else "none (search found nothing)")
    return out


# -- the claim --------------------------------------------------------------------------------------------------------
def summarize(name: str, per_dataset: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Verdict, figures, CI and per-seed rows from per-dataset accuracies (criterion: docs/reproduce-fewshot.md)."""
    use = [k for k, d in per_dataset.items() if stats.usable(d["baseline"], d["chance"])]
    per_seed = []
    for i, seed in enumerate(seeds):
        row: dict[str, Any] = {"seed": seed}
        for k, d in per_dataset.items():
            row[f"{k}/baseline_acc"], row[f"{k}/method_acc"] = d["baseline"][i], d["method"][i]
        if use:
            row["gain"] = stats.mean([per_dataset[k]["method"][i] - per_dataset[k]["baseline"][i] for k in use])
        per_seed.append(row)
    figures: dict[str, Any] = {"usable_datasets": use}
    for k, d in per_dataset.items():
        figures[f"{k}/chance"] = d["chance"]
        figures[f"{k}/baseline_acc"], figures[f"{k}/method_acc"] = stats.mean(d["baseline"]), stats.mean(d["method"])
        if "zero_shot" in d:
            figures[f"{k}/zero_shot_acc"] = stats.mean(d["zero_shot"])
    at_chance = sorted(set(per_dataset) - set(use))
    if not use:
        return {"verdict": "inconclusive", "figures": figures, "ci": {}, "per_seed": per_seed,
                "reason": "the baseline is within 5 points of chance on every dataset ("
                          + ", ".join(f"{k} {figures[f'{k}/baseline_acc']:.2f} vs {figures[f'{k}/chance']:.2f}"
                                      for k in at_chance) + "): the model cannot do the tasks"}
    figures["baseline_acc"] = stats.mean([figures[f"{k}/baseline_acc"] for k in use])
    figures["method_acc"] = stats.mean([figures[f"{k}/method_acc"] for k in use])
    gains = [r["gain"] for r in per_seed]
    figures["gain"] = stats.mean(gains)
    ci = stats.t_interval(gains)
    verdict = stats.verdict_from_ci(ci)
    reason = (f"gain {figures['gain']:+.3f} over {', '.join(use)}, 95% t-CI over {len(seeds)} seeds "
              f"[{ci[0]:+.3f}, {ci[1]:+.3f}] " + {"held": "is above 0", "not held": "is at or below 0",
                                                   "inconclusive": "straddles 0"}[verdict]
              + (f"; at chance and left out: {', '.join(at_chance)}" if at_chance else ""))
    return {"verdict": verdict, "figures": figures, "ci": {"gain": list(ci)}, "per_seed": per_seed, "reason": reason}


def result(claim: Claim, model: str, seeds: list[int], start: float, **parts: Any) -> dict[str, Any]:
    """A ClaimResult dict (tasks/claims_base.py)."""
    return {"claim": claim.name, "paper": claim.paper, "statement": claim.statement, "criterion": claim.criterion,
            "verdict": parts.get("verdict", "inconclusive"), "reason": parts.get("reason", ""),
            "figures": parts.get("figures", {}), "ci": parts.get("ci", {}), "per_seed": parts.get("per_seed", []),
            "n_seeds": len(seeds), "model": model, "wall_s": round(time.perf_counter() - start, 1),
            **({"details": parts["details"]} if "details" in parts else {})}


def _runner(name: str):
    def run(model: str, *, seeds: list[int], data: dict[str, str], dtype: str = "float32", progress: bool = False,
            **options: Any) -> dict[str, Any]:
        start, claim = time.perf_counter(), CLAIMS[name]
        keys = list(options.get("datasets") or claim.needs_data)
        sizes = Sizes.from_options(options)
        if len(seeds) < 2:
            raise ParamError(f"claim {name}: at least 2 seeds are needed for a confidence interval, got {seeds}")
        missing = [k for k in keys if not data.get(k)]
        if missing:
            return result(claim, model, seeds, start, reason=f"no {missing[0]} dataset given")
        loaded = load_model(model, dtype=dtype)
        per = {k: _dataset(name, model, loaded, k, data[k], list(seeds), sizes, dtype, progress) for k in keys}
        details = {k: {x: d[x] for x in ("component", "search", "n", "chance") if x in d} for k, d in per.items()}
        return result(claim, model, seeds, start, **summarize(name, per, list(seeds)), details=details)

    return run


_CRIT = ("mean over the usable datasets (k-shot baseline >= chance + 5 points) of method - baseline accuracy; "
         "held when the lower bound of its 95% t-interval over seeds is > 0, not held when the upper bound is "
         "<= 0, inconclusive otherwise or when no dataset is usable")
CLAIMS: dict[str, Claim] = {
    "act": Claim("act", "arXiv:2406.15765", "Attention calibration (ACT) on heads chosen on held-out rows raises "
                 "in-context classification accuracy over the unpatched model.", _CRIT, _runner("act"), DATASETS),
    "zerotuning_supervised": Claim(
        "zerotuning_supervised", "arXiv:2505.11739", "Scaling the attention to the initial token on heads and a "
        "gamma chosen with labelled held-out rows raises in-context classification accuracy.", _CRIT,
        _runner("zerotuning_supervised"), DATASETS),
    "zerotuning_unsupervised": Claim(
        "zerotuning_unsupervised", "arXiv:2505.11739", "The same with heads and gamma chosen without labels "
        "(lower prediction entropy on held-out rows) raises in-context classification accuracy.", _CRIT,
        _runner("zerotuning_unsupervised"), DATASETS),
    "soft_injection": Claim(
        "soft_injection", "arXiv:2507.20906", "Soft injection of task embeddings (SITE) into head outputs on "
        "zero-shot prompts outperforms k-shot in-context learning.", _CRIT.replace("method", "SITE (zero-shot)")
        .replace("k-shot baseline >=", "k-shot baseline, the method's comparison, >="), _runner("soft_injection"),
        DATASETS),
    "pasta": PASTA_CLAIM,
}
