"""A small, resumable causal-LM training loop (nanoGPT-style, for CPU-scale models).

AdamW (decoupled weight decay on matrices only), linear warm-up then cosine decay to ``min_lr_ratio * lr``,
gradient clipping, fp32 or bf16 autocast, a checkpoint every N steps and resume from the newest complete one.

Checkpoints are directories ``step-000123/`` holding ``model.safetensors``, ``optimizer.pt`` (loaded with
``weights_only=True``) and ``state.json``; each is written under a temporary name and renamed, so a crash never
leaves a half-written checkpoint that looks complete. A model with frozen parameters (LoRA) checkpoints only its
trainable ones (``trainable.safetensors``). Batches come from ``batch_fn(step)``, deterministic in the
step, so a resumed run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm

from components.kernels.base import RNG_LOCK, auxiliary_loss
from components.lm.preset import TrainSpec

LogFn = Callable[[int, dict[str, float]], None]


def lr_at(step: int, spec: TrainSpec) -> float:
    """1) linear warm-up, 2) cosine decay from lr to min_lr_ratio * lr at the last step."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    floor = spec.lr * spec.min_lr_ratio
    return floor + 0.5 * (spec.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    # AdamW decays by lr_t * wd; "independent" decay (Wortsman et al.) is (lr_t / lr) * wd, i.e. wd / lr in AdamW terms
    wd = spec.weight_decay / spec.lr if spec.independent_weight_decay else spec.weight_decay
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(spec.beta1, spec.beta2),
    )


def z_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean(log^2 Z) over the positions that predict a label (Z = sum of exp(logits))."""
    log_z = torch.logsumexp(logits[:, :-1].float(), dim=-1)  # (B, T-1)
    keep = labels[:, 1:] != -100  # (B, T-1)
    return (log_z.square() * keep).sum() / keep.sum().clamp_min(1)


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    losses: list[tuple[int, float]]
    seconds: float
    tokens: int


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in Path(ckpt_dir).glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    extra: dict[str, Any], keep: int) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:07d}-", dir=ckpt_dir))
    try:
        if partial(model):  # LoRA: only what trains (the frozen base comes from train.init_from again)
            save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      str(tmp / "trainable.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.json").is_file())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def partial(model: torch.nn.Module) -> bool:
    """Whether some parameters are frozen (LoRA): checkpoints then hold the trainable parameters only."""
    return any(not p.requires_grad for p in model.parameters())


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    if partial(model):
        state = load_file(str(path / "trainable.safetensors"))
        want = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != want:
            raise ValueError(f"{path}: the checkpoint's trainable parameters differ from the model's "
                             f"(e.g. {sorted(set(state) ^ want)[:3]}): another LoRA configuration?")
        model.load_state_dict(state, strict=False)
    else:
        load_model(model, str(path / "model.safetensors"), strict=True)
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


def train(
    model: torch.nn.Module,
    batch_fn: Callable[[int], dict[str, torch.Tensor]],
    spec: TrainSpec,
    ckpt_dir: Path,
    *,
    on_log: LogFn | None = None,
    on_eval: Callable[[int], dict[str, float]] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``spec.steps`` steps, resuming from the newest checkpoint in ``ckpt_dir``."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    with RNG_LOCK:
        torch.manual_seed(spec.seed)
    opt = make_optimizer(model, spec)
    start = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        start = load_checkpoint(last, model, opt)["step"]
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.dtype == "bfloat16")
    losses: list[tuple[int, float]] = []
    tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=spec.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    window: list[float] = []
    for step in range(start, spec.steps):
        batch = batch_fn(step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        with autocast:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        loss = out.loss  # the language-modelling loss (what is logged); extra terms only enter the gradient
        total = loss
        aux = auxiliary_loss(model)  # e.g. MoH load balance
        if aux is not None:
            total = total + aux
        if spec.z_loss:
            total = total + spec.z_loss * z_loss(out.logits, batch["labels"])
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {total.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip) if spec.grad_clip else None
        opt.step()
        n_tok = int(batch["attention_mask"].sum())
        tokens += n_tok
        window.append(loss.item())
        done = step + 1
        if done % spec.log_every == 0 or done == spec.steps:
            mean = sum(window) / len(window)
            losses.append((done, mean))
            rate = tokens / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr_at(step, spec):.2e}", tok_s=f"{rate:,.0f}")
            if on_log:
                metrics = {"loss": mean, "lr": lr_at(step, spec), "tokens_per_s": rate}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                on_log(done, metrics)
            window = []
        if on_eval and (done % spec.eval_every == 0 or done == spec.steps):
            model.eval()
            metrics = on_eval(done)
            model.train()
            if on_log and metrics:
                on_log(done, metrics)
        if done % spec.checkpoint_every == 0 or done == spec.steps:
            save_checkpoint(ckpt_dir, done, model, opt, {"loss": losses[-1][1] if losses else None},
                            spec.keep_checkpoints)
        bar.update(1)
    bar.close()
    model.eval()
    return TrainResult(step=spec.steps, resumed_from=start, losses=losses, seconds=time.perf_counter() - t0,
                       tokens=tokens)
