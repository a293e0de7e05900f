"""train-lm with the sinklora preset end to end on a tiny random Llama: SF-Attn + LoRA + position interpolation
from a pretrained directory, adapter-only checkpoints, a stock merged model directory at the end."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from flows.train_lm import train_lm
from tests.helpers.tiny import save_tiny


def test_sinklora_preset_fine_tunes_a_pretrained_directory(tmp_path):
    src = save_tiny(tmp_path / "src", "llama")
    out = train_lm(preset="sinklora", out=str(tmp_path / "lm"), register_model=False, progress=False,
                   overrides={"train.init_from": str(src), "model.context": 64, "train.steps": 4,
                              "train.batch_size": 2, "train.checkpoint_every": 2, "train.lora.r": 4})
    model = AutoModelForCausalLM.from_pretrained(out["model_dir"], dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model.config, "attnflow_kernel")
    assert model.config.rope_parameters["rope_type"] == "linear" and model.config.rope_parameters["factor"] == 2.0
    assert not any("lora" in k for k in model.state_dict())
    base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    changed = {k.rsplit(".", 2)[-2] for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= changed and "gate_proj" not in changed  # merged adapters
    card = (tmp_path / "lm" / "README.md").read_text()
    assert "LoRA (merged into the weights)" in card and "sf_attn(ratio=0.25, n_sink=4)" in card
    info = json.loads((tmp_path / "lm" / "training.json").read_text())["train"]
    assert 0 < info["n_trainable"] < info["n_params"] / 5
    assert "perplexity(max_tokens=8000)/ppl" in out["metrics"]
