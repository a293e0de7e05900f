"""A trained PAWN detector as a self-contained directory: ONNX graphs, parity check, MLflow registration, and the
ONNX Runtime scorer behind ``attnflow pawn score``.

Directory layout::

    pawn.json            detector spec, backbone identity, extractor version, threshold, metrics, parity
    state.safetensors    head weights (+ info.json: training history)  -> reloadable in torch
    backbone.onnx(.data) input_ids, attention_mask -> hidden, metrics
    head.onnx            hidden, metrics, attention_mask -> logit
    tokenizer files      the backbone's tokenizer (tokenization happens in Python, as in extraction)

The label is "machine" when the logit is >= the threshold chosen on the validation split (``score`` is the
sigmoid of the logit: a probability-like number; the threshold is reported in both forms).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.detectors import _export, _features
from components.detectors.pawn import collate
from infra.settings import settings
from tasks import pawn_cache, tracking
from tasks.lm import register_lm
from tasks.models import LoadedModel
from tasks.pawn_data import read_prepared
from tasks.pawn_train import detector, features, load_state
from tasks.retry import transient

KIND = "attnflow-pawn-detector"
PARITY_TOL = {"logit": 1e-3, "metrics": 1e-4}


def registered_name(backbone_name: str) -> str:
    return f"attnflow.pawn.{backbone_name}"


class OnnxScorer:
    """Score texts with the exported graphs in ONNX Runtime (no torch model needed)."""

    def __init__(self, model_dir: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.dir = Path(model_dir)
        self.meta = read_meta(self.dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.dir)
        self.backbone = ort.InferenceSession(str(self.dir / "backbone.onnx"), providers=list(providers))
        self.head = ort.InferenceSession(str(self.dir / "head.onnx"), providers=list(providers))
        self.max_length = int(self.meta["extractor"]["max_length"])
        self.threshold = float(self.meta["threshold_logit"])

    def logits(self, ids: list[list[int]], batch_size: int = 16) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logit per text and, for parity checks, the backbone outputs of the last batch."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = np.empty(len(ids))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        last: dict[str, np.ndarray] = {}
        for s in range(0, len(ids), batch_size):
            idx = order[s : s + batch_size]
            T = max(len(ids[i]) for i in idx)
            x = np.full((len(idx), T), pad, dtype=np.int64)  # (B, T) right-padded
            mask = np.zeros((len(idx), T), dtype=np.int64)  # (B, T)
            for r, i in enumerate(idx):
                x[r, : len(ids[i])], mask[r, : len(ids[i])] = ids[i], 1
            hidden, metrics = self.backbone.run(None, {"input_ids": x, "attention_mask": mask})
            logit = self.head.run(None, {"hidden": hidden, "metrics": metrics,
                                         "attention_mask": mask.astype(np.float32)})[0]  # (B,)
            out[idx] = logit
            last = {"input_ids": x, "attention_mask": mask, "hidden": hidden, "metrics": metrics}
        if not np.isfinite(out).all():
            raise ValueError("the ONNX graphs produced non-finite scores; re-export the detector")
        return out, last

    def score(self, texts: Sequence[str], names: Sequence[str] | None = None, batch_size: int = 16) -> list[dict]:
        enc = _features.encode(self.tokenizer, texts, self.max_length, names)
        logits, _ = self.logits(enc.ids, batch_size)
        return [{"score": 1.0 / (1.0 + math.exp(-z)), "logit": float(z),
                 "label": "machine" if z >= self.threshold else "human", "n_tokens": len(i), "truncated": t}
                for z, i, t in zip(logits, enc.ids, enc.truncated)]


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "pawn.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a PAWN detector directory (no pawn.json)")
    meta = json.loads(path.read_text())
    if meta.get("kind") != KIND:
        raise ValueError(f"{path} is not an attnflow PAWN detector (kind {meta.get('kind')!r})")
    return meta


def resolve_model(ref: str) -> Path:
    """A detector directory, or a registered model ``name[@alias|/version]`` (default alias champion) fetched once
    from MLflow into the cache."""
    path = Path(ref).expanduser()
    if path.exists():
        read_meta(path)
        return path
    import mlflow

    name, alias, version = ref, "champion", None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref and ref.rsplit("/", 1)[1].isdigit():
        name, version = ref.rsplit("/", 1)
    c = tracking.client()
    try:
        mv = c.get_model_version(name, version) if version else c.get_model_version_by_alias(name, alias)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for an unknown name/alias
        raise FileNotFoundError(f"{ref!r} is neither a PAWN detector directory nor a registered model "
                                f"(name[@alias|/version]) in {settings().tracking_uri}: "
                                f"{str(e).splitlines()[0]}") from None
    dst = settings().cache_dir / "pawn-models" / name / str(mv.version)
    if not (dst / "model" / "pawn.json").is_file():
        tmp = dst.with_name(dst.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="model", dst_path=str(tmp))
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    read_meta(dst / "model")
    return dst / "model"


def _parity(out: Path, loaded: LoadedModel, head: torch.nn.Module, texts: list[str]) -> dict[str, float]:
    """Max |diff| of ONNX Runtime vs torch: the backbone graph's metrics, and the whole pipeline's logits (torch =
    the cached-feature path: chunked extraction, float16 hidden states, the head one text at a time)."""
    scorer = OnnxScorer(out)
    feats = _features.extract(loaded.model, loaded.tokenizer, texts, max_length=scorer.max_length, batch_size=8)
    with torch.no_grad():
        want = np.array([float(head(*collate(feats, [i]))) for i in range(len(feats))])
    enc = _features.encode(loaded.tokenizer, texts, scorer.max_length)
    got, last = scorer.logits(enc.ids, batch_size=len(texts))  # one batch: `last` covers every text
    with torch.no_grad():
        _, metrics = _export.BackboneFeatures(loaded.model)(torch.from_numpy(last["input_ids"]),
                                                             torch.from_numpy(last["attention_mask"]))
    return {"logit": float(np.abs(got - want).max()), "metrics": float(np.abs(last["metrics"] - metrics.numpy()).max()),
            "n_texts": len(texts)}


def parity_texts(manifest: dict[str, Any], n: int = 8) -> list[str]:
    """Up to n validation texts of the training data (different lengths: one padded batch), else two fixed ones."""
    path = manifest["dataset"].get("path", "")
    rows = [r for r in read_prepared(path) if r["split"] == "valid"] if path and Path(path).is_file() else []
    texts = [r["text"] for r in rows[:: max(1, len(rows) // n)][:n]]
    return texts or ["A short text to check the exported graphs.",
                     "Another, somewhat longer text: the graphs must agree with torch at every length and batch size."]


@task(cache_policy=NO_CACHE, task_run_name="export {evaluation[fit][spec]}")
def export_detector(evaluation: dict[str, Any], loaded: LoadedModel, cache_dir: str, out: str | None = None) -> str:
    """Write the detector directory with both ONNX graphs and check them against torch with ONNX Runtime."""
    fit = evaluation["fit"]
    det = detector(fit["spec"])
    if not det.onnx_exportable:
        raise ValueError(f"{det.label()} is not ONNX-exportable")
    manifest = pawn_cache.read_manifest(cache_dir)
    state = load_state(fit["state_dir"])
    head = det.load(state)
    dst = Path(out) if out else settings().models_dir / f"pawn-{loaded.name}-{det.fingerprint()[:8]}"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(fit["state_dir"]) / "state.safetensors", dst / "state.safetensors")
    shutil.copy2(Path(fit["state_dir"]) / "info.json", dst / "info.json")
    loaded.tokenizer.save_pretrained(dst)
    t0 = time.perf_counter()
    sample = features(cache_dir, ("valid",), True)
    sample = sample if len(sample) >= 2 else features(cache_dir, ("train",), True)
    hs, metrics, mask = collate(sample, [0, 1])
    _export.export(head, (hs, metrics, mask), dst / "head.onnx", ["hidden", "metrics", "attention_mask"], ["logit"])
    ids = torch.full((2, 8), loaded.tokenizer.pad_token_id or 0, dtype=torch.long)  # (2, 8) example batch
    ids[:, 0] = _features.bos_id(loaded.tokenizer) or 0
    ex_mask = torch.ones(2, 8, dtype=torch.long)
    ex_mask[1, 5:] = 0
    _export.export(_export.BackboneFeatures(loaded.model), (ids, ex_mask), dst / "backbone.onnx",
                   ["input_ids", "attention_mask"], ["hidden", "metrics"])
    export_seconds = time.perf_counter() - t0
    meta = {
        "kind": KIND, "format": 1, "detector": fit["component"], "spec": fit["spec"],
        "backbone": manifest["backbone"], "extractor": manifest["extractor"], "cache_key": manifest["key"],
        "threshold_logit": evaluation["threshold"],
        "threshold_probability": 1.0 / (1.0 + math.exp(-evaluation["threshold"])),
        # the human validation scores: `pawn evaluate --target-fpr x` calibrates its threshold on them
        "target_fpr": evaluation.get("target_fpr"), "fpr_threshold_logit": evaluation.get("fpr_threshold"),
        "valid_human_scores": evaluation["valid"].get("human_scores", []),
        "metrics": {"valid": evaluation["valid"]["metrics"], "test": evaluation["test"]["metrics"]},
        "onnx": {"backbone": "backbone.onnx", "head": "head.onnx", "export_seconds": export_seconds,
                 "providers": ["CPUExecutionProvider"]},
    }
    (dst / "pawn.json").write_text(json.dumps(meta, indent=1))
    parity = _parity(dst, loaded, head, parity_texts(manifest))
    meta["onnx"]["parity"] = parity
    (dst / "pawn.json").write_text(json.dumps(meta, indent=1))
    print(f"exported {det.label()} to {dst} ({export_seconds:.0f}s); ONNX Runtime vs torch: max |logit diff| "
          f"{parity['logit']:.2e}, max |metric diff| {parity['metrics']:.2e}")
    if parity["logit"] > PARITY_TOL["logit"] or parity["metrics"] > PARITY_TOL["metrics"]:
        raise RuntimeError(f"ONNX parity check failed: {parity} (tolerances {PARITY_TOL})")
    return str(dst)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=transient,
      task_run_name="register {name}")
def register_detector(model_dir: str, run_id: str, name: str, alias: str = "champion") -> str:
    """Log the detector directory on ``run_id`` and register it as ``name`` (alias ``alias``)."""
    meta = read_meta(model_dir)
    c = tracking.client()
    try:
        c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - not registered yet
        c.create_registered_model(name, description=f"PAWN AI-text detector on backbone {meta['backbone']['name']} "
                                  "(ONNX graphs + head weights); score with `attnflow pawn score --model "
                                  f"{name}`", tags={"attnflow.kind": "pawn-detector"})
    m = meta["metrics"]["test"]
    tags = {"attnflow.backbone_fingerprint": meta["backbone"]["fingerprint"],
            "attnflow.extractor_version": meta["extractor"]["version"], "attnflow.detector": meta["spec"],
            "attnflow.detector_fingerprint": meta["detector"]["fingerprint"], "attnflow.cache_key": meta["cache_key"],
            "attnflow.threshold_logit": f"{meta['threshold_logit']:.6g}",
            **{tracking.metric_key(f"metric.test.{k}"): f"{m[k]:.4f}" for k in ("auroc", "macro_f1", "macro_recall")
               if isinstance(m.get(k), float) and not math.isnan(m[k])}}
    return register_lm.fn(run_id, model_dir, name, alias, tags)
