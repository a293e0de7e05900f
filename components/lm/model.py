"""Build a Llama-architecture causal LM from an LM preset (or load the model ``train.init_from`` names) and save it as a
Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.kernels.base import RNG_LOCK, install
from components.lm.preset import ModelSpec, TrainSpec


def llama_config(spec: ModelSpec, tokenizer: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.context, rope_parameters=rope(spec.rope_theta, spec.rope_scaling),
        tie_word_embeddings=spec.tie_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def rope(theta: float, scaling: float) -> dict[str, Any]:
    """transformers' rope_parameters: default RoPE, or linear position interpolation by ``scaling`` (> 1)."""
    if scaling == 1.0:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": "linear", "factor": float(scaling), "rope_theta": theta}


def build_model(spec: ModelSpec, tokenizer: Any, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised model (deterministic for the seed, also when other threads build models), with its
    attention kernel installed when the spec names one."""
    implementation, kernel = spec.kernel()
    config = llama_config(spec, tokenizer)
    with RNG_LOCK:
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(config, attn_implementation=implementation)
        if kernel is not None:
            install(model, kernel, spec.qk_layernorm)
    return model


def init_model(spec: ModelSpec, tokenizer: Any, model_dir: Path, seed: int = 0) -> torch.nn.Module:
    """The model training continues from (``train.init_from``).

    A directory written by train-lm (it has ``training.json``) is a stage of the same preset: the preset's model is
    built and the weights loaded with exactly matching shapes. Any other model directory (a pretrained checkpoint:
    SmolLM2, Gemma-3, ...) keeps its own architecture, loaded in float32 (``train.dtype=bfloat16`` autocasts on top);
    the preset's model section is then ignored except ``rope_scaling`` (linear position interpolation applied to the
    checkpoint's RoPE) and ``attention``, which must be ``sdpa``, ``eager`` or a
    stateless kernel (``sf_attn``: no parameters, installed on top; kernels with parameters are built for the
    preset's Llama architecture)."""
    if (model_dir / "training.json").is_file():
        model = build_model(spec, tokenizer, seed=seed)
        load_weights(model, model_dir)
        return model
    implementation, kernel = spec.kernel()
    if (kernel is not None and not kernel.stateless) or spec.qk_layernorm:
        raise ValueError(f"train.init_from={str(model_dir)!r} is a pretrained model: model.attention must be sdpa, "
                         f"eager or a kernel without parameters (sf_attn), and model.qk_layernorm false (got "
                         f"{spec.attention!r}, {spec.qk_layernorm})")
    model = load_pretrained(model_dir, implementation, spec.rope_scaling)
    if kernel is not None:
        install(model, kernel)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens, the model embeds only "
                         f"{model.get_input_embeddings().num_embeddings}")
    return model


def prepare_training(model: torch.nn.Module, spec: TrainSpec) -> torch.nn.Module:
    """The model to train: with LoRA adapters when ``train.lora`` is set (checked against the model first)."""
    if spec.lora is None:
        return model
    from components.lm import lora

    return lora.wrap(model, spec.lora)


def finish_training(model: torch.nn.Module) -> torch.nn.Module:
    """The model to evaluate and save: LoRA adapters merged into the weights, training-time kernels removed."""
    from components.kernels.base import uninstall
    from components.lm import lora

    model = lora.merged(model)
    kernel = getattr(model, "_attnflow_kernel", None)
    if kernel is not None and kernel.stateless and getattr(kernel, "train_only", False):
        uninstall(model)
    return model.eval()


def load_pretrained(model_dir: Path, implementation: str = "sdpa", rope_scaling: float = 1.0) -> torch.nn.Module:
    """A pretrained checkpoint in float32; ``rope_scaling`` > 1 adds linear position interpolation (positions /
    factor, LongLoRA's recipe) to its RoPE and multiplies ``max_position_embeddings`` by the factor."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if rope_scaling != 1.0:
        text = config.get_text_config()
        params = dict(getattr(text, "rope_parameters", None) or {})
        if params.get("rope_type", "default") != "default" or "rope_theta" not in params:
            raise ValueError(f"model.rope_scaling: {model_dir} has no plain RoPE to interpolate ({params})")
        text.rope_parameters = rope(params["rope_theta"], rope_scaling)
        text.max_position_embeddings = int(text.max_position_embeddings * rope_scaling)
    return AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32,
                                                attn_implementation=implementation)


def describe(model: torch.nn.Module) -> str:
    """One line for model cards: '30-layer LlamaForCausalLM (hidden 576, 9 query / 3 KV heads)'."""
    c = model.config
    return (f"{c.num_hidden_layers}-layer {type(model).__name__} (hidden {c.hidden_size}, {c.num_attention_heads} "
            f"query / {c.num_key_value_heads} KV heads)")


@torch.no_grad()
def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Mean next-token loss of ``model`` on one training batch (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    model.train(was_training)
    return float(out.loss)


def save_model_dir(model: torch.nn.Module, tokenizer: Any, out_dir: Path, card: str) -> Path:
    """model.safetensors + config + tokenizer + README.md model card; loadable with from_pretrained."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(card)
    return out_dir


def load_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Initialise ``model`` from ``model_dir/model.safetensors`` (safetensors only; shapes must match exactly)."""
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    mine = model.state_dict()
    bad = [k for k in state if k in mine and state[k].shape != mine[k].shape]
    if bad or set(state) - set(mine):
        raise ValueError(f"{model_dir} does not match the preset's model: shapes differ for {bad[:3]}, "
                         f"unexpected {sorted(set(state) - set(mine))[:3]}")
    missing = model.load_state_dict(state, strict=False).missing_keys
    if [k for k in missing if not (model.config.tie_word_embeddings and k == "lm_head.weight")]:
        raise ValueError(f"{model_dir} lacks weights for {missing[:3]}")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
