"""ACT equals its paper formula (sink detection by received attention, beta-scaled sinks, mass given back in
proportion) on a materialised reference (``components.patches.act.reference_probs``): prefill, KV-cache decoding
with running statistics, left padding."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import registry
from components.patches import zerotuning
from components.patches.act import ACT, reference_probs
from tests.helpers.compare import TOL, inputs, patched_vs_reference
from tests.helpers.reference import first_real
from tests.helpers.tiny import FAMILIES, tiny_model


def act_reference(act, n_heads=4):
    """Adapter to ``components.patches.act.reference_probs``: the real queries of each call from the 2-D mask,
    statistics per layer over absolute positions (prompt, then each decode step)."""
    state: dict[int, dict[str, torch.Tensor]] = {}

    def edit(layer, probs, info):
        heads = [h for h in range(n_heads) if (layer, h) in act.heads]
        if not heads or (act.phase == "prefill" and info.q_len != info.kv_len):
            return probs
        b_size, _, q_len, kv_len = probs.shape
        am = info.attention_mask_2d
        off = am.shape[1] - kv_len if am is not None else 0
        past = kv_len - q_len
        real = (am[:, off + past: off + kv_len] != 0) if am is not None else torch.ones(b_size, q_len, dtype=bool)
        return reference_probs(probs, info.visible, real, off, heads, state.setdefault(layer, {}), act.beta,
                               act.tau, act.keep_first_sink)

    return edit


@pytest.mark.parametrize("family, force", [(f, None) for f in FAMILIES] + [("llama", "materialize"),
                                                                            ("mistral", "materialize")])
def test_act_matches_formula(family, force):
    model = tiny_model(family)
    act = registry.get("act").create({"beta": "0.4", "tau": "0.08", "heads": "0:1,1:*"})
    d = patched_vs_reference(model, [act], act_reference(act), force=force, decode_steps=4)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["same_tokens"] == 1.0, d
    assert d["effect"] > 1e-3


def test_act_prefill_phase_and_composition_with_a_bias():
    """phase=prefill leaves decoding alone; with ZeroTuning on the same layer ACT sees the biased probabilities."""
    model = tiny_model("llama")
    act = registry.get("act").create({"beta": "0.2", "tau": "0.05", "heads": "0:*", "phase": "prefill"})
    zt = registry.get("zerotuning").create({"gamma": "3", "heads": "0:*"})
    zt_act = act_reference(act)

    def both(layer, probs, info):
        if layer == 0:
            all_heads = list(range(probs.shape[1]))
            probs = zerotuning.reference_probs(probs, first_real(info, probs.shape[0]), all_heads, 3.0)
        return zt_act(layer, probs, info)

    d = patched_vs_reference(model, [zt, act], both, decode_steps=3)
    assert d["prefill"] <= TOL and d["decode"] <= TOL, d


def test_rows_sum_to_one_and_sinks_shrink():
    model = tiny_model("llama")
    act = registry.get("act").create({"beta": "0.3", "tau": "0.05", "heads": "0:*,1:*"})
    ids, mask = inputs(batch=1, left_pad=0)
    with torch.no_grad():
        plain = model(input_ids=ids, output_attentions=True, attn_implementation="eager").attentions
        model.set_attn_implementation("sdpa")
        with act.applied(model):
            cal = model(input_ids=ids, output_attentions=True).attentions
    for p0, p1 in zip(plain, cal):  # (B, H, T, S)
        torch.testing.assert_close(p1.sum(-1), torch.ones_like(p1.sum(-1)), atol=1e-5, rtol=0)
        alpha = p0.sum(2) / torch.arange(p0.shape[-1], 0, -1)  # (B, H, S) mean received attention (causal)
        sinks = alpha > 0.05
        sinks[..., 0] = False  # key 0 is the first sink of every head here
        assert sinks.any()
        assert torch.allclose(p1[..., sinks[0, :, None, :].expand_as(p1[0])[None]],
                              0.3 * p0[..., sinks[0, :, None, :].expand_as(p0[0])[None]], atol=1e-6)


@pytest.mark.parametrize("q_scale, stable", [(1 / 8, False), (1.0, True)])
def test_fast_prefill_forms(q_scale, stable):
    """Softer attention takes the closed form o' = beta o_S + c (o - o_S); rows giving > 90% of their mass to
    non-first sinks take the second fused pass. Both are exact."""
    model = tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(q_scale)
    act = registry.get("act").create({"beta": "0.4", "tau": "0.1", "heads": "0:1,1:*"})
    with mock.patch.object(ACT, "_non_sink_attention", autospec=True,
                           side_effect=ACT._non_sink_attention) as second:
        d = patched_vs_reference(model, [act], act_reference(act))
    assert d["prefill"] <= TOL and d["effect"] > 1e-3, d
    assert second.called == stable
