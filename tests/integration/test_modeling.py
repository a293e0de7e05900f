"""Model references: local directories, the demo alias, hub ids offline, unsupported architectures."""

from __future__ import annotations

import pytest
from transformers import MambaConfig

from components import modeling


def test_load_local_dir(tiny_llama_dir):
    model, tok = modeling.load_model(str(tiny_llama_dir))
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config._attn_implementation == "sdpa" and tok.pad_token is not None
    fp = modeling.model_fingerprint(str(tiny_llama_dir))
    assert fp == modeling.model_fingerprint(str(tiny_llama_dir)) and len(fp) == 16


def test_missing_path_is_named():
    with pytest.raises(modeling.ModelNotFoundError, match="model path './no/such/model' does not exist"):
        modeling.resolve("./no/such/model")


def test_not_a_model_dir(tmp_path):
    with pytest.raises(modeling.ModelNotFoundError, match="not a model directory"):
        modeling.resolve(str(tmp_path))


def test_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = modeling.resolve("some-org/some-model")
    assert ref.kind == "hub"
    with pytest.raises(modeling.ModelNotFoundError, match="neither|not a local model directory"):
        modeling.load_config(ref)


def test_unsupported_architecture_named_before_weights(tmp_path):
    MambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path)
    config = modeling.load_config(str(tmp_path))
    with pytest.raises(modeling.UnsupportedArchitectureError, match="MambaForCausalLM cannot be patched"):
        modeling.check_supported(config)


def test_demo_alias_resolves_when_present():
    try:
        ref = modeling.resolve("demo")
    except modeling.ModelNotFoundError as e:
        assert "train-lm" in str(e)
    else:
        assert ref.kind == "local" and ref.name == "demo-lm"
