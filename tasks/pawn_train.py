"""Fit detectors on a feature cache and evaluate them: the backbone never runs here.

Fitted states are kept on disk next to the cache (``cache/pawn-detectors/<cache key>/<name>-<fingerprint>/``:
``state.safetensors`` + ``info.json``), so several heads, seeds and hyper-parameters train from one cache, and a
re-run with the same detector spec reuses the fitted state instead of training again.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import load_file, save_file

from components.detectors.base import DetectorState, FeatureSet
from infra.settings import settings
from registry.specs import parse
from tasks import pawn_cache, pawn_metrics
from tasks.evaluate import component_record
from tasks.pawn_data import GROUP_COLUMNS


def detector(spec: str) -> Any:
    return parse(spec).create("detector")


@functools.lru_cache(maxsize=6)
def _load(cache_dir: str, splits: tuple[str, ...] | None, hidden: bool) -> FeatureSet:
    return pawn_cache.load(cache_dir, splits=splits, hidden=hidden)


def features(cache_dir: str, splits: tuple[str, ...] | None, hidden: bool) -> FeatureSet:
    """Features of some splits of a cache (memoised in this process; the checksums are verified once)."""
    return _load(str(cache_dir), splits, hidden)


def forget_features() -> None:
    """Drop the in-memory features (a long-lived worker process should not keep them after a flow)."""
    _load.cache_clear()


def state_dir(cache_key: str, det: Any) -> Path:
    return settings().cache_dir / "pawn-detectors" / cache_key / f"{det.component_name}-{det.fingerprint()}"


def save_state(state: DetectorState, out: Path) -> Path:
    """state.safetensors + info.json, written in a temp directory renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if state.tensors:  # zero-shot detectors have no tensors
            save_file({k: v.contiguous() for k, v in state.tensors.items()}, str(tmp / "state.safetensors"))
        (tmp / "info.json").write_text(json.dumps(state.info, indent=1, default=float))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_state(path: str | Path) -> DetectorState:
    path = Path(path)
    f = path / "state.safetensors"
    tensors = load_file(str(f)) if f.is_file() else {}
    return DetectorState(tensors, json.loads((path / "info.json").read_text()))


@task(cache_policy=NO_CACHE, task_run_name="fit {spec}")
def fit_detector(cache_dir: str, spec: str, progress: bool = True) -> dict[str, Any]:
    """Fit one detector on the train split (validation split for early stopping); reuse a stored state."""
    det = detector(spec)
    key = pawn_cache.read_manifest(cache_dir)["key"]
    out = state_dir(key, det)
    reused = (out / "info.json").is_file()
    if reused:
        print(f"{det.label()}: reusing the fitted state in {out}")
    else:
        state = DetectorState()
        if det.trainable:
            train = features(cache_dir, ("train",), det.needs_hidden)
            valid = features(cache_dir, ("valid",), det.needs_hidden)
            if not len(train):
                raise ValueError(f"{det.label()}: the training split of {cache_dir} is empty")
            print(f"fitting {det.label()} on {len(train)} texts (validation {len(valid)})")
            state = det.fit(train, valid if len(valid) else None, progress=progress)
        save_state(state, out)
    return {"spec": spec, "state_dir": str(out), "cache_key": key, "reused": reused,
            "component": component_record(det), "info": load_state(out).info}


def _scored(det: Any, state: DetectorState, cache_dir: str, splits: tuple[str, ...] | None) -> dict[str, Any]:
    feats = features(cache_dir, splits, det.needs_hidden)
    det.check_features(feats)
    n = len(feats)
    return {"ids": feats.ids, "labels": feats.require_labels().tolist(),
            "scores": det.machine_score(feats, state).tolist(), "domain": feats.extra["domain"],
            "generator": feats.extra["generator"], "source": feats.extra.get("source", feats.extra["domain"]),
            "group": feats.extra.get("group", [""] * n), "split": feats.extra.get("split", [""] * n),
            "notes": det.describe(feats)}


def human_scores(scored: dict[str, Any]) -> list[float]:
    return [s for s, y in zip(scored["scores"], scored["labels"]) if y == 0]


def check_groups(groups: list[str]) -> None:
    bad = [g for g in groups if g not in GROUP_COLUMNS]
    if bad:
        raise ValueError(f"--groups {', '.join(bad)}: not a column of the prepared data; choose from "
                         f"{', '.join(GROUP_COLUMNS)} (a user's own column: prep it with --group-field)")


