"""PAWN: AI-text detection on a frozen LM's per-token features, against zero-shot and feature baselines.

prep (Parquet) -> feature cache (the backbone runs once) -> fit detectors from the cache -> evaluate (macro-F1
threshold and a target-FPR threshold calibrated on human validation texts; AUROC, macro-F1/recall, recall at 1%/5%
FPR, test FPR with a 95% interval; per domain, generator, human source and group) -> MLflow -> export the best
PAWN head + backbone metric graph to ONNX (parity-checked) -> register ``attnflow.pawn.<backbone>@champion``.
"""

from __future__ import annotations

from typing import Any, Optional

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Dtype, Fpr
from tasks import runs
from tasks.models import load_model
from tasks.pawn_cache import build_feature_cache, check_compatible
from tasks.pawn_data import PrepOptions, prepare
from tasks.pawn_export import export_detector, read_meta, register_detector, registered_name, resolve_model
from tasks.pawn_plan import check_options, check_same_tokenizer, plan_pawn
from tasks.pawn_report import log_detection
from tasks.pawn_train import check_groups, evaluate_detector, fit_detector, forget_features
from tasks.tracking import publish_components

def check_decision_options(target_fpr: float, groups: Optional[list[str]]) -> None:
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr={target_fpr} must be in (0, 1), e.g. 0.05")
    check_groups(list(groups or []))


DEFAULT_DETECTORS = ["pawn", "log_likelihood", "log_rank", "token_entropy", "gltr", "fast_detectgpt", "binoculars"]


@flow(name="pawn-prep", log_prints=True)
def pawn_prep(sources: list[str], out: Optional[str] = None, split: str = "auto",
              prep: PrepOptions = PrepOptions()) -> dict[str, Any]:  # noqa: B008 - a pydantic default, never mutated
    """Turn human/machine text sources into one Parquet file (id, text, label, domain, generator, split).

    Args:
        sources: JSONL/CSV/Parquet/JSON files, hf:<dataset id>[:<config>[:<split>]], or Fast-DetectGPT pair files.
        out: Output Parquet path (default: content-addressed under ATTNFLOW_HOME/data).
        split: "auto" (a split field, else a hash split by pair) or train/valid/test for every row.
        prep: Field names, split fractions, limits and label options.
    """
    return prepare(sources, prep, split, out)


@flow(name="pawn-features", log_prints=True)
def pawn_features(data: list[str], model: str = "demo", max_length: int = 512, batch_size: int = 16,
                  shard_size: int = 256, performer: Optional[str] = None, cache_dir: Optional[str] = None,
                  prep: PrepOptions = PrepOptions(), dtype: Dtype = "float32",  # noqa: B008
                  progress: bool = True, observer: Optional[str] = None) -> dict[str, Any]:
    """Build (or resume, or verify) the feature cache of a dataset: the backbone runs once per text.

    Args:
        data: Data sources (as for pawn-prep) or a prepared Parquet file.
        model: Backbone: hub id, local model directory, or "demo".
        max_length: Tokens per text (longer texts are truncated and flagged).
        batch_size: Texts per backbone forward.
        shard_size: Texts per Parquet shard (the unit of resumption).
        performer: Optional Binoculars performer sharing the tokenizer (default: the backbone).
        cache_dir: Explicit cache directory (default: content-addressed under ATTNFLOW_HOME/cache).
        prep: Data prep options.
        dtype: Backbone dtype: float32, bfloat16 or float16.
        progress: Show a progress bar with tokens/s.
        observer: Optional Binoculars observer sharing the tokenizer (default: the backbone).
    """
    check_options(max_length, batch_size, prep, True)
    check_same_tokenizer(model, performer, observer)  # before any weights load
    # 1. Prepared Parquet (cached by source content).
    info = prepare(data, prep)
    # 2. Backbone (and Binoculars observer / performer), then the content-addressed cache.
    loaded, perf, obs = load_models(model, performer, observer, dtype)
    return build_feature_cache(loaded, info["path"], max_length, batch_size, shard_size, perf, cache_dir, progress,
                               obs)


def load_models(model: str, performer: Optional[str], observer: Optional[str], dtype: str) -> tuple[Any, Any, Any]:
    """The backbone and the Binoculars performer / observer (None where the backbone plays the role)."""
    loaded = load_model(model, dtype=dtype)
    perf = load_model(performer, dtype=dtype) if performer and performer != model else None
    obs = load_model(observer, dtype=dtype) if observer and observer != model else None
    return loaded, perf, obs


