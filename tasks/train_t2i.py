"""Tasks of the train-t2i flow: validate the request, build the model, train it (held-out loss before and after),
sample a grid and score it with the shape detector, save the model folder and its card, log curves and figures to
MLflow. The recipe itself is components/diffusion/t2i_train.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.benchmarks import _shape_detect
from components.diffusion import t2i_train
from components.diffusion.pipeline import T2IModel, is_t2i_dir, save_t2i
from infra.settings import settings
from tasks import plots, tracking


@task(cache_policy=NO_CACHE, task_run_name="validate train-t2i request")
def plan_train_t2i(out: str, image_size: int, channels: list[int], text_hidden: int, heads: int,
                   cfg_dropout: float, ema_decay: float, lr: float, sample_steps: int) -> str:
    """Check sizes and rates before any compute; returns the output folder (default ATTNFLOW_HOME/models/demo-t2i)."""
    if len(channels) < 3:
        raise ValueError(f"channels {channels}: need at least 3 resolutions (cross-attention at 2 of them)")
    if any(c < 1 for c in channels) or image_size < 1 or heads < 1 or text_hidden < 1:
        raise ValueError("channels, image_size, text_hidden and heads must be positive")
    if image_size % 2 ** (len(channels) - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{len(channels) - 1} "
                         f"({len(channels)} resolutions)")
    bad = [c for c in [*channels, text_hidden] if c % heads]
    if bad:
        raise ValueError(f"channels and text_hidden must be multiples of heads {heads}: {bad} are not")
    if not 0.0 <= cfg_dropout < 1.0:
        raise ValueError(f"cfg_dropout {cfg_dropout} must be in [0, 1)")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay {ema_decay} must be in [0, 1) (0 = no EMA)")
    if not lr > 0:
        raise ValueError(f"lr {lr} must be positive")
    if sample_steps < 1:
        raise ValueError(f"sample_steps {sample_steps} must be >= 1")
    path = Path(out).expanduser() if out else settings().models_dir / "demo-t2i"
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_t2i_dir(path))):
        raise ValueError(f"--out {path} exists and is not a text-to-image model folder: choose an empty or new folder")
    return str(path)


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="build demo-t2i")
def build(image_size: int, channels: list[int], text_hidden: int, text_layers: int, heads: int,
          layers_per_block: int, seed: int, prediction: str = "v_prediction") -> T2IModel:
    """A random model (UNet, text encoder, word-level tokenizer, DDIM scheduler)."""
    model = t2i_train.build_model(image_size=image_size, channels=channels, text_hidden=text_hidden,
                                  text_layers=text_layers, heads=heads, layers_per_block=layers_per_block, seed=seed,
                                  prediction=prediction)
    n_unet = sum(p.numel() for p in model.unet.parameters())
    n_text = sum(p.numel() for p in model.text_encoder.parameters())
    print(f"built demo-t2i: UNet {n_unet:,} + text encoder {n_text:,} parameters, vocabulary "
          f"{len(t2i_train.VOCAB)} words, prompts of {model.max_length} tokens")
    return model


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="train demo-t2i")
def train(model: T2IModel, steps: int, n_scenes: int, batch_size: int, lr: float, cfg_dropout: float,
          ema_decay: float, mixed_precision: bool, seed: int) -> dict[str, Any]:
    """Train in place; held-out prediction loss (other scenes, fixed noise and timesteps) before and after."""
    held = t2i_train.held_out_set(seed + 7919, 128, model.image_size, model.scheduler.config.num_train_timesteps)
    start = time.perf_counter()
    before = t2i_train.held_out_loss(model, held)
    losses = t2i_train.train(model, steps=steps, n_scenes=n_scenes, batch_size=batch_size, lr=lr,
                             cfg_dropout=cfg_dropout, ema_decay=ema_decay, mixed_precision=mixed_precision, seed=seed)
    after = t2i_train.held_out_loss(model, held)
    seconds = time.perf_counter() - start
    print(f"trained {steps} steps on {n_scenes} scenes: held-out loss {before:.4f} -> {after:.4f} ({seconds:.0f}s)")
    return {"losses": losses, "held_out_before": before, "held_out_after": after, "seconds": seconds}


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="sample and score")
def sample_and_score(model: T2IModel, n_prompts: int, steps: int, cfg_scale: float, seed: int) -> dict[str, Any]:
    """Images for ``n_prompts`` unseen captions and their shape-detector scores (means over prompts)."""
    prompts = t2i_train.sample_prompts(seed, n_prompts)
    start = time.perf_counter()
    images = t2i_train.generate(model, prompts, seed=seed, steps=steps, cfg_scale=cfg_scale)
    seconds = time.perf_counter() - start
    scores = [_shape_detect.score_image(im, p) for p, im in zip(prompts, images)]
    means = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}  # captions always name cells
    print("samples: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items())
          + f" ({seconds / len(prompts):.2f} s/image)")
    return {"prompts": prompts, "images": images, "scores": means, "seconds_per_image": seconds / len(prompts)}


@task(cache_policy=NO_CACHE, task_run_name="save {out}")
def save(model: T2IModel, out: str, card: dict[str, Any]) -> str:
    """Save the model folder (``save_t2i``) with the training card in ``attnflow_t2i.json`` and a README.md."""
    model.meta = {**model.meta, "training": card}
    path = save_t2i(model, out)
    lines = ["# demo-t2i (attnflow train-t2i recipe)", "",
             "A small text-conditional pixel-space diffusion model (UNet2DConditionModel + CLIPTextModel trained "
             "from scratch) on generated coloured-shape scenes; recipe in components/diffusion/t2i_train.py.", "",
             "```json", json.dumps(card, indent=2), "```", ""]
    (path / "README.md").write_text("\n".join(lines))
    return str(path)


def grid_figure(images: list[Any], prompts: list[str], cols: int = 4, title: str = "") -> Any:
    """Images with their prompts (wrapped) as a matplotlib figure."""
    import textwrap

    rows = -(-len(images) // cols)
    fig, axes = plots.plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im, p in zip(axes.ravel(), images, prompts):
        ax.imshow(im, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(p, 26)), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


@task(**tracking.RETRY, task_run_name="log train-t2i")
def log_training(run_id: str, trained: dict[str, Any], samples: dict[str, Any]) -> None:
    """Loss per step, held-out losses, seconds and sample scores as metrics; loss and sample-grid figures."""
    c = tracking.client()
    metrics = [Metric("loss", v, 0, i) for i, v in enumerate(trained["losses"])]
    metrics += [Metric(f"held_out_{k}", trained[f"held_out_{k}"], 0, 0) for k in ("before", "after")]
    metrics += [Metric("train_seconds", trained["seconds"], 0, 0),
                Metric("sample_seconds_per_image", samples["seconds_per_image"], 0, 0)]
    metrics += [Metric(f"samples/{k}", v, 0, 0) for k, v in samples["scores"].items()]
    for i in range(0, len(metrics), 900):
        c.log_batch(run_id, metrics=metrics[i : i + 900])
    fig, ax = plots.plt.subplots(figsize=(6, 3.5))
    ax.plot(trained["losses"], lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training MSE (v or eps)")
    fig.tight_layout()
    c.log_figure(run_id, fig, "loss.png")
    plots.close(fig)
    fig = grid_figure(samples["images"], samples["prompts"])
    c.log_figure(run_id, fig, "samples.png")
    plots.close(fig)
