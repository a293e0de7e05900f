"""GGUF files as models: conversion parity (F32 exact, Q8_0 = the quantized weights), architecture check before any
dequantization, ``.gguf`` paths through ``modeling.resolve``/``load_model`` (converted once, cached by sha256)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from components import gguf, modeling
from infra import model_store
from tests.helpers.gguf import tiny_gguf


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 320, (2, 24), generator=g)


def test_f32_gguf_converts_to_the_same_model(tmp_path):
    path, original = tiny_gguf(tmp_path / "tiny-f32.gguf", quant="F32")
    gguf.convert(path, tmp_path / "out", dtype="float32", progress=lambda _: None)
    converted, tok = modeling.load_model(str(tmp_path / "out"))
    ids = _ids()
    assert torch.equal(_logits(converted, ids), _logits(original, ids))  # q/k permutation undone exactly
    assert tok.decode(tok("the cat sat")["input_ids"]).strip() == "the cat sat"


def test_q8_0_gguf_converts_to_the_quantized_weights(tmp_path):
    """Q8_0 conversion = the original model with every 2-D weight replaced by dequantize(quantize(w))."""
    path, original = tiny_gguf(tmp_path / "tiny-q8.gguf", quant="Q8_0")
    gguf.convert(path, tmp_path / "out", dtype="float32", progress=lambda _: None)
    converted, _ = modeling.load_model(str(tmp_path / "out"))
    reference = type(original)(original.config).eval()
    with torch.no_grad():
        for (name, p), (_, q) in zip(reference.named_parameters(), original.named_parameters()):
            w = q.detach().numpy().astype(np.float32)
            if w.ndim == 2:
                w = dequantize(quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
            p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    ids = _ids(1)
    got, want, exact = _logits(converted, ids), _logits(reference, ids), _logits(original, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # only float rounding of the same weights
    assert (got - exact).abs().max() > 0  # and the quantization did change the model


def test_unsupported_architecture_is_named_before_dequantizing(tmp_path):
    path, _ = tiny_gguf(tmp_path / "odd.gguf", arch="rwkv9")
    seen: list[str] = []
    with pytest.raises(gguf.UnsupportedGgufError, match="'rwkv9'"):
        gguf.convert(path, tmp_path / "out", progress=seen.append)
    assert seen == [] and not (tmp_path / "out").exists()
    with pytest.raises(gguf.UnsupportedGgufError, match="'rwkv9'"):
        modeling.load_config(str(path))


def test_gguf_path_resolves_without_side_effects_and_loads_once(tmp_path, home):
    path, original = tiny_gguf(tmp_path / "my-model.gguf", quant="F32")
    ref = modeling.resolve(str(path))
    assert (ref.kind, ref.name) == ("gguf", "my-model")
    cfg = modeling.load_config(ref)  # metadata only
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads) == (2, 2)
    assert not (home / "cache" / "gguf").exists()
    modeling.load_model(str(path))
    cache = model_store.gguf_cache_dir(model_store.sha256_file(path))
    assert (cache / "model.safetensors").is_file()
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    again, _ = modeling.load_model(str(path))  # reused, not converted again
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp
    assert modeling.model_fingerprint(str(path)) == modeling.model_fingerprint(str(cache))
    ids = _ids(2)
    assert torch.equal(_logits(again, ids), _logits(original, ids))
    assert not list(cache.parent.glob(".*tmp-*"))


def test_missing_gguf_path_is_named(tmp_path):
    with pytest.raises(modeling.ModelNotFoundError, match="GGUF file .*nope.gguf.* does not exist"):
        modeling.resolve(str(tmp_path / "nope.gguf"))