def binoculars_roles(loaded: Any, perf: Any, obs: Any) -> dict[str, str]:
    """Which model plays which Binoculars role (run tags and a printed line)."""
    o, p = (obs or loaded).name, (perf or loaded).name
    roles = {"attnflow.binoculars.observer": o, "attnflow.binoculars.performer": p,
             "attnflow.binoculars.single_model": str(o == p and obs is None and perf is None).lower()}
    print(f"Binoculars: observer {o}, performer {p}" + (" (ONE model in both roles: single-model Binoculars, "
                                                        "B = mean NLL / mean entropy)" if o == p else ""))
    return roles


def train_and_evaluate(*, train: list[str], test: list[str], model: str, detectors: list[str], prep: PrepOptions,
                       max_length: int, batch_size: int, performer: Optional[str], experiment: str, dtype: str,
                       progress: bool, observer: Optional[str] = None, target_fpr: float = 0.05,
                       groups: Optional[list[str]] = None) -> dict[str, Any]:
    """The shared recipe of ``pawn-train`` and ``pawn``."""
    # 1. Validate everything before any compute (a Binoculars pair with another tokenizer: before any weights).
    check_decision_options(target_fpr, groups)
    plan = plan_pawn(model, detectors, train, test, prep, max_length, batch_size, performer, observer=observer)
    versions = publish_components(plan.refs)
    # 2. Data prep: train sources split train/valid(/test). Test sources are prepared exactly like training
    #    sources (so one cache serves a data set in either role, e.g. both transfer directions), and every text
    #    of them is test data whatever its split column says.
    train_info = prepare(train, prep.model_copy(update={"test_frac": 0.0}) if test else prep)
    test_info = prepare(test, prep.model_copy(update={"test_frac": 0.0})) if test else None
    # 3. Feature caches: the backbone runs once per text (reused across runs and detectors).
    loaded, perf, obs = load_models(model, performer, observer, dtype)
    roles = binoculars_roles(loaded, perf, obs)
    caches = {"train": build_feature_cache(loaded, train_info["path"], max_length, batch_size, 256, perf, None,
                                           progress, obs)}
    if test_info:
        caches["test"] = build_feature_cache(loaded, test_info["path"], max_length, batch_size, 256, perf, None,
                                             progress, obs)
    train_dir, test_dir = caches["train"]["dir"], caches.get("test", {}).get("dir")
    # 4. Fit every detector from the cache (stored states are reused), then evaluate it.
    fits = [fit_detector(train_dir, spec, progress) for spec in plan.detectors]
    results = [evaluate_detector(f, train_dir, test_dir, target_fpr=target_fpr, groups=groups) for f in fits]
    for r in results:
        if r["fit"]["component"]["name"] == "binoculars":
            r["notes"].update({k.removeprefix("attnflow."): v for k, v in roles.items()})
    # 5. MLflow: one run per detector and the comparison on a parent run.
    parent = runs.start(experiment, f"pawn {loaded.name}",
                        tags={"attnflow.kind": "pawn", "attnflow.model": loaded.name,
                              "attnflow.model_fingerprint": loaded.fingerprint, **roles,
                              "attnflow.shared_prefix": "cut" if prep.strip_shared_prefix else "kept",
                              **{f"attnflow.cache_key.{k}": v["key"] for k, v in caches.items()}},
                        params={"model": model, "train": train, "test": test, "detectors": plan.detectors,
                                "max_length": max_length, "performer": performer, "observer": observer,
                                "target_fpr": target_fpr, "groups": groups or [], **prep.model_dump()})
    with runs.ended(parent, finish=False):  # ended by the calling flow when all went well
        logged = log_detection(results, experiment, parent, versions,
                               {"name": loaded.name, "fingerprint": loaded.fingerprint},
                               {k: {x: v[x] for x in v if x != "dir"} for k, v in caches.items()},
                               f"{experiment}: {loaded.name}")
    return {"loaded": loaded, "results": results, "caches": caches, "run_id": parent, "table": logged["table"],
            "child_runs": logged["child_runs"]}


