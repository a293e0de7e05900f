"""Adapters for a training stage on top of a LLaVA-style VLM (components/vlm_train.py): what trains, in which scope,
and what is saved. Used by train-vlm's ``--adapter`` option to compare text-only forgetting (Wings' claim).

- ``none``: the vision tower and the projector train (the demo-vlm recipe); the language model stays frozen.
- ``lora``: LoRA (Hu et al., arXiv:2106.09685, through peft) on the language model's q/k/v/o projections only
  (the vision tower's projections are excluded by name); vision tower, projector and LM weights frozen. The
  adapters are merged into the weights before saving (a stock LLaVA folder). This is the LLaVA stage-2 style of
  tuning the LM, the "forgetting" side of the comparison.
- ``wings``: Wings learners (components/patches/wings.py) on the chosen layers, everything else frozen; the forward
  runs inside the ``wings`` patch scope; the learners are saved as an adapter folder ``<out>/wings`` next to the
  unchanged model.

Defaults: rank 16 for both (LoRA alpha = 2 x rank, no dropout); Wings on every layer.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from components.base import ParamError

ADAPTERS = ("none", "lora", "wings")
LM_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


@dataclass
class Prepared:
    """A model ready for a stage: ``model`` (the one to call; a peft wrapper for LoRA), the ``params`` that train,
    ``scope()`` entered around every forward, and the ``learners`` (Wings) or None."""

    kind: str
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    scope: Callable[[], ContextManager] = field(default=nullcontext)
    learners: Any = None


def check(kind: str, rank: int, layers: tuple[int, ...] | None, n_layers: int | None = None) -> None:
    """Raise ParamError naming a bad adapter request (before any weights load when ``n_layers`` is known)."""
    if kind not in ADAPTERS:
        raise ParamError(f"adapter {kind!r} is not one of {', '.join(ADAPTERS)}")
    if kind != "none" and rank < 1:
        raise ParamError(f"adapter_rank {rank} must be >= 1")
    if layers is not None and kind == "wings" and n_layers is not None and any(
            not 0 <= i < n_layers for i in layers):
        raise ParamError(f"wings_layers {list(layers)} must lie in [0, {n_layers})")


def prepare(model: torch.nn.Module, kind: str, *, rank: int = 16, layers: tuple[int, ...] | None = None,
            seed: int = 0) -> Prepared:
    """Freeze what must stay fixed and attach the adapter (see the module docstring)."""
    from components import vlm_train

    check(kind, rank, layers, model.config.get_text_config().num_hidden_layers)
    if kind == "none":
        return Prepared(kind, model, vlm_train.trainable(model))
    for p in model.parameters():
        p.requires_grad_(False)
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none",
                                                   target_modules=LM_PROJECTIONS))
        return Prepared(kind, wrapped, [p for p in wrapped.parameters() if p.requires_grad])
    from components.attention.session import applied
    from components.patches.wings import Wings, WingsLearners

    learners = WingsLearners.for_model(model, layers, rank=rank, seed=seed).to(next(model.parameters()).device)
    patch = Wings.of(learners)

    @contextmanager
    def scope():
        with applied(model, patch):
            yield

    return Prepared(kind, model, list(learners.parameters()), scope, learners)


def finish(prepared: Prepared) -> torch.nn.Module:
    """The model to save: LoRA merged into the LM weights; the unchanged model otherwise."""
    if prepared.kind == "lora":
        return prepared.model.merge_and_unload()
    return prepared.model


def save_extra(prepared: Prepared, out: str | Path) -> str | None:
    """Write the Wings adapter to ``<out>/wings``; returns its path (None for other adapters)."""
    if prepared.kind != "wings":
        return None
    return str(prepared.learners.save(Path(out) / "wings"))