@task(cache_policy=NO_CACHE, task_run_name="evaluate {fit[spec]}")
def evaluate_detector(fit: dict[str, Any], cache_dir: str, test_cache_dir: str | None = None,
                      threshold: float | None = None, target_fpr: float = 0.05, groups: list[str] | None = None,
                      valid_human: list[float] | None = None) -> dict[str, Any]:
    """Metrics on the test data (the test split, or every text of ``test_cache_dir``).

    Two thresholds, both fixed before the test data is seen: the macro-F1 one (chosen on the validation split, or
    the given ``threshold``) and the one calibrated for ``target_fpr`` on the human validation texts (or on
    ``valid_human``, the stored human validation scores of an exported detector). Metrics overall, per domain, per
    generator (against human texts of its domains), FPR per human source and per column in ``groups``.
    """
    groups = list(groups or [])
    check_groups(groups)
    det = detector(fit["spec"])
    state = load_state(fit["state_dir"])
    train_manifest = pawn_cache.read_manifest(cache_dir)
    if test_cache_dir:
        pawn_cache.check_compatible(pawn_cache.read_manifest(test_cache_dir),
                                    backbone_fingerprint=train_manifest["backbone"]["fingerprint"],
                                    extractor_version=train_manifest["extractor"]["version"], where=test_cache_dir)
    valid: dict[str, Any] = {"scores": [], "labels": []}
    calibrated_on = "stored validation scores" if valid_human is not None else "valid"
    if threshold is None or valid_human is None:
        valid = _scored(det, state, cache_dir, ("valid",))
        if not valid["labels"]:
            valid, calibrated_on = _scored(det, state, cache_dir, ("train",)), "train"  # no validation split
    if threshold is None:
        threshold = pawn_metrics.choose_threshold(np.array(valid["scores"]), np.array(valid["labels"]))
    humans = valid_human if valid_human is not None else human_scores(valid)
    fpr_threshold = pawn_metrics.calibrate_fpr_threshold(np.array(humans), target_fpr) if humans else None
    test = _scored(det, state, test_cache_dir, None) if test_cache_dir else _scored(det, state, cache_dir, ("test",))
    if not test["labels"]:
        raise ValueError(f"no test texts: give test data or a dataset with a test split ({cache_dir})")
    kw = {"threshold": threshold, "fpr_threshold": fpr_threshold, "target_fpr": target_fpr}
    valid_metrics = (pawn_metrics.metrics(np.array(valid["scores"]), np.array(valid["labels"]), **kw)
                     if valid["labels"] else {})
    t_scores, t_labels = np.array(test["scores"]), np.array(test["labels"])
    decision = fpr_threshold if fpr_threshold is not None else threshold
    tables = {c: pawn_metrics.group_fpr(t_scores, t_labels, test[c], decision, c) for c in ["source"] + groups}
    for t in tables.values():
        t["threshold_kind"] = (f"calibrated for {target_fpr:.0%} FPR on {calibrated_on} human texts"
                               if fpr_threshold is not None else "macro-F1 (no human validation texts)")
    result = {
        "fit": fit, "threshold": threshold, "fpr_threshold": fpr_threshold, "target_fpr": target_fpr,
        "calibrated_on": calibrated_on, "higher_is_machine": det.higher_is_machine,
        "valid": {"metrics": valid_metrics, "scores": valid["scores"], "labels": valid["labels"],
                  "human_scores": sorted(humans)},
        "test": {"metrics": pawn_metrics.metrics(t_scores, t_labels, **kw),
                 **pawn_metrics.breakdowns(t_scores, t_labels, test["domain"], test["generator"], **kw),
                 "fpr_by": tables,
                 **{k: test[k] for k in ("ids", "scores", "labels", "domain", "generator", "source", "group")}},
        "notes": test["notes"],
    }
    print(pawn_metrics.summary_line(det.label(), result["test"]["metrics"], threshold))
    print(format_fpr_table(tables["source"], "human source"))
    for c in groups:
        print(format_fpr_table(tables[c], c))
    return result


def format_fpr_table(table: dict[str, Any], what: str) -> str:
    """A plain-text table of FPR per group (n, flagged, FPR, 95% interval, ratio to the lowest group)."""
    col = table["column"]
    lines = [f"  FPR per {what} ({table['threshold_kind']}, threshold {table['threshold']:.4g}):"]
    for r in table["rows"]:
        ratio = f"x{r['ratio_to_lowest']:.2f}" if "ratio_to_lowest" in r else "-"
        lines.append(f"    {r[col]:<32} {int(r['n_flagged']):>4}/{int(r['n_human']):<4} FPR {r['fpr']:.3f} "
                     f"[{r['fpr_ci_low']:.3f}, {r['fpr_ci_high']:.3f}]  vs lowest {ratio}")
    if table.get("ratio_note"):
        lines.append(f"    ({table['ratio_note']})")
    lines += [f"    {g}: left out ({why})" for g, why in table["omitted"].items()]
    return "\n".join(lines)
