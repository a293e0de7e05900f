"""LoRA fine-tuning (train.lora, components/lm/lora.py) on a tiny random Llama continued from a model directory:
loss goes down and only the adapters change, checkpoints hold the adapters and resume, the merged model saved as
safetensors reproduces the in-memory model, and bad configurations fail before training."""

from __future__ import annotations

import pytest
import torch

from components.base import ParamError
from components.lm import lora
from components.lm.mixture import Mixture
from components.lm.model import batch_loss, finish_training, init_model, prepare_training, save_model_dir
from components.lm.preset import LMPreset, LoRASpec
from components.lm import trainer
from components.lm.trainer import latest_checkpoint
from tests.helpers.tiny import save_tiny, tokenizer

MIXTURE = [{"text": "builtin:stories", "weight": 1.0}]


def preset(src, **train) -> LMPreset:
    data = {"model": {"context": 48, "attention": train.pop("attention", "sdpa")},
            "train": {"init_from": str(src), "steps": 6, "batch_size": 4, "lr": 1e-2, "warmup": 0,
                      "min_lr_ratio": 1.0, "weight_decay": 0.0, "checkpoint_every": 3, "log_every": 1,
                      "eval_every": 100, "threads": 1, **train},
            "mixture": MIXTURE}
    return LMPreset.from_dict("lora-test", data)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("src") / "llama", "llama")


def trained(src, ckpt, **train):
    spec = preset(src, **train)
    mix = Mixture(spec, tokenizer())
    model = prepare_training(init_model(spec.model, tokenizer(), src), spec.train)
    result = trainer.train(model, mix.batch, spec.train, ckpt, progress=False)
    return spec, mix, model, result


@pytest.mark.parametrize("attention", ["sdpa", "sf_attn(group=16, n_sink=2)"])
def test_lora_lowers_the_loss_and_changes_only_the_adapters(src, tmp_path, attention):
    spec = preset(src, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, attention=attention)
    mix = Mixture(spec, tokenizer())
    base = init_model(spec.model, tokenizer(), src)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    fixed = mix.batch(0)
    loss0 = batch_loss(base, fixed)
    model = prepare_training(base, spec.train)
    counts = lora.trainable_summary(model)
    assert 0 < counts["trainable"] < counts["total"] / 10
    trainer.train(model, lambda step: fixed, spec.train, tmp_path / "ckpt", progress=False)
    assert batch_loss(model, fixed) < loss0 - 0.05
    changed = [n for n, p in model.named_parameters() if "lora_" not in n
               and not torch.equal(p, before[n.removeprefix("base_model.model.").replace(".base_layer", "")])]
    assert changed == []
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    ckpt = latest_checkpoint(tmp_path / "ckpt")
    assert (ckpt / "trainable.safetensors").is_file() and not (ckpt / "model.safetensors").exists()


def test_merged_model_saved_as_safetensors_reproduces_the_in_memory_model(src, tmp_path):
    from transformers import AutoModelForCausalLM

    spec, mix, model, _ = trained(src, tmp_path / "ckpt", lora={"r": 4, "target_modules": ["q_proj", "k_proj",
                                                                                              "v_proj", "o_proj"]},
                                  attention="sf_attn(group=16)")
    batch = mix.batch(1)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = save_model_dir(finish_training(model), tokenizer(), tmp_path / "out", "# lora-test\n")
    assert (out / "model.safetensors").is_file() and not list(out.glob("adapter*"))
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not hasattr(loaded.config, "attnflow_kernel")
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (got - want).abs().max() < 1e-4
    base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (base(input_ids=batch["input_ids"]).logits - want).abs().max() > 1e-3  # training did change it


def test_lora_checkpoint_resumes_exactly(src, tmp_path):
    cfg = {"r": 2, "target_modules": ["q_proj", "v_proj"]}
    _, _, straight, _ = trained(src, tmp_path / "a", lora=cfg)
    trained(src, tmp_path / "b", lora=cfg, steps=3)
    _, _, resumed, result = trained(src, tmp_path / "b", lora=cfg)
    assert result.resumed_from == 3
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ValueError, match="trainable parameters differ"):
        trained(src, tmp_path / "b", lora={"r": 2, "target_modules": ["q_proj"]}, steps=9)


def test_bad_lora_configurations_fail_before_training(src):
    with pytest.raises(ParamError, match="train.lora.r"):
        preset(src, lora={"r": 0})
    with pytest.raises(ParamError, match="train.lora.dropout"):
        preset(src, lora={"dropout": 1.0})
    with pytest.raises(ParamError, match="train.lora: unknown key"):
        preset(src, lora={"rank": 4})
    with pytest.raises(ParamError, match="must be a mapping"):
        preset(src, lora=4)
    spec = preset(src, lora={"target_modules": ["q_proj", "query"]})
    model = init_model(spec.model, tokenizer(), src)
    with pytest.raises(ParamError, match=r"query not among the model's linear layers \(down_proj, gate_proj"):
        prepare_training(model, spec.train)
    with pytest.raises(ParamError, match="trainable: embedx matches no parameter"):
        lora.check(model, LoRASpec(trainable=("embedx",)))


def test_lora_override_keys_and_run_keys():
    from registry.specs import load_preset
    from tasks.lm import run_key

    tiny = load_preset("lm/tiny")
    plain = LMPreset.from_dict("tiny", tiny)
    assert plain.train.lora is None
    spec = LMPreset.from_dict("tiny", tiny, {"train.lora.r": "4", "train.lora.target_modules": "q_proj,v_proj"})
    assert spec.train.lora == LoRASpec(r=4, target_modules=("q_proj", "v_proj"))
    assert run_key(spec) != run_key(plain)
    assert run_key(LMPreset.from_dict("tiny", tiny, {"train.lora": "none"})) == run_key(plain)


def test_rope_scaling_interpolates_positions_of_a_pretrained_checkpoint(src, tmp_path):
    """model.rope_scaling = s: position p of the loaded model rotates as position p / s of the checkpoint."""
    from components.lm.model import load_pretrained

    plain, scaled = load_pretrained(src), load_pretrained(src, rope_scaling=2.0)
    assert scaled.config.max_position_embeddings == 2 * plain.config.max_position_embeddings
    x = torch.zeros(1, 8, plain.config.hidden_size)
    cos2, sin2 = scaled.model.rotary_emb(x, torch.arange(0, 16, 2)[None])  # positions 0, 2, ..., 14
    cos1, sin1 = plain.model.rotary_emb(x, torch.arange(8)[None])  # positions 0, 1, ..., 7
    assert torch.allclose(cos2, cos1, atol=1e-6) and torch.allclose(sin2, sin1, atol=1e-6)
    again = save_model_dir(scaled, tokenizer(), tmp_path / "scaled", "# scaled\n")
    with pytest.raises(ValueError, match="no plain RoPE to interpolate"):
        load_pretrained(again, rope_scaling=2.0)
    with pytest.raises(ParamError, match="model.rope_scaling"):
        LMPreset.from_dict("x", {"model": {"rope_scaling": 0.5}, "mixture": MIXTURE})
