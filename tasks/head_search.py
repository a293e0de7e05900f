"""Head search: one short, cached evaluation per candidate (layer, head) on a calibration split, then the selection.

Methods (``METHODS``): ``act`` (ACT's head filtering: calibrate one head at a time, keep the heads that beat the
unpatched model), ``zerotuning`` (ZeroTuning's head profiling with a trial gamma: heads are up- or down-effective;
the dominant group is kept and one gamma is searched for it) and ``head_mask`` (mask one head at a time; the heads
whose masking hurts most are selected, as retrieval-head studies do). Objectives: ``accuracy`` (supervised, the
benchmark's primary metric on labelled rows) or ``entropy`` (unsupervised: lower mean prediction entropy is
better, ZeroTuning's label-free criterion).

Every candidate evaluation is a Prefect task cached by (model weights, pinned component spec = name@version +
parameters incl. its head, benchmark fingerprint, calibration data, objective): an interrupted or extended search
recomputes nothing it already did.
"""

from __future__ import annotations

import copy
import hashlib
import json
import queue
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

import registry
from components import modeling
from components.benchmarks import _scoring
from components.heads import HeadSet
from components.patches.base import model_shape
from registry import specs
from registry.specs import spec_text
from tasks import integrity, plots
from tasks.data import load_data
from tasks.models import LoadedModel, check_model
from tasks.retry import transient
from tasks.tracking import RETRY, client

#: method -> (component, parameters of the single-head trial, what a good head does to the objective)
METHODS: dict[str, tuple[str, dict[str, str], str]] = {
    "act": ("act", {}, "improves"),
    "zerotuning": ("zerotuning", {}, "improves"),
    "head_mask": ("head_mask", {}, "hurts"),
}


@dataclass
class SearchPlan:
    """A validated request: pinned specs for the baseline, the benchmark and every candidate head."""

    model: str
    method: str
    objective: str
    benchmark: str
    baseline: str
    candidates: dict[str, list[int]]  # pinned component spec -> [layer, head]
    params: dict[str, str]
    n_layers: int
    n_heads: int


@task(cache_policy=NO_CACHE, task_run_name="validate head search")
def plan_search(model: str, method: str, task_spec: str, params: dict[str, str], layers: str, objective: str,
                trial_gamma: float, trust_remote_code: bool = False) -> SearchPlan:
    """Check the method, its parameters, the task (it needs a train split) and the candidate heads; no weights."""
    if method not in METHODS:
        raise ValueError(f"head search method {method!r} is not one of {', '.join(METHODS)}")
    if objective not in ("accuracy", "entropy"):
        raise ValueError(f"objective {objective!r} is not 'accuracy' or 'entropy'")
    if "heads" in params:
        raise ValueError("params must not set heads: the search sets one head per candidate")
    bench = specs.parse(task_spec).create("benchmark")
    if "train" not in bench.splits:
        raise ValueError(f"{bench.component_name} has no train split to calibrate on")
    check_model(model, trust_remote_code=trust_remote_code)
    n_layers, n_heads = model_shape(modeling.load_config(model, trust_remote_code=trust_remote_code))
    pool = HeadSet.parse(layers)
    pool.validate(n_layers, n_heads, what="layers")
    name, trial, _ = METHODS[method]
    trial = {**trial, **({"gamma": str(trial_gamma)} if method == "zerotuning" else {}), **params}
    info = registry.get(name, family="patch")
    candidates = {spec_text(info.create({**trial, "heads": f"{lay}:{h}"})): [lay, h]
                  for lay, h in pool.expand(n_layers, n_heads)}
    if not candidates:
        raise ValueError(f"layers={layers!r} selects no head")
    baseline = spec_text(registry.get("baseline").create())
    return SearchPlan(model, method, objective, spec_text(bench), baseline, candidates, trial, n_layers, n_heads)


class ModelPool:
    """The loaded model plus ``workers - 1`` copies; a task borrows one at a time (patch scopes live on a model
    object, so concurrent tasks must not share one)."""

    def __init__(self, loaded: LoadedModel, workers: int) -> None:
        self.loaded = loaded
        self.fingerprint = loaded.fingerprint
        self._free: queue.Queue = queue.Queue()
        self._free.put(loaded)
        for _ in range(max(workers, 1) - 1):  # tokenizers too: scoring sets their padding side
            self._free.put(LoadedModel(loaded.ref, copy.deepcopy(loaded.model), copy.deepcopy(loaded.tokenizer),
                                       loaded.fingerprint, loaded.info))

    @contextmanager
    def borrow(self) -> Iterator[LoadedModel]:
        item = self._free.get()
        try:
            yield item
        finally:
            self._free.put(item)


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="model pool x{workers}")
def model_pool(loaded: LoadedModel, workers: int = 1) -> ModelPool:
    """The model and its copies for ``workers`` concurrent candidate evaluations."""
    return ModelPool(loaded, workers)


def _score_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    bench = specs.parse(parameters["benchmark"]).create("benchmark")
    key = [parameters["pool"].fingerprint, parameters["component"], bench.fingerprint(),
           integrity.content_key(parameters["data_path"]), parameters["objective"], parameters.get("batch_size")]
    return "head2-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]


