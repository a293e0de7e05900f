"""sink_metric against an independent eager-attention computation, a planted sink, and short-input handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import registry
from components.base import ParamError
from tests.helpers.tiny import tiny_model, tokenizer
from tests.helpers.threads import one_thread  # noqa: F401


def reference_alpha(model, ids: torch.Tensor) -> np.ndarray:
    """alpha_k per (sample, layer, head, key) from stock eager attention, by the paper's sum."""
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = torch.stack(model(input_ids=ids, output_attentions=True).attentions, 1).double()  # (N, L, H, T, T)
    finally:
        model.set_attn_implementation(prev)
    t = ids.shape[1]
    out = np.zeros(att.shape[:4])
    for k in range(t):
        out[..., k] = (att[..., k:, k].sum(-1) / (t - k)).numpy()
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sink_metric_matches_eager_reference(family):
    model, tok = tiny_model(family), tokenizer()
    sm = registry.get("sink_metric").create({"n_samples": "5", "n_tokens": "20", "batch_size": "2"})
    rows = sm.build()
    res = sm.analyze(model, tok, rows)
    ref = reference_alpha(model, sm.token_ids(tok, rows))  # (N, L, H, T)
    assert np.abs(res.arrays["alpha_mean"] - ref.mean(0)).max() <= 1e-5
    assert np.abs(res.arrays["alpha_first"] - ref[..., 0].mean(0)).max() <= 1e-5
    want_rates = (ref > 0.3).mean(axis=(0, 1, 2)) * 100
    assert np.allclose(res.arrays["sink_rate_by_key"], want_rates)
    assert res.metrics["sink_1"] == pytest.approx(want_rates[0])
    assert res.metrics["attention_first_layer1"] == pytest.approx(ref[:, 1, :, 0].mean(), abs=1e-6)


def test_planted_sink_is_found():
    """A head forced to put (almost) all attention on the first token is a sink head; Sink_1 counts it."""
    model, tok = tiny_model("llama"), tokenizer()
    sm = registry.get("sink_metric").create({"n_samples": "4", "n_tokens": "24"})
    rows = sm.build()
    plain = sm.analyze(model, tok, rows)
    with registry.get("zerotuning").create({"gamma": "1e9", "heads": "1:2"}).applied(model):
        planted = sm.analyze(model, tok, rows)
    assert planted.arrays["alpha_first"][1, 2] > 0.999
    assert (1, 2) in planted.heads["sink_heads"] and (1, 2) not in plain.heads["sink_heads"]
    assert planted.metrics["sink_1"] == pytest.approx(plain.metrics["sink_1"] + 100 / 8)


def test_short_inputs_are_rejected_or_skipped(tmp_path):
    model, tok = tiny_model("llama"), tokenizer()
    f = tmp_path / "probe.txt"
    f.write_text("Tom went to the park with a red ball and a blue kite and a big cake.\n\nShort one.\n")
    sm = registry.get("sink_metric").create({"source": str(f), "n_tokens": "16"})
    with pytest.raises(ParamError, match=r"1 of 2 probe texts are shorter than n_tokens=16 tokens \(sample 1"):
        sm.analyze(model, tok, sm.build())
    res = sm.replace(short="skip").analyze(model, tok, sm.build())
    assert res.metrics["n_samples"] == 1
