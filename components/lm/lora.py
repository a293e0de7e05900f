"""LoRA fine-tuning through ``peft``: wrap a model, check the configuration against it, merge the adapters back.

    W' = W + (alpha / r) * B A,   A (r x in), B (out x r), B initialised to zero (so W' = W at step 0)

Only A and B (plus any ``trainable`` parameters named in the spec) receive gradients. After training the adapters
are merged into the weights (``merge_and_unload``): train-lm saves a stock model directory (``model.safetensors``)
that every model source loads without ``peft``; the adapters alone are not kept.

Based on Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv 2106.09685), reference code
https://github.com/huggingface/peft (``LoraConfig``, ``get_peft_model``), configured as LongLoRA / SinkLoRA
fine-tune (arXiv 2309.12307, 2406.05678; ``fine-tune.py``: r=8, alpha=16, dropout 0.05, q/k/v/o projections,
``trainable_params="embed,norm"``).

Deviations: dropout defaults to 0 and ``trainable`` to nothing (adapters only); set ``dropout: 0.05`` and
``trainable: [embed, norm]`` for LongLoRA's configuration.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from components.base import ParamError
from components.lm.preset import LoRASpec


def linear_names(model: nn.Module) -> list[str]:
    """Distinct last name components of the model's linear layers (what ``target_modules`` may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)})


def check(model: nn.Module, spec: LoRASpec) -> None:
    """Raise ParamError, before any training, when a target module or a trainable name matches nothing."""
    names = linear_names(model)
    unknown = [m for m in spec.target_modules if m not in names]
    if unknown:
        raise ParamError(f"train.lora.target_modules: {', '.join(unknown)} not among the model's linear layers "
                         f"({', '.join(names)})")
    params = [n for n, _ in model.named_parameters()]
    missing = [s for s in spec.trainable if not any(s in n for n in params)]
    if missing:
        raise ParamError(f"train.lora.trainable: {', '.join(missing)} matches no parameter name")


def wrap(model: nn.Module, spec: LoRASpec) -> nn.Module:
    """The model with LoRA adapters (a peft model); base weights frozen except ``spec.trainable`` matches."""
    from peft import LoraConfig, get_peft_model

    check(model, spec)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    for name, p in peft_model.named_parameters():
        if any(s in name for s in spec.trainable):
            p.requires_grad_(True)
    return peft_model


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merged(model: nn.Module) -> nn.Module:
    """The base model with the adapters merged into its weights (a no-op for a model without adapters)."""
    return model.merge_and_unload() if is_lora(model) else model


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """{"trainable": n, "total": n} parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "total": total}

