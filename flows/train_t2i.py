"""train-t2i: the demo-t2i recipe, a small text-conditional pixel-space diffusion model on generated shape scenes.

validate (sizes, rates, output folder) -> build UNet + CLIP text encoder + word-level tokenizer -> train (v or noise
prediction, CFG dropout) with held-out loss before and after -> sample unseen captions and score them with the shape
detector -> save the model folder (components/diffusion/pipeline.py) -> MLflow run with loss per step, loss figure
and sample grid. Recipe: components/diffusion/t2i_train.py.
"""

from __future__ import annotations

from typing import Any, Literal

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import BatchSize, Experiment, Positive
from tasks.runs import tracked_run
from tasks.train_t2i import build, log_training, plan_train_t2i, sample_and_score, save, train


@flow(name="train-t2i", log_prints=True)
def train_t2i(
    out: str = "",
    image_size: Positive = 32,
    channels: list[int] = [16, 32, 64],  # noqa: B006  (Prefect parameters are values, never mutated)
    layers_per_block: Positive = 1,
    text_hidden: Positive = 64,
    text_layers: Positive = 2,
    heads: Positive = 4,
    prediction: Literal["v_prediction", "epsilon"] = "v_prediction",
    steps: Positive = 4000,
    n_scenes: Positive = 20000,
    batch_size: BatchSize = 32,
    lr: float = 2e-3,
    cfg_dropout: float = 0.1,
    ema_decay: float = 0.999,
    mixed_precision: bool = False,
    sample_prompts: Positive = 16,
    sample_steps: Positive = 25,
    cfg_scale: float = 3.0,
    seed: int = 0,
    experiment: Experiment = "train-t2i",
) -> dict[str, Any]:
    """Train demo-t2i: a UNet2DConditionModel on RGB pixels and a CLIP text encoder, jointly from scratch.

    Args:
        out: Output model folder (default ATTNFLOW_HOME/models/demo-t2i).
        image_size: Side of the rendered scenes and of the UNet's input, in pixels.
        channels: UNet channels per resolution (cross-attention in all but the first, and in the mid block).
        layers_per_block: ResNet (+ attention) layers per UNet block.
        text_hidden: Hidden size of the text encoder (= the UNet's cross-attention dimension).
        text_layers: Layers of the text encoder.
        heads: Attention heads of the text encoder and of every UNet attention layer.
        prediction: What the UNet predicts: the velocity v (default) or the noise eps (DDPM).
        steps: Optimizer steps.
        n_scenes: Generated training scenes (rendered once).
        batch_size: Images per step.
        lr: Peak AdamW learning rate (5 % linear warm-up, cosine decay).
        cfg_dropout: Probability of training on the empty caption (classifier-free guidance).
        ema_decay: EMA decay of the weights (0 = off; the EMA weights are saved).
        mixed_precision: Forward and backward under bfloat16 autocast (weights and optimizer stay float32).
        sample_prompts: Unseen captions sampled and scored with the shape detector after training.
        sample_steps: DDIM steps of those samples.
        cfg_scale: Classifier-free guidance scale of those samples.
        seed: Seed of the weights, the data and the samples.
        experiment: MLflow experiment name.
    """
    # 1. Validate the request before any compute.
    out_dir = plan_train_t2i(out, image_size, list(channels), text_hidden, heads, cfg_dropout, ema_decay, lr,
                             sample_steps)
    params = {"image_size": image_size, "channels": list(channels), "layers_per_block": layers_per_block,
              "text_hidden": text_hidden, "text_layers": text_layers, "heads": heads, "prediction": prediction,
              "steps": steps,
              "n_scenes": n_scenes, "batch_size": batch_size, "lr": lr, "cfg_dropout": cfg_dropout,
              "ema_decay": ema_decay, "mixed_precision": mixed_precision, "sample_steps": sample_steps,
              "cfg_scale": cfg_scale, "seed": seed}
    # 2. Build the model.
    model = build(image_size, list(channels), text_hidden, text_layers, heads, layers_per_block, seed, prediction)
    with tracked_run(experiment, "train-t2i demo-t2i", tags={"attnflow.kind": "train-t2i"}, params=params) as run_id:
        # 3. Train, held-out loss before and after.
        trained = train(model, steps, n_scenes, batch_size, lr, cfg_dropout, ema_decay, mixed_precision, seed)
        # 4. Sample unseen captions and score them with the shape detector.
        samples = sample_and_score(model, sample_prompts, sample_steps, cfg_scale, seed)
        # 5. Save the model folder with its card; log curves and figures.
        card = {**params, "held_out_before": trained["held_out_before"], "held_out_after": trained["held_out_after"],
                "train_seconds": trained["seconds"], "sample_scores": samples["scores"], "mlflow_run": run_id}
        path = save(model, out_dir, card)
        log_training(run_id, trained, samples)
    print(f"saved {path}")
    return {"model_dir": path, "run_id": run_id, "held_out_before": trained["held_out_before"],
            "held_out_after": trained["held_out_after"], "seconds": trained["seconds"],
            "sample_scores": samples["scores"]}


if __name__ == "__main__":
    train_t2i()
