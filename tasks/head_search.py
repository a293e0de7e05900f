"""Head search: one short, cached evaluation per candidate (layer, head) on a calibration split, then the selection.

Method-agnostic: the method is any registered patch whose class declares a ``head_search``
(:class:`components.search.HeadSearch`): the parameters of the single-head trials, how a trial is scored, how heads
are selected from the gains over the unpatched model, and which parameters are searched afterwards on the chosen
heads (a grid). This module only plans, schedules, caches and logs. Objectives: ``accuracy`` (supervised, the
benchmark's primary metric on labelled rows) or ``entropy`` (unsupervised: lower mean prediction entropy is better).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

import registry
from components import search as head_search
from components.heads import HeadSet
from components.patches.base import model_shape
from registry import specs
from registry.specs import ResolvedSpec, resolved
from tasks import integrity, plots
from tasks.data import load_data
from tasks.models import LoadedModel, checked_config
from tasks.retry import transient
from tasks.tracking import RETRY, client


def searchable() -> list[str]:
    """The names of the patches that declare a head search."""
    return [i.name for i in registry.latest("patch") if i.cls.head_search is not None]


@dataclass
class SearchPlan:
    """A validated request: pinned specs for the baseline, the benchmark and every candidate head."""

    model: str
    method: str  # the patch's pinned reference, name@x.y.z
    objective: str
    benchmark: str
    baseline: str
    candidates: dict[str, list[int]]  # pinned component spec -> [layer, head]
    params: dict[str, Any]  # parameters of the trials (the search's trial parameters + the user's)
    n_layers: int
    n_heads: int
    grid: dict[str, list[Any]] | None = None  # parameters searched on the chosen heads -> values
    resolved: dict[str, ResolvedSpec] = field(default_factory=dict)  # pinned spec -> resolved once (plan_search)

    def spec(self, text: str) -> ResolvedSpec | str:
        """The resolved spec of ``text`` when the plan resolved it (baseline, benchmark, candidates), else ``text``."""
        return self.resolved.get(text, text)

    @property
    def search(self) -> head_search.HeadSearch:
        return registry.get(self.method, family="patch").cls.head_search


@task(cache_policy=NO_CACHE, task_run_name="validate head search")
def plan_search(model: str, method: str, task_spec: str, params: dict[str, str], layers: str, objective: str,
                grid: dict[str, list[Any]] | None = None, trust_remote_code: bool = False) -> SearchPlan:
    """Check the method (a patch with a head search), its parameters, the grid, the task (it needs a train split) and
    the candidate heads; no weights."""
    try:
        info = registry.get(method, family="patch")
    except registry.UnknownComponentError:
        info = None
    search = info.cls.head_search if info else None
    if search is None:
        raise ValueError(f"head search method {method!r} is not a patch that declares a head search; searchable "
                         f"patches: {', '.join(searchable())}")
    if objective not in head_search.OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(map(repr, head_search.OBJECTIVES))}")
    for what, given in (("params", params), ("grid", grid or {})):
        if "heads" in given:
            raise ValueError(f"{what} must not set heads: the search sets one head per candidate")
    bench = specs.parse(task_spec).create("benchmark")
    if "train" not in bench.splits:
        raise ValueError(f"{bench.component_name} has no train split to calibrate on")
    n_layers, n_heads = model_shape(checked_config(model, trust_remote_code=trust_remote_code))
    pool = HeadSet.parse(layers)
    pool.validate(n_layers, n_heads, what="layers")
    trial = {**search.trial, **params}
    info.create({**trial, "heads": "0:0"})  # the trial parameters are valid before any candidate is listed
    values = {**{k: list(v) for k, v in search.grid.items()}, **{k: list(v) for k, v in (grid or {}).items()}}
    for name, vals in values.items():  # every grid value is a valid parameter value, read as its declared type
        values[name] = [info.create({**trial, name: v, "heads": "0:0"}).params()[name] for v in vals]
    cands = {(lay, h): ResolvedSpec.of(info.create({**trial, "heads": f"{lay}:{h}"}))
             for lay, h in pool.expand(n_layers, n_heads)}
    if not cands:
        raise ValueError(f"layers={layers!r} selects no head")
    fixed = [ResolvedSpec.of(bench), ResolvedSpec.of(registry.get("baseline").create())]
    return SearchPlan(model, info.ref, objective, fixed[0].text, fixed[1].text,
                      {r.text: [lay, h] for (lay, h), r in cands.items()}, trial, n_layers, n_heads, values,
                      {r.text: r for r in [*fixed, *cands.values()]})


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


def _scorer(search: str | None) -> tuple[head_search.HeadSearch, str]:
    """The searched patch's head search (the default one for None) and an identity of how it scores a trial: the
    class that defines ``score`` and the fingerprint of its code (plus the declaration when ``score`` is the patch's
    own), so that patches scoring alike share cached trials (the unpatched baseline) and others never do."""
    how = registry.get(search, family="patch").cls.head_search if search else head_search.HeadSearch()
    owner = next(k for k in type(how).__mro__ if "score" in vars(k))
    ident = f"{owner.__module__}.{owner.__qualname__}:{registry.code_fingerprint(owner)}"
    return how, ident + ("" if owner is head_search.HeadSearch else f":{how!r}")


def _score_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    comp = resolved(parameters["component"], "patch")
    bench = resolved(parameters["benchmark"], "benchmark")
    key = [parameters["pool"].fingerprint, comp.text, comp.fingerprint, bench.fingerprint,
           integrity.content_key(parameters["data_path"]), parameters["objective"], parameters.get("batch_size"),
           _scorer(parameters.get("search"))[1]]
    return "head3-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]


@task(cache_key_fn=_score_key, result_serializer=integrity.CHECKED, retries=1, retry_condition_fn=transient,
      task_run_name="score {component}")
def score_candidate(pool: ModelPool, component: ResolvedSpec | str, benchmark: ResolvedSpec | str, data_path: str,
                    objective: str, batch_size: int = 16, search: str | None = None) -> dict[str, Any]:
    """The objective on the calibration rows with one patch applied, scored as the searched patch's
    ``head_search.score`` says (``search``: that patch's reference; the unpatched baseline is scored the same way)."""
    spec = resolved(component, "patch")
    comp, bench = spec.component, resolved(benchmark, "benchmark").component
    how = _scorer(search)[0]
    rows = load_data(data_path)
    with pool.borrow() as loaded, comp.applied(loaded.model) as session:
        value = how.score(bench, loaded.model, loaded.tokenizer, rows, objective=objective, session=session,
                          batch_size=batch_size)
    return {"component": spec.text, "objective": objective, "value": value}


@task(cache_policy=NO_CACHE, task_run_name="select heads")
def select_heads(plan: SearchPlan, base: dict[str, Any], scores: list[dict[str, Any]], min_gain: float = 0.0,
                 top_k: int = 0) -> dict[str, Any]:
    """The head set, chosen by the patch's ``head_search.select`` from each head's gain over the unpatched model."""
    table = [{"layer": plan.candidates[s["component"]][0], "head": plan.candidates[s["component"]][1],
              "score": s["value"], "gain": head_search.gain(plan.objective, base["value"], s["value"])}
             for s in scores]
    chosen, extra = plan.search.select(table, min_gain)
    if top_k:
        chosen = chosen[:top_k]
    return {"method": plan.method.split("@")[0], "objective": plan.objective, "model": plan.model,
            "task": plan.benchmark, "params": plan.params, "baseline": base["value"],
            "heads": sorted([r["layer"], r["head"]] for r in chosen), "gains": table, "n_layers": plan.n_layers,
            "n_heads": plan.n_heads, "refined": None, **extra}


@task(cache_policy=NO_CACHE, task_run_name="refine grid")
def refine_grid(plan: SearchPlan, selection: dict[str, Any]) -> dict[ResolvedSpec, dict[str, Any]]:
    """The patch on the chosen heads at every point of its ``head_search.grid_points``: resolved spec -> point."""
    if not selection["heads"] or not plan.grid:
        return {}
    heads = ",".join(f"{lay}:{h}" for lay, h in selection["heads"])
    info = registry.get(plan.method, family="patch")
    return {ResolvedSpec.of(info.create({**plan.params, **point, "heads": heads})): point
            for point in plan.search.grid_points(selection, plan.grid)}


@task(cache_policy=NO_CACHE, task_run_name="pick refinement")
def pick_refined(plan: SearchPlan, selection: dict[str, Any], grid: dict[ResolvedSpec, dict[str, Any]],
                 results: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid point chosen by the patch's ``head_search.pick`` (``refined``; None when none beats the unpatched
    model), with every point's score (``refine_grid``)."""
    point = {str(spec): p for spec, p in grid.items()}
    rows = [{"params": point[r["component"]], "score": r["value"],
             "gain": head_search.gain(plan.objective, selection["baseline"], r["value"])} for r in results]
    return {**selection, "refine_grid": rows, "refined": plan.search.pick(rows)}


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
    for k, v in (selection.get("refined") or {}).items():  # the refined parameters, when numbers
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[k] = float(v)
    for k, v in metrics.items():
        c.log_metric(run_id, k, v)
    return f"mlflow:{run_id}/heads.json"