@task(cache_key_fn=_score_key, result_serializer=integrity.CHECKED, retries=1, retry_condition_fn=transient,
      task_run_name="score {component}")
def score_candidate(pool: ModelPool, component: str, benchmark: str, data_path: str, objective: str,
                    batch_size: int = 16) -> dict[str, Any]:
    """The objective on the calibration rows with one patch applied."""
    comp, bench = specs.parse(component).create("patch"), specs.parse(benchmark).create("benchmark")
    rows = load_data(data_path)
    with pool.borrow() as loaded, comp.applied(loaded.model) as session:
        if objective == "accuracy":
            result = bench.evaluate(loaded.model, loaded.tokenizer, rows, session=session, batch_size=batch_size)
            value = float(result.metrics[bench.primary_metric])
        else:
            value = _scoring.prediction_entropy(loaded.model, loaded.tokenizer, rows, session=session,
                                                batch_size=batch_size)
    return {"component": component, "objective": objective, "value": value}


def gain(plan: SearchPlan, base: dict[str, Any], score: dict[str, Any]) -> float:
    """How much a patch improves the objective over the unpatched model (entropy: lower is better)."""
    delta = score["value"] - base["value"]
    return -delta if plan.objective == "entropy" else delta


@task(cache_policy=NO_CACHE, task_run_name="select heads")
def select_heads(plan: SearchPlan, base: dict[str, Any], scores: list[dict[str, Any]], min_gain: float = 0.0,
                 top_k: int = 0) -> dict[str, Any]:
    """The head set: ACT keeps heads that beat the baseline; ZeroTuning keeps the dominant group of up- or
    down-effective heads; head masking keeps the heads whose masking hurts most."""
    table = [{"layer": plan.candidates[s["component"]][0], "head": plan.candidates[s["component"]][1],
              "score": s["value"], "gain": gain(plan, base, s)} for s in scores]
    want = METHODS[plan.method][2]
    group = None
    if plan.method == "zerotuning":
        up = [r for r in table if r["gain"] > min_gain]
        down = [r for r in table if r["gain"] < -min_gain]
        weight = (len(up), sum(r["gain"] for r in up)), (len(down), -sum(r["gain"] for r in down))
        group = "up" if weight[0] >= weight[1] else "down"
        chosen = sorted(up if group == "up" else down, key=lambda r: -abs(r["gain"]))
    elif want == "improves":
        chosen = sorted((r for r in table if r["gain"] > min_gain), key=lambda r: -r["gain"])
    else:
        chosen = sorted((r for r in table if -r["gain"] > min_gain), key=lambda r: r["gain"])
    if top_k:
        chosen = chosen[:top_k]
    return {"method": plan.method, "objective": plan.objective, "model": plan.model, "task": plan.benchmark,
            "params": plan.params, "baseline": base["value"], "group": group,
            "heads": sorted([r["layer"], r["head"]] for r in chosen), "gains": table,
            "n_layers": plan.n_layers, "n_heads": plan.n_heads}


@task(cache_policy=NO_CACHE, task_run_name="gamma grid")
def gamma_grid(plan: SearchPlan, selection: dict[str, Any], gammas: list[float]) -> dict[str, float]:
    """ZeroTuning's gamma search on the selected group: spec -> gamma (reciprocals for down-effective heads)."""
    if not selection["heads"]:
        return {}
    values = [g if selection["group"] == "up" else 1.0 / g for g in gammas]
    heads = ",".join(f"{lay}:{h}" for lay, h in selection["heads"])
    info = registry.get("zerotuning", family="patch")
    params = {k: v for k, v in plan.params.items() if k != "gamma"}
    return {spec_text(info.create({**params, "gamma": str(g), "heads": heads})): g for g in values}


@task(cache_policy=NO_CACHE, task_run_name="pick gamma")
def pick_gamma(plan: SearchPlan, selection: dict[str, Any], grid: dict[str, float],
               results: list[dict[str, Any]]) -> dict[str, Any]:
    """The gamma with the best objective on the group (kept only if it beats the baseline)."""
    base = {"value": selection["baseline"]}
    rows = [{"gamma": grid[r["component"]], "score": r["value"], "gain": gain(plan, base, r)} for r in results]
    best = max(rows, key=lambda r: r["gain"], default=None)
    return {**selection, "gamma_grid": rows,
            "gamma": best["gamma"] if best and best["gain"] > 0 else None}


@task(**RETRY, task_run_name="log head search")
def log_head_search(run_id: str, selection: dict[str, Any]) -> str:
    """heads.json, the gains table and the layer x head heatmap on the run; returns the heads.json reference."""
    c = client()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heads.json"
        path.write_text(json.dumps(selection, indent=2))
        c.log_artifact(run_id, str(path))
    fig = plots.head_heatmap(selection)
    c.log_figure(run_id, fig, "gains_heatmap.png")
    plots.close(fig)
    metrics = {"baseline": selection["baseline"], "n_selected": float(len(selection["heads"]))}
    if selection.get("gamma"):
        metrics["gamma"] = float(selection["gamma"])
    for k, v in metrics.items():
        c.log_metric(run_id, k, v)
    return f"mlflow:{run_id}/heads.json"
