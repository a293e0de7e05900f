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


def _scored(det: Any, state: DetectorState, cache_dir: str, splits: tuple[str, ...]) -> dict[str, Any]:
    feats = features(cache_dir, splits, det.needs_hidden)
    det.check_features(feats)
    return {"ids": feats.ids, "labels": feats.require_labels().tolist(),
            "scores": det.machine_score(feats, state).tolist(), "domain": feats.extra["domain"],
            "generator": feats.extra["generator"], "notes": det.describe(feats)}


@task(cache_policy=NO_CACHE, task_run_name="evaluate {fit[spec]}")
def evaluate_detector(fit: dict[str, Any], cache_dir: str, test_cache_dir: str | None = None,
                      threshold: float | None = None) -> dict[str, Any]:
    """Metrics on the test data (the test split, or every text of ``test_cache_dir``) at a threshold chosen on the
    validation split (or the given one), overall, per domain and per generator."""
    det = detector(fit["spec"])
    state = load_state(fit["state_dir"])
    train_manifest = pawn_cache.read_manifest(cache_dir)
    if test_cache_dir:
        pawn_cache.check_compatible(pawn_cache.read_manifest(test_cache_dir),
                                    backbone_fingerprint=train_manifest["backbone"]["fingerprint"],
                                    extractor_version=train_manifest["extractor"]["version"], where=test_cache_dir)
    valid: dict[str, Any] = {"scores": [], "labels": []}
    if threshold is None:
        valid = _scored(det, state, cache_dir, ("valid",))
        if not valid["labels"]:
            valid = _scored(det, state, cache_dir, ("train",))  # no validation split: choose on training data
        threshold = pawn_metrics.choose_threshold(np.array(valid["scores"]), np.array(valid["labels"]))
    test = _scored(det, state, test_cache_dir, None) if test_cache_dir else _scored(det, state, cache_dir, ("test",))
    if not test["labels"]:
        raise ValueError(f"no test texts: give test data or a dataset with a test split ({cache_dir})")
    valid_metrics = (pawn_metrics.metrics(np.array(valid["scores"]), np.array(valid["labels"]), threshold)
                     if valid["labels"] else {})
    result = {
        "fit": fit, "threshold": threshold, "higher_is_machine": det.higher_is_machine,
        "valid": {"metrics": valid_metrics, "scores": valid["scores"], "labels": valid["labels"]},
        "test": {"metrics": pawn_metrics.metrics(np.array(test["scores"]), np.array(test["labels"]), threshold),
                 **pawn_metrics.breakdowns(np.array(test["scores"]), np.array(test["labels"]), test["domain"],
                                           test["generator"], threshold),
                 **{k: test[k] for k in ("ids", "scores", "labels", "domain", "generator")}},
        "notes": test["notes"],
    }
    m = result["test"]["metrics"]
    print(f"{det.label()}: test AUROC {m['auroc']:.4f}, macro-F1 {m['macro_f1']:.4f}, macro-recall "
          f"{m['macro_recall']:.4f}, recall@1%FPR {m['recall_at_1fpr']:.3f}, @5%FPR {m['recall_at_5fpr']:.3f} "
          f"(threshold {threshold:.4g})")
    return result
