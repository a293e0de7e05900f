"""train-vlm: a LLaVA-style VLM around an existing language model, trained on generated scenes (the demo-vlm recipe).

validate (config only) -> load the language model -> build vision tower + projector -> stage 1 align (captions)
-> stage 2 instruct (scene questions, absent objects included) -> save safetensors + processor + model card ->
MLflow run with loss curves and held-out losses. The language model stays frozen (components/vlm_train.py).
``--init-from`` starts from an existing VLM instead, and ``--adapter lora|wings`` trains only LoRA on the language
model or Wings learners (components/vlm_adapters.py), to measure text-only forgetting.
"""

from __future__ import annotations

from typing import Any, Literal

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Count, Experiment, ModelName, Positive
from tasks.models import load_model
from tasks.runs import tracked_run
from tasks.train_vlm import attach_adapter, build, load_start, log_training, plan_train_vlm, save, train_stage


@flow(name="train-vlm", log_prints=True)
def train_vlm(
    lm: ModelName = "smollm2-135m",
    out: str = "",
    image_size: Positive = 48,
    patch_size: Positive = 16,
    vision_hidden: Positive = 192,
    vision_layers: Positive = 4,
    vision_heads: Positive = 4,
    align_steps: Count = 150,
    instruct_steps: Positive = 600,
    n_scenes: Positive = 3000,
    batch_size: BatchSize = 16,
    lr: float = 1e-3,
    mixed_precision: bool = True,
    seed: int = 0,
    init_from: str = "",
    adapter: Literal["none", "lora", "wings"] = "none",
    adapter_rank: Positive = 16,
    wings_layers: str = "",
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
        seed: Seed of the vision weights, the adapters and the data.
        init_from: Start from this LLaVA-style VLM folder instead of building one (the vision sizes are then read
            from it); with --align-steps 0 only the instruct stage runs.
        adapter: What trains: none (vision tower + projector), lora (LoRA on the language model's attention
            projections, merged before saving) or wings (Wings learners, saved to <out>/wings); with an adapter,
            everything else stays frozen.
        adapter_rank: Rank of the LoRA or Wings low-rank matrices.
        wings_layers: Comma-separated decoder layers that get Wings learners (default every layer).
        experiment: MLflow experiment name.
    """
    # 1. Validate the language model or starting VLM (config only), the adapter, the sizes and the output folder.
    out_dir = plan_train_vlm(lm, out, image_size, patch_size, vision_hidden, vision_heads, init_from, adapter,
                             adapter_rank, wings_layers)
    # 2. Load the starting VLM, or load the language model and build the LLaVA around it.
    if init_from:
        model, processor, image_size = load_start(init_from)
        name = init_from
    else:
        loaded = load_model(lm)
        model, processor = build(loaded, image_size, patch_size, vision_hidden, vision_layers, vision_heads, seed)
        name = loaded.name
    # 3. Choose what trains: vision tower + projector, or an adapter on the frozen model.
    prepared = attach_adapter(model, adapter, adapter_rank, wings_layers, seed)
    params = {"lm": lm, "image_size": image_size, "patch_size": patch_size, "vision_hidden": vision_hidden,
              "vision_layers": vision_layers, "vision_heads": vision_heads, "align_steps": align_steps,
              "instruct_steps": instruct_steps, "n_scenes": n_scenes, "batch_size": batch_size, "lr": lr,
              "mixed_precision": mixed_precision, "seed": seed, "init_from": init_from, "adapter": adapter,
              "adapter_rank": adapter_rank, "wings_layers": wings_layers}
    with tracked_run(experiment, f"train-vlm {name}", tags={"attnflow.kind": "train-vlm", "attnflow.model": name},
                     params=params) as run_id:
        # 4. Stage 1 (align) then stage 2 (instruct); a stage with 0 steps is skipped.
        stages = [train_stage(prepared, processor, stage, steps, n_scenes, batch_size, lr, image_size, seed,
                              mixed_precision)
                  for stage, steps in (("align", align_steps), ("instruct", instruct_steps)) if steps > 0]
        # 5. Save weights (LoRA merged), processor, model card and a Wings adapter; log the curves.
        card = {**params, "stages": [{k: v for k, v in s.items() if k != "losses"} for s in stages],
                "mlflow_run": run_id}
        path = save(prepared, processor, out_dir, card)
        log_training(run_id, stages)
    print(f"saved {path}; evaluate it with: attnflow vlm-eval --model {path}")
    return {"model_dir": path, "run_id": run_id, "stages": card["stages"]}


if __name__ == "__main__":
    train_vlm()
