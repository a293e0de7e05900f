"""head_importance against independent per-example computations: masked drops and finite-difference gate gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import registry
from tests.helpers.reference import reference
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model, tokenizer

TASK = "icl_classification(n_classes=6, n_demos=4, n_examples=12)"


def mean_target_logprob(model, tok, row, gate=None) -> float:
    """One row, no padding, float64 reference attention; ``gate`` = {(layer, head): factor} on head outputs."""
    def edit_out(layer, out, info):
        out = out.clone()
        for (gl, gh), g in (gate or {}).items():
            if gl == layer:
                out[:, gh] = out[:, gh] * g
        return out

    p = tok(row["prompt"])["input_ids"]
    f = tok(row["prompt"] + row["target"])["input_ids"]
    with reference(model, edit_out=edit_out), torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([f])).logits[0].double(), -1)  # (T, V)
    return float(np.mean([logp[t - 1, f[t]].item() for t in range(len(p), len(f))]))


def test_drops_match_independent_masking():
    model, tok = tiny_model("llama"), tokenizer()
    hi = registry.get("head_importance").create({"task": TASK, "measures": "acc_drop,logprob_drop", "batch_size": "5"})
    rows = hi.build()
    res = hi.analyze(model, tok, rows)
    bench = registry.get("icl_classification").create({"n_classes": "6", "n_demos": "4", "n_examples": "12"})
    base_lp = [mean_target_logprob(model, tok, r) for r in rows]
    base_acc = bench.evaluate(model, tok, rows).metrics["accuracy"]
    for layer, head in [(0, 1), (1, 3), (1, 0)]:
        lp = [mean_target_logprob(model, tok, r, {(layer, head): 0.0}) for r in rows]
        assert res.arrays["logprob_drop"][layer, head] == pytest.approx(np.mean(base_lp) - np.mean(lp), abs=1e-5)
        with reference(model, edit_out=lambda lay, out, info, layer=layer, head=head:
                       out.index_fill(1, torch.tensor([head]), 0.0) if lay == layer else out):
            acc = bench.evaluate(model, tok, rows).metrics["accuracy"]
        assert res.arrays["acc_drop"][layer, head] == pytest.approx(base_acc - acc)
    assert res.metrics["baseline_metric"] == pytest.approx(base_acc)
    assert np.abs(res.arrays["acc_drop"]).max() > 0 and np.abs(res.arrays["logprob_drop"]).min() > 0


def test_taylor_matches_finite_differences_and_dead_heads_score_zero():
    model, tok = tiny_model("llama"), tokenizer()
    with torch.no_grad():  # head (1, 2) writes nothing: its gate cannot matter
        w = model.model.layers[1].self_attn.o_proj.weight
        d = w.shape[1] // 4
        w[:, 2 * d : 3 * d] = 0.0
    hi = registry.get("head_importance").create({"task": TASK.replace("12", "4"), "measures": "taylor,logprob_drop"})
    rows = hi.build()
    res = hi.analyze(model, tok, rows)
    model64, eps = copy.deepcopy(model).double(), 1e-3  # central differences (RMSNorm still runs in float32)
    for layer, head in [(0, 2), (1, 1)]:
        grads = [(mean_target_logprob(model64, tok, r, {(layer, head): 1 - eps})
                  - mean_target_logprob(model64, tok, r, {(layer, head): 1 + eps})) / (2 * eps) for r in rows]
        want = np.mean(np.abs(grads))  # E_x |dL/dxi| with L = -mean log p
        assert res.arrays["taylor"][layer, head] == pytest.approx(want, rel=1e-3, abs=1e-6)
    assert res.arrays["taylor"][1, 2] == 0.0 and res.arrays["logprob_drop"][1, 2] == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(res.metrics["spearman_taylor_logprob_drop"])
