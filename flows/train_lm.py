"""train-lm: train a small Llama-architecture LM from a preset on synthetic in-context tasks (+ optional text).

preset -> run directory (resumable) -> tokenizer -> train (checkpoints, curves in MLflow) -> evaluate the suite
-> attention profile (sinks, induction heads) -> save a Hugging Face model directory -> register it in MLflow
(``attnflow.<preset>-lm``, alias champion).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Experiment
from infra.settings import settings
from tasks.lm import (evaluate_suite, log_final, prepare_run, prepare_tokenizer, profile_attention, register_lm,
                      resolve_preset, save_model, suite_specs, train_model)
from tasks.runs import ended
from tasks.tracking import metric_key


@flow(name="train-lm", log_prints=True)
def train_lm(
    preset: str = "demo",
    out: Optional[str] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    corpus: Optional[str] = None,
    corpus_weight: float = 0.2,
    corpus_field: str = "text",
    overrides: dict[str, Any] = {},  # noqa: B006 - a Prefect parameter default, never mutated
    register_model: bool = True,
    experiment: Experiment = "train-lm",
    progress: bool = True,
) -> dict[str, Any]:
    """Train an LM from a preset; re-running the same command resumes from the last checkpoint.

    Args:
        preset: Preset name in registry/presets/lm (demo, tiny) or a YAML path.
        out: Output model directory (default ATTNFLOW_HOME/models/<preset>-lm).
        steps: Override train.steps.
        seed: Override train.seed.
        corpus: Optional text corpus mixed in: .txt/.jsonl/.parquet path, hf:<dataset id>, or builtin:stories.
        corpus_weight: Mixture weight of the corpus.
        corpus_field: Text field of record corpora.
        overrides: Other preset overrides, e.g. {"model.layers": 6, "train.lr": 0.001}.
        register_model: Register the model in MLflow as attnflow.<preset>-lm with alias champion.
        experiment: MLflow experiment.
        progress: Show progress bars.
    """
    extra = {**overrides, **({"train.steps": steps} if steps else {}),
             **({"train.seed": seed} if seed is not None else {})}
    # 1. Validate the preset before any work.
    spec = resolve_preset(preset, extra, corpus, corpus_weight, corpus_field)
    # 1b. A staged preset (train.init_from: preset:<name>) continues from its first stage, trained now if missing.
    if spec.train.stage_preset:
        stage_dir = settings().models_dir / f"{Path(spec.train.stage_preset).stem}-lm"
        if not (stage_dir / "model.safetensors").is_file():
            print(f"training stage {spec.train.stage_preset!r} first (into {stage_dir})")
            train_lm(preset=spec.train.stage_preset, out=str(stage_dir), register_model=False,
                     experiment=experiment, progress=progress)
        spec = spec.continuing_from(str(stage_dir))
    # 2. A resumable run directory and its MLflow run.
    run = prepare_run(spec, experiment)
    with ended(run.mlflow_run_id):  # FINISHED, or FAILED / KILLED (a later run resumes it)
        # 3. Tokenizer, then training (checkpoints every N steps; resumes after an interruption).
        tokenizer = prepare_tokenizer(run)
        model, info = train_model(run, tokenizer, progress=progress)
        # 4. Evaluate the whole suite, save the model directory, log and register.
        metrics, _ = evaluate_suite(model, tokenizer, suite_specs(spec))
        profile = profile_attention(model, tokenizer, run.mlflow_run_id)
        command = "attnflow train-lm " + " ".join(
            [f"--preset {shlex.quote(preset)}"] + ([f"--out {shlex.quote(out)}"] if out else [])
            + [f"--set {k}={v}" for k, v in extra.items()] + ([f"--corpus {shlex.quote(corpus)}"] if corpus else [])
            + ([f"--corpus-weight {corpus_weight:g}"] if corpus and corpus_weight != 0.2 else []))
        model_dir = save_model(model, tokenizer, run, out, info, metrics, command, profile)
        log_final(run.mlflow_run_id, metrics, info)
        version = None
        if register_model:
            version = register_lm(run.mlflow_run_id, model_dir, f"attnflow.{spec.name}-lm", "champion",
                                     {"attnflow.data_fingerprint": run.data_fingerprint, "attnflow.preset": spec.name,
                                      **{metric_key(f"metric.{k}"): f"{v:.4f}" for k, v in metrics.items()}})
    return {"model_dir": model_dir, "metrics": metrics, "info": info, "mlflow_run_id": run.mlflow_run_id,
            "registered_version": version}


if __name__ == "__main__":
    train_lm()
