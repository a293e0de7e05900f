"""path_patching against an independent hook-based implementation, and its normalisation on a toy circuit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import registry
from components.analyzers.path_patching import _Batch
from tests.helpers.tiny import tiny_model, tokenizer
from tests.helpers.threads import one_thread  # noqa: F401


def reference_patched(model, batch: _Batch, receivers, freeze_mlps: bool) -> tuple[float, float, np.ndarray]:
    """Path patching with forward hooks on the stock model: o_proj inputs (B, T, H*D) and MLP outputs."""
    layers = model.model.layers
    n_heads = model.config.num_attention_heads

    def run(enc, z_fn=None, mlp_fn=None):
        hooks = []
        for layer, block in enumerate(layers):
            if z_fn:
                def pre(_m, args, layer=layer):
                    x = args[0]
                    z = x.view(*x.shape[:2], n_heads, -1).clone()  # (B, T, H, D)
                    return (z_fn(layer, z).reshape(x.shape),)
                hooks.append(block.self_attn.o_proj.register_forward_pre_hook(pre))
            if mlp_fn:
                hooks.append(block.mlp.register_forward_hook(lambda _m, _a, out, layer=layer: mlp_fn(layer, out)))
        try:
            logits = model(**enc).logits[:, -1].double()
        finally:
            for h in hooks:
                h.remove()
        a = batch.answers
        return float((logits.gather(1, a[:, :1]) - logits.gather(1, a[:, 1:])).mean())

    cache = {"clean": {}, "corrupt": {}, "mlp": {}}

    def record(run_name):
        def fn(layer, z):
            cache[run_name][layer] = z[:, -1].clone()
            return z
        return fn

    def record_mlp(layer, out):
        cache["mlp"][layer] = out[:, -1].clone()

    with torch.no_grad():
        clean = run(batch.clean, record("clean"), record_mlp)
        corrupt = run(batch.corrupt, record("corrupt"))
        patched = np.full((len(layers), n_heads), np.nan)
        last = min([layer for layer, _ in receivers], default=len(layers))
        for sl in range(last):
            for sh in range(n_heads):
                fresh = {}

                def freeze(layer, z, sl=sl, sh=sh, fresh=fresh):
                    fresh[layer] = z[:, -1].clone()
                    z[:, -1] = cache["clean"][layer]
                    if layer == sl:
                        z[:, -1, sh] = cache["corrupt"][layer][:, sh]
                    return z

                def freeze_mlp(layer, out):
                    out = out.clone()
                    out[:, -1] = cache["mlp"][layer]
                    return out

                value = run(batch.clean, freeze, freeze_mlp if freeze_mlps else None)
                if receivers:
                    def patch(layer, z, fresh=fresh):
                        for rl, rh in receivers:
                            if rl == layer:
                                z[:, -1, rh] = fresh[layer][:, rh]
                        return z
                    value = run(batch.clean, patch)
                patched[sl, sh] = value
    return clean, corrupt, patched


@pytest.mark.parametrize("params", [{"receivers": "none"}, {"receivers": "1:0,1:3", "freeze_mlps": "true"},
                                    {"prompts": "colored_objects", "receivers": "1:2"}])
def test_path_patching_matches_hook_reference(params):
    model, tok = tiny_model("llama"), tokenizer()
    pp = registry.get("path_patching").create({"n_prompts": "6", "batch_size": "4", **params})
    rows = pp.build()
    res = pp.analyze(model, tok, rows)
    clean, corrupt, patched = reference_patched(model, _Batch(tok, rows, torch.device("cpu")),
                                                pp.receivers.expand(2, 4), pp.freeze_mlps)
    assert res.metrics["clean_logit_diff"] == pytest.approx(clean, abs=1e-5)
    assert res.metrics["corrupt_logit_diff"] == pytest.approx(corrupt, abs=1e-5)
    assert np.array_equal(np.isnan(res.arrays["patched_logit_diff"]), np.isnan(patched))
    assert np.nanmax(np.abs(res.arrays["patched_logit_diff"] - patched)) <= 1e-5
    want = (patched - clean) / (corrupt - clean)
    assert np.nanmax(np.abs(res.arrays["effect"] - want)) <= 1e-3 * max(1.0, np.nanmax(np.abs(want)))


def toy_circuit():
    """Only head (1, 2) writes to the residual stream; MLPs are off. The prompts' last tokens agree, so the
    whole corruption effect flows through that one head."""
    model = tiny_model("llama")
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            w = block.self_attn.o_proj.weight  # (hidden, H * D)
            d = w.shape[1] // 4
            keep = w[:, 2 * d : 3 * d].clone()
            w.zero_()
            if layer == 1:
                w[:, 2 * d : 3 * d] = keep
            block.mlp.down_proj.weight.zero_()
    return model


def test_toy_circuit_normalisation_and_sign():
    model, tok = toy_circuit(), tokenizer()
    pp = registry.get("path_patching").create({"n_prompts": "8"})
    res = pp.analyze(model, tok, pp.build())
    effect = res.arrays["effect"]
    assert effect[1, 2] == pytest.approx(1.0, abs=1e-4)  # carries the whole effect, in the corrupt direction
    others = np.delete(effect.ravel(), 1 * 4 + 2)
    assert np.abs(others).max() <= 1e-4  # heads that write nothing have no effect
    assert res.heads["top_senders"][0] == (1, 2)
    to_receiver = pp.replace(receivers=registry.get("path_patching").cls.from_params({"receivers": "1:2"}).receivers)
    res2 = to_receiver.analyze(model, tok, pp.build())
    assert np.isnan(res2.arrays["effect"][1]).all()  # heads in the receiver's layer cannot send to it
    assert np.abs(res2.arrays["effect"][0]).max() <= 1e-4  # layer-0 heads write nothing


def test_identical_clean_and_corrupt_is_an_error(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"clean": "Tom gave a ball to", "corrupt": "Tom gave a ball to", "answer": " Lily", '
                 '"distractor": " Tom"}\n')
    pp = registry.get("path_patching").create({"prompts": str(f)})
    with pytest.raises(ValueError, match="same logit difference"):
        pp.analyze(tiny_model("llama"), tokenizer(), pp.build())
    with pytest.raises(ValueError, match="layer 0 have no sender"):
        registry.get("path_patching").create({"receivers": "0:1"}).check_model(tiny_model("llama").config)