@flow(name="pawn-train", log_prints=True)
def pawn_train(train: list[str], test: list[str] = [], model: str = "demo",  # noqa: B006 - Prefect parameter defaults
               detectors: list[str] = DEFAULT_DETECTORS, prep: PrepOptions = PrepOptions(),  # noqa: B006,B008
               max_length: int = 512, batch_size: int = 16, performer: Optional[str] = None,
               experiment: str = "pawn", dtype: Dtype = "float32", progress: bool = True,
               observer: Optional[str] = None, target_fpr: Fpr = 0.05,
               groups: list[str] = []) -> dict[str, Any]:  # noqa: B006
    """Fit PAWN heads and baselines from one feature cache and compare them (no export).

    Args:
        train: Training data sources (split into train/valid, and test unless test data is given).
        test: Test data sources (every text is test data), e.g. another domain or generator.
        model: Backbone: hub id, local model directory, or "demo".
        detectors: Detector specs, e.g. "pawn(seed=1)", "pawn(features=128, lr=0.0005)", "gltr", "binoculars".
        prep: Data prep options (fields, split fractions, limits, labels).
        max_length: Tokens per text (longer texts are truncated and flagged).
        batch_size: Texts per backbone forward.
        performer: Binoculars performer sharing the tokenizer (default: the backbone).
        observer: Binoculars observer sharing the tokenizer (default: the backbone).
        target_fpr: False-positive rate the decision threshold is calibrated for on human validation texts.
        groups: Columns (domain, source, generator, group, split) that get a per-group FPR table.
        experiment: MLflow experiment name.
        dtype: Backbone dtype: float32, bfloat16 or float16.
        progress: Show progress bars.
    """
    out = train_and_evaluate(train=train, test=test, model=model, detectors=detectors, prep=prep,
                             max_length=max_length, batch_size=batch_size, performer=performer,
                             experiment=experiment, dtype=dtype, progress=progress, observer=observer,
                             target_fpr=target_fpr, groups=groups)
    with runs.ended(out["run_id"]):
        forget_features()
    return {k: v for k, v in out.items() if k != "loaded"}


@flow(name="pawn", log_prints=True)
def pawn(train: list[str], test: list[str] = [], model: str = "demo",  # noqa: B006 - Prefect parameter defaults
         detectors: list[str] = DEFAULT_DETECTORS, prep: PrepOptions = PrepOptions(),  # noqa: B006,B008
         max_length: int = 512, batch_size: int = 16, performer: Optional[str] = None, experiment: str = "pawn",
         register_model: bool = True, out: Optional[str] = None, dtype: Dtype = "float32",
         progress: bool = True, observer: Optional[str] = None, target_fpr: Fpr = 0.05,
         groups: list[str] = []) -> dict[str, Any]:  # noqa: B006
    """End to end: prep, feature cache, PAWN heads and baselines, evaluation, ONNX export of the best head,
    registration as attnflow.pawn.<backbone> (alias champion).

    Args:
        train: Training data sources (split into train/valid, and test unless test data is given).
        test: Test data sources (every text is test data), e.g. another domain or generator.
        model: Backbone: hub id, local model directory, or "demo".
        detectors: Detector specs; the PAWN head with the best validation AUROC is exported.
        prep: Data prep options (fields, split fractions, limits, labels).
        max_length: Tokens per text (longer texts are truncated and flagged).
        batch_size: Texts per backbone forward.
        performer: Binoculars performer sharing the tokenizer (default: the backbone).
        observer: Binoculars observer sharing the tokenizer (default: the backbone).
        target_fpr: False-positive rate the decision threshold is calibrated for on human validation texts.
        groups: Columns (domain, source, generator, group, split) that get a per-group FPR table.
        experiment: MLflow experiment name.
        register_model: Register the exported detector in MLflow with alias champion.
        out: Directory of the exported detector (default ATTNFLOW_HOME/models/pawn-<backbone>-<id>).
        dtype: Backbone dtype: float32, bfloat16 or float16.
        progress: Show progress bars.
    """
    # 1-5. Prep, cache, fit, evaluate, log (as pawn-train).
    out_ = train_and_evaluate(train=train, test=test, model=model, detectors=detectors, prep=prep,
                              max_length=max_length, batch_size=batch_size, performer=performer,
                              experiment=experiment, dtype=dtype, progress=progress, observer=observer,
                              target_fpr=target_fpr, groups=groups)
    with runs.ended(out_["run_id"]):
        heads = [r for r in out_["results"] if r["fit"]["component"]["name"] == "pawn"]
        if not heads:
            raise ValueError("no PAWN head among the detectors: nothing to export (use the pawn-train flow)")
        best = max(heads, key=lambda r: r["valid"]["metrics"].get("auroc", float("-inf")))
        # 6. ONNX: the head and the backbone + metric graph, parity-checked in ONNX Runtime.
        model_dir = export_detector(best, out_["loaded"], out_["caches"]["train"]["dir"], out)
        # 7. Registered model attnflow.pawn.<backbone>, alias champion.
        name = registered_name(out_["loaded"].name)
        version = register_detector(model_dir, out_["run_id"], name) if register_model else None
    forget_features()
    return {**{k: v for k, v in out_.items() if k != "loaded"}, "model_dir": model_dir,
            "registered": registered_name(out_["loaded"].name) if register_model else None,
            "registered_version": version,
            "exported": best["fit"]["component"]["label"]}


