"""train-vlm: a LLaVA-style VLM around an existing language model, trained on generated scenes (the demo-vlm recipe).

validate (config only) -> load the language model -> build vision tower + projector -> stage 1 align (captions)
-> stage 2 instruct (scene questions, absent objects included) -> save safetensors + processor + model card ->
MLflow run with loss curves and held-out losses. The language model stays frozen (components/vlm_train.py).
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Experiment, ModelName, Positive
from tasks.models import load_model
from tasks.runs import tracked_run
from tasks.train_vlm import build, log_training, plan_train_vlm, save, train_stage


@flow(name="train-vlm", log_prints=True)
def train_vlm(
    lm: ModelName = "smollm2-135m",
    out: str = "",
    image_size: Positive = 48,
    patch_size: Positive = 16,
    vision_hidden: Positive = 192,
    vision_layers: Positive = 4,
    vision_heads: Positive = 4,
    align_steps: Positive = 150,
    instruct_steps: Positive = 600,
    n_scenes: Positive = 3000,
    batch_size: BatchSize = 16,
    lr: float = 1e-3,
    mixed_precision: bool = True,
    seed: int = 0,
    experiment: Experiment = "train-vlm",
) -> dict[str, Any]:
    """Train a small vision encoder and projector in front of a frozen language model (LLaVA recipe).

    Args:
        lm: The language model: a catalogue name (smollm2-135m), a local directory or a hub id.
        out: Output model directory (default ATTNFLOW_HOME/models/demo-vlm).
        image_size: Side of the rendered scenes and of the vision encoder's input, in pixels.
        patch_size: Vision patch size in pixels (image_size must be a multiple).
        vision_hidden: Hidden size of the new CLIP-style vision encoder.
        vision_layers: Layers of the vision encoder.
        vision_heads: Attention heads of the vision encoder.
        align_steps: Optimizer steps of stage 1 (captions).
        instruct_steps: Optimizer steps of stage 2 (scene questions).
        n_scenes: Generated scenes per stage.
        batch_size: Examples per step.
        lr: Peak AdamW learning rate (cosine decay).
        mixed_precision: Forward and backward under bfloat16 autocast (weights and optimizer stay float32).
        seed: Seed of the vision weights and the data.
        experiment: MLflow experiment name.
    """
    # 1. Validate the language model (config only), the sizes and the output folder.
    out_dir = plan_train_vlm(lm, out, image_size, patch_size, vision_hidden, vision_heads)
    # 2. Load the language model and build the LLaVA around it.
    loaded = load_model(lm)
    model, processor = build(loaded, image_size, patch_size, vision_hidden, vision_layers, vision_heads, seed)
    params = {"lm": lm, "image_size": image_size, "patch_size": patch_size, "vision_hidden": vision_hidden,
              "vision_layers": vision_layers, "vision_heads": vision_heads, "align_steps": align_steps,
              "instruct_steps": instruct_steps, "n_scenes": n_scenes, "batch_size": batch_size, "lr": lr,
              "mixed_precision": mixed_precision, "seed": seed}
    with tracked_run(experiment, f"train-vlm {loaded.name}", tags={"attnflow.kind": "train-vlm",
                                                                   "attnflow.model": loaded.name},
                     params=params) as run_id:
        # 3. Stage 1 (align) then stage 2 (instruct), the language model frozen.
        stages = [train_stage(model, processor, stage, steps, n_scenes, batch_size, lr, image_size, seed,
                                      mixed_precision)
                  for stage, steps in (("align", align_steps), ("instruct", instruct_steps))]
        # 4. Save weights, processor and model card; log the curves.
        card = {**params, "stages": [{k: v for k, v in s.items() if k != "losses"} for s in stages],
                "mlflow_run": run_id}
        path = save(model, processor, out_dir, card)
        log_training(run_id, stages)
    print(f"saved {path}; evaluate it with: attnflow vlm-eval --model {path}")
    return {"model_dir": path, "run_id": run_id, "stages": card["stages"]}


if __name__ == "__main__":
    train_vlm()
