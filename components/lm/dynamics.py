"""One training run of a training-dynamics study ("a sweep point"): build, train, probe on a schedule.

A point is plain data (JSON-friendly, so it can be a cache key)::

    {"label": "softmax seed 0",
     "model": {...ModelSpec fields: layers, hidden, heads, attention: "sigmoid", qk_layernorm...},
     "train": {...TrainSpec fields: steps, lr, weight_decay, z_loss, seed...},
     "data":  {"source": "bb" | "bb_nobos" | "builtin:stories" | <text file>, "seq_len": 64, "n_sequences": null,
               "seed": 0},
     "probe": {"every": 500, "n": 32, "sink": true}}

:func:`run_point` trains with the project trainer (resumable checkpoints in ``work_dir``; the probe curve is kept
beside them, so a resumed point keeps its earlier probes) and measures at step 0 and every ``probe.every`` steps:
held-out LM loss, max attention logit, output log Z, and (``probe.sink``) Sink_1 / alpha_0. A run whose loss turns
non-finite stops there and reports ``diverged_at``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from components.base import ParamError
from components.lm import probes, trainer
from components.lm.model import build_model, n_params
from components.lm.preset import ModelSpec, TrainSpec, _build
from components.lm.synthetic import BigramBackcopy, CharCorpus

DATA_KEYS = {"source", "seq_len", "n_sequences", "seed"}
PROBE_KEYS = {"every", "n", "sink"}


def make_data(data: dict[str, Any]) -> BigramBackcopy | CharCorpus:
    """The point's data source (raises ParamError for unknown keys or a bad source)."""
    unknown = set(data) - DATA_KEYS
    if unknown:
        raise ParamError(f"data: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(DATA_KEYS))}")
    source = str(data.get("source", "bb"))
    seq_len, seed = int(data.get("seq_len", 64)), int(data.get("seed", 0))
    if source in ("bb", "bb_nobos"):
        return BigramBackcopy(seq_len=seq_len, bos=source == "bb", n_sequences=data.get("n_sequences"), seed=seed)
    if data.get("n_sequences") is not None:
        raise ParamError("data.n_sequences applies to the bigram-backcopy data (source bb / bb_nobos) only")
    return CharCorpus.from_source(source, seq_len=seq_len, seed=seed)


def specs(point: dict[str, Any]) -> tuple[ModelSpec, TrainSpec]:
    """Validated model and training specs of a point."""
    model = _build(ModelSpec, dict(point.get("model", {})), "model")
    train = _build(TrainSpec, dict(point.get("train", {})), "train")
    unknown = set(point.get("probe", {})) - PROBE_KEYS
    if unknown:
        raise ParamError(f"probe: unknown key(s) {', '.join(sorted(unknown))}")
    return model, train


def check_point(point: dict[str, Any]) -> dict[str, Any]:
    """Validate everything a point needs before any training (model spec, kernel, data source)."""
    model, _ = specs(point)
    data = make_data(dict(point.get("data", {})))
    if model.vocab_size < len(data.tokens):
        raise ParamError(f"model.vocab_size={model.vocab_size} is smaller than the data vocabulary "
                         f"({len(data.tokens)})")
    return point


def run_point(point: dict[str, Any], work_dir: Path, *, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one point; returns its curves and final probes (plain data)."""
    model_spec, train_spec = specs(point)
    probe = {"every": 500, "n": 32, "sink": False, **point.get("probe", {})}
    train_spec = dataclasses.replace(train_spec, eval_every=int(probe["every"]), log_every=min(
        train_spec.log_every, int(probe["every"])), checkpoint_every=int(probe["every"]), keep_checkpoints=1)
    data = make_data(dict(point.get("data", {})))
    model = build_model(model_spec, data.tokens, seed=train_spec.seed)
    probe_ids = data.probe(int(probe["n"])) if isinstance(data, BigramBackcopy) else data.validation(int(probe["n"]))
    work_dir.mkdir(parents=True, exist_ok=True)
    curve_file = work_dir / "probes.json"
    done = trainer.latest_checkpoint(work_dir / "checkpoints")
    start = json.loads((done / "state.json").read_text())["step"] if done else 0
    rows = [r for r in _read(curve_file) if r["step"] <= start]

    def on_eval(step: int) -> dict[str, float]:
        row = {"step": step, **probes.logit_stats(model, probe_ids)}
        if probe["sink"]:
            row.update(probes.sink_stats(probes.attention_weights(model, probe_ids)))
        rows.append(row)
        _write(curve_file, rows)
        return row

    if not rows:
        model.eval()
        on_eval(0)  # the loss at initialisation (LR sensitivity) and the starting sink level
    t0 = time.perf_counter()
    diverged_at = None
    try:
        result = trainer.train(model, lambda step: data.batch(step, train_spec.batch_size), train_spec,
                               work_dir / "checkpoints", on_eval=on_eval, progress=False)
        train_loss = [[s, v] for s, v in result.losses]
    except FloatingPointError as e:
        diverged_at = int(str(e).rsplit(" ", 1)[-1])
        train_loss = []
    seconds = time.perf_counter() - t0
    if not keep_checkpoints:
        shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
    final = dict(rows[-1]) if diverged_at is None else {"step": diverged_at, "loss": math.inf}
    return {"label": point.get("label", ""), "point": point, "n_params": n_params(model), "seconds": seconds,
            "resumed_from": start, "diverged_at": diverged_at, "train_loss": train_loss, "probes": rows,
            "final": final, "init_loss": rows[0]["loss"] if rows and rows[0]["step"] == 0 else None}


def count_params(model: dict[str, Any], vocab_size: int) -> int:
    """Parameter count of a model spec with its kernel (built on the meta device: no memory, no init)."""
    from components.lm.synthetic import Vocab

    spec = _build(ModelSpec, dict(model), "model")
    with torch.device("meta"):
        return n_params(build_model(spec, Vocab(vocab_size, 0, 0, 0)))


def matched_intermediate(model: dict[str, Any], vocab_size: int, target: int) -> tuple[int, int]:
    """The SwiGLU width that brings a model's parameter count closest to ``target``: (intermediate, n_params)."""
    def count(width: int) -> int:
        return count_params({**model, "intermediate": width}, vocab_size)

    base = int(model.get("intermediate", ModelSpec.intermediate))
    per_unit = 3 * int(model.get("hidden", ModelSpec.hidden)) * int(model.get("layers", ModelSpec.layers))
    guess = max(1, base + round((target - count(base)) / per_unit))
    best = min((abs(count(w) - target), w) for w in range(max(1, guess - 1), guess + 2))
    return best[1], count(best[1])


def _read(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(path)