@flow(name="pawn-evaluate", log_prints=True)
def pawn_evaluate(detector: str, data: list[str], prep: PrepOptions = PrepOptions(),  # noqa: B008
                  batch_size: int = 16, experiment: str = "pawn-evaluate", dtype: Dtype = "float32",
                  progress: bool = True, target_fpr: Fpr = 0.05,
                  groups: list[str] = []) -> dict[str, Any]:  # noqa: B006
    """Evaluate a trained PAWN detector on new labelled (or human-only / machine-only) data: features cached; the
    macro-F1 threshold from training, the target-FPR threshold calibrated on the human validation scores stored
    with the detector; FPR per human source and per ``groups`` column.

    Args:
        detector: Registered model name[@alias|/version] (e.g. attnflow.pawn.demo-lm) or a detector directory.
        data: Labelled data sources; every text is test data.
        prep: Data prep options.
        batch_size: Texts per backbone forward.
        experiment: MLflow experiment name.
        dtype: Backbone dtype.
        progress: Show progress bars.
        target_fpr: False-positive rate the decision threshold is calibrated for.
        groups: Columns (domain, source, generator, group, split) that get a per-group FPR table.
    """
    check_decision_options(target_fpr, groups)
    # 1. The detector and its backbone (refused if the weights differ from the ones it was trained on).
    model_dir = str(resolve_model(detector))
    meta = read_meta(model_dir)
    info = prepare(data, prep, split="test")
    loaded = load_model(meta["backbone"]["ref"], dtype=dtype)
    if loaded.fingerprint != meta["backbone"]["fingerprint"]:
        raise ValueError(f"{meta['backbone']['ref']} now has weights {loaded.fingerprint}, but the detector was "
                         f"trained on {meta['backbone']['fingerprint']}: refusing to score with another backbone")
    # 2. Features of the new data, then the metrics at the detector's own threshold.
    cache = build_feature_cache(loaded, info["path"], meta["extractor"]["max_length"], batch_size, 256, None, None,
                                progress)
    check_compatible(cache, backbone_fingerprint=meta["backbone"]["fingerprint"],
                     extractor_version=meta["extractor"]["version"], where=cache["dir"])
    fit = {"spec": meta["spec"], "state_dir": model_dir, "cache_key": cache["key"], "component": meta["detector"],
           "info": {}, "reused": True}
    result = evaluate_detector(fit, cache["dir"], cache["dir"], threshold=meta["threshold_logit"],
                               target_fpr=target_fpr, groups=groups, valid_human=meta.get("valid_human_scores", []))
    # 3. MLflow.
    with runs.tracked_run(experiment, f"pawn-evaluate {loaded.name}",
                          tags={"attnflow.kind": "pawn-evaluate", "attnflow.model": loaded.name,
                                "attnflow.detector": detector},
                          params={"detector": detector, "data": data, "target_fpr": target_fpr,
                                  "groups": groups, "label": prep.label,
                                  "strip_shared_prefix": prep.strip_shared_prefix}) as parent:
        versions = publish_components([meta["detector"]["name"] + "@" + meta["detector"]["version"]])
        logged = log_detection([result], experiment, parent, versions,
                               {"name": loaded.name, "fingerprint": loaded.fingerprint},
                               {"test": {k: v for k, v in cache.items() if k != "dir"}}, f"{experiment}: {loaded.name}")
    forget_features()
    return {"table": logged["table"], "run_id": parent, "result": result}
