"""Tasks of the train-vlm flow: validate the request (config only), build the LLaVA around the language model, run
one training stage (held-out loss before and after), save the model with its card, and log curves to MLflow.
The recipe itself is components/vlm_train.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NO_CACHE

from components import vlm_adapters, vlm_train
from infra.settings import settings
from tasks import plots, tracking
from tasks.models import LoadedModel, checked_config


@task(cache_policy=NO_CACHE, task_run_name="validate train-vlm request")
def plan_train_vlm(lm: str, out: str, image_size: int, patch_size: int, vision_hidden: int,
                   vision_heads: int, init_from: str = "", adapter: str = "none", adapter_rank: int = 16,
                   wings_layers: str = "") -> str:
    """Check the language model's (or the ``init_from`` VLM's) config, the adapter and the sizes before any weights
    load; returns the output directory."""
    layers = parse_layers(wings_layers)
    if init_from:
        from tasks.vlm import check_vision

        config = check_vision(init_from)
        if config.model_type != "llava":
            raise ValueError(f"--init-from {init_from}: a LLaVA-style model is needed (model_type llava)")
        vlm_adapters.check(adapter, adapter_rank, layers, config.get_text_config().num_hidden_layers)
        if out and Path(out).expanduser().resolve() == Path(init_from).expanduser().resolve():
            raise ValueError("--out must differ from --init-from (the starting model is kept)")
    else:
        config = checked_config(lm)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        vlm_adapters.check(adapter, adapter_rank, layers, getattr(text, "num_hidden_layers", None))
    if not out and (init_from or adapter != "none"):
        raise ValueError("--out is required with --init-from or an adapter (the default folder is demo-vlm's)")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if vision_hidden % vision_heads:
        raise ValueError(f"vision_hidden {vision_hidden} is not a multiple of vision_heads {vision_heads}")
    path = Path(out).expanduser() if out else settings().models_dir / "demo-vlm"
    if path.exists() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise ValueError(f"--out {path} exists and is not a model directory: choose an empty or new folder")
    return str(path)


def parse_layers(text: str) -> tuple[int, ...] | None:
    """``"0,2,5"`` -> (0, 2, 5); empty -> None (every layer)."""
    try:
        return tuple(int(x) for x in text.replace(";", ",").split(",") if x.strip()) or None
    except ValueError:
        raise ValueError(f"--wings-layers {text!r}: give comma-separated layer indices") from None


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="load vlm {init_from}")
def load_start(init_from: str) -> tuple[Any, Any, int]:
    """(model, processor, image size) of an existing LLaVA-style VLM folder (float32)."""
    from tasks.vlm import load_vlm

    loaded = load_vlm.fn(init_from)
    return loaded.model, loaded.tokenizer, int(loaded.model.config.vision_config.image_size)


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="attach adapter {kind}")
def attach_adapter(model: Any, kind: str, rank: int, wings_layers: str, seed: int) -> vlm_adapters.Prepared:
    """Freeze the model and attach the adapter (components/vlm_adapters.py)."""
    prepared = vlm_adapters.prepare(model, kind, rank=rank, layers=parse_layers(wings_layers), seed=seed)
    n = sum(p.numel() for p in prepared.params)
    print(f"adapter {kind}: {n:,} trainable parameters")
    return prepared


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="build llava")
def build(loaded: LoadedModel, image_size: int, patch_size: int, vision_hidden: int, vision_layers: int,
          vision_heads: int, seed: int) -> tuple[Any, Any]:
    """(model, processor): a new vision tower + projector around the loaded language model."""
    model, proc = vlm_train.build_llava(loaded.model, loaded.tokenizer, image_size=image_size, patch_size=patch_size,
                                        vision_hidden=vision_hidden, vision_layers=vision_layers,
                                        vision_heads=vision_heads, seed=seed)
    n = sum(p.numel() for p in vlm_train.trainable(model))
    print(f"built LLaVA around {loaded.name}: {n:,} trainable parameters (vision tower + projector)")
    return model, proc


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="train stage {stage}")
def train_stage(prepared: vlm_adapters.Prepared, processor: Any, stage: str, steps: int, n_scenes: int,
                batch_size: int, lr: float, image_size: int, seed: int,
                mixed_precision: bool = False) -> dict[str, Any]:
    """Train one stage in place; held-out target loss (other scenes, same stage) before and after, loss per step."""
    model, scope = prepared.model, prepared.scope
    rows = vlm_train.stage_rows(stage, seed, n_scenes)
    held = vlm_train.stage_rows(stage, seed + 7919, max(6, n_scenes // 20))[:64]
    start = time.perf_counter()
    before = vlm_train.loss_on(model, processor, held, image_size, scope)
    losses = vlm_train.train_stage(model, processor, rows, steps=steps, batch_size=batch_size, lr=lr,
                                   image_size=image_size, seed=seed, desc=stage,
                                   mixed_precision=mixed_precision, params=prepared.params, scope=scope)
    after = vlm_train.loss_on(model, processor, held, image_size, scope)
    seconds = time.perf_counter() - start
    print(f"{stage}: {len(rows)} rows, {steps} steps, held-out loss {before:.4f} -> {after:.4f} ({seconds:.0f}s)")
    return {"stage": stage, "losses": losses, "held_out_before": before, "held_out_after": after,
            "seconds": seconds, "rows": len(rows)}


@task(cache_policy=NO_CACHE, task_run_name="save {out}")
def save(prepared: vlm_adapters.Prepared, processor: Any, out: str, card: dict[str, Any]) -> str:
    """The model (LoRA merged) with processor and card; a Wings adapter in ``<out>/wings``."""
    path = str(vlm_train.save(vlm_adapters.finish(prepared), processor, out, card))
    extra = vlm_adapters.save_extra(prepared, out)
    if extra:
        print(f"wings adapter: {extra}; evaluate it with --components \"baseline,wings(adapter={extra})\"")
    return path


@task(**tracking.RETRY, task_run_name="log train-vlm")
def log_training(run_id: str, stages: list[dict[str, Any]]) -> None:
    """Loss per step and held-out losses per stage as metrics, and a loss-curve figure."""
    c = tracking.client()
    metrics = [Metric(f"{s['stage']}/loss", v, 0, i) for s in stages for i, v in enumerate(s["losses"])]
    metrics += [Metric(f"{s['stage']}/held_out_{k}", s[f"held_out_{k}"], 0, 0) for s in stages
                for k in ("before", "after")]
    metrics += [Metric(f"{s['stage']}/seconds", s["seconds"], 0, 0) for s in stages]
    for i in range(0, len(metrics), 900):
        c.log_batch(run_id, metrics=metrics[i : i + 900])
    fig, ax = plots.plt.subplots(figsize=(6, 3.5))
    offset = 0
    for s in stages:
        ax.plot(range(offset, offset + len(s["losses"])), s["losses"], label=s["stage"])
        offset += len(s["losses"])
    ax.set_xlabel("step")
    ax.set_ylabel("target-token loss")
    ax.legend()
    fig.tight_layout()
    c.log_figure(run_id, fig, "loss.png")
    plots.close(fig)
