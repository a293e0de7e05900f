"""Validate a whole request before any compute: component and benchmark specs, parameters, model reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.settings import settings
from registry import specs
from registry.specs import ResolvedSpec
from tasks.models import checked_config


@dataclass
class Plan:
    """A validated request, every spec resolved once: the components and one benchmark per (benchmark, seed), as
    :class:`~registry.specs.ResolvedSpec` (pinned ``name@x.y.z(params)``, fingerprints and labels computed once)."""

    model: str
    components: list[ResolvedSpec]
    benchmarks: list[ResolvedSpec]
    seeds: dict[ResolvedSpec, int | None]  # benchmark -> seed it was built with
    #: the prompt component of each cell (parallel to ``components``; None: the benchmark's own prompt)
    prompts: list[ResolvedSpec | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prompts:
            self.prompts = [None] * len(self.components)

    @property
    def cells(self) -> list[tuple[ResolvedSpec | None, ResolvedSpec]]:
        """(prompt component or None, patch) per compare row."""
        return list(zip(self.prompts, self.components))

    @property
    def refs(self) -> list[str]:
        prompts = list(dict.fromkeys(p.ref for p in self.prompts if p is not None))
        return [s.ref for s in self.components + self.benchmarks] + prompts

    def texts(self, which: str) -> list[str]:
        """The pinned spec strings of ``components`` or ``benchmarks`` (for run parameters)."""
        return [s.text for s in getattr(self, which)]


def resolve_refs(spec: specs.Spec) -> specs.Spec:
    """Replace ``mlflow:<run_id>/<artifact>`` parameter values by a downloaded ``file:`` path."""
    params = dict(spec.params)
    for k, v in params.items():
        if isinstance(v, str) and v.startswith("mlflow:"):
            import mlflow

            from tasks.tracking import client

            client()  # sets the tracking URI
            run_id, _, artifact = v[len("mlflow:"):].partition("/")
            if not run_id or not artifact:
                raise specs.SpecError(f"{spec.name}.{k}: {v!r} must look like mlflow:<run_id>/<artifact path>")
            dst = settings().cache_dir / "mlflow-refs" / run_id
            dst.mkdir(parents=True, exist_ok=True)
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst))
            except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing run/artifact
                raise specs.SpecError(f"{spec.name}.{k}: cannot fetch {v!r} from MLflow ({e})") from None
            params[k] = f"file:{Path(local)}"
    return specs.Spec(spec.name, spec.version, params)


@task(cache_policy=NO_CACHE, task_run_name="validate request")
def plan_request(model: str, components: list[str | specs.Spec], benchmarks: list[str | specs.Spec],
                 seeds: list[int] | None = None, benchmark_overrides: dict[str, Any] | None = None,
                 trust_remote_code: bool = False) -> Plan:
    """Parse, build and validate every spec once; raises with a message naming the problem, before any model is
    loaded. Specs are strings (comma-separated lists allowed) or parsed :class:`~registry.specs.Spec` objects."""
    cells = [(p and resolve_refs(p).create("prompt"), resolve_refs(c).create("patch")) for p, c in _cells(components)]
    comps = [c for _, c in cells]
    if not comps:
        raise specs.SpecError("no components given")
    bench_objs = [s.create("benchmark", extra=benchmark_overrides) for s in _parsed(benchmarks)]
    if not bench_objs:
        raise specs.SpecError("no tasks (benchmarks) given")
    for comp in (c for c in [*comps, *bench_objs] if c.needs_images):
        raise specs.SpecError(f"{comp.component_name} acts on images and needs a vision-language model: run it with "
                              "`attnflow vlm-eval` (docs/vlm.md)")
    for comp in (c for c in comps if c.needs_fit):
        for bench in (b for b in bench_objs if "train" not in b.splits):
            raise specs.SpecError(f"{comp.component_name} is fitted on a benchmark's train split, and "
                                  f"{bench.component_name} has none (splits: {', '.join(bench.splits)})")
    for comp in (c for c in comps if c.needs_inputs):
        for bench in (b for b in bench_objs if not b.prompt_texts):
            raise specs.SpecError(f"{comp.component_name} reads the prompt texts, and {bench.component_name} scores "
                                  "token windows without prompts: leave one of them out of this request")
    for prompt in {p.component_name: p for p, _ in cells if p is not None}.values():
        for bench in (b for b in bench_objs if not b.accepts_prompts):
            raise specs.SpecError(f"{prompt.component_name} rewrites prompts, and {bench.component_name} builds no "
                                  "query/content rows (prompt components work with classification and "
                                  "multiple_choice): leave one of them out of this request")
    config = checked_config(model, trust_remote_code=trust_remote_code)  # read once, for every component
    for comp in comps + [p for p, _ in cells if p is not None]:
        comp.check_model(config)
    # benchmarks that count lengths in model tokens (RULER tasks) get the evaluated model's tokenizer when left empty
    bench_objs = [b.replace(tokenizer=model) if getattr(b, "needs_tokenizer", False) and not b.tokenizer else b
                  for b in bench_objs]
    for bench in bench_objs:
        if hasattr(bench, "check_model"):
            bench.check_model(config)
    pinned, seed_of = pin_benchmarks(bench_objs, seeds)
    return Plan(model=model, components=[ResolvedSpec.of(c) for c in comps], benchmarks=pinned,
                seeds=seed_of, prompts=[ResolvedSpec.of(p) if p is not None else None for p, _ in cells])


def _cells(items: list[str | specs.Spec]) -> list[tuple[specs.Spec | None, specs.Spec]]:
    """(prompt spec or None, patch spec) per cell. A cell is ``patch``, ``prompt`` (on the baseline patch) or
    ``prompt+patch``; a parsed Spec object is one patch or one prompt component."""
    import registry

    out: list[tuple[specs.Spec | None, specs.Spec]] = []
    for item in items:
        if isinstance(item, specs.Spec):
            out.append((item, specs.Spec("baseline")) if _family(item) == "prompt" else (None, item))
            continue
        for cell in specs.split_top_level(item):
            parts = [specs.parse(p) for p in specs.split_top_level(cell, "+")]
            if not parts:
                raise specs.SpecError(f"empty component cell in {item!r}")
            prompts = [p for p in parts if _family(p) == "prompt"]
            patches = [p for p in parts if p not in prompts]
            if len(prompts) > 1 or len(patches) > 1:
                raise specs.SpecError(f"cell {cell!r}: a cell holds at most one prompt component and one patch "
                                      f"(prompt components: {', '.join(i.name for i in registry.latest('prompt'))})")
            out.append((prompts[0] if prompts else None, patches[0] if patches else specs.Spec("baseline")))
    return out


def _family(spec: specs.Spec) -> str | None:
    """The registered family of a spec's name (None for an unknown name: the patch lookup then names it)."""
    import registry

    try:
        return registry.get(spec.ref).family
    except registry.UnknownComponentError:
        return None


def _parsed(items: list[str | specs.Spec]) -> list[specs.Spec]:
    out: list[specs.Spec] = []
    for item in items:
        out += [item] if isinstance(item, specs.Spec) else specs.parse_list(item)
    return out


def pin_benchmarks(benches: list[Any],
                   seeds: list[int] | None) -> tuple[list[ResolvedSpec], dict[ResolvedSpec, int | None]]:
    """One pinned spec per (benchmark, seed) (a benchmark without a seed once), duplicates dropped, in order; and
    the seed each pinned spec carries."""
    pinned: dict[str, ResolvedSpec] = {}
    seed_of: dict[ResolvedSpec, int | None] = {}
    for bench in benches:
        for seed in (seeds or [None]) if bench.uses_seed() else [None]:
            b = bench.replace(seed=seed) if seed is not None else bench
            text = specs.spec_text(b)
            if text not in pinned:
                pinned[text] = ResolvedSpec.of(b)
                seed_of[pinned[text]] = getattr(b, "seed", None)
    return list(pinned.values()), seed_of
