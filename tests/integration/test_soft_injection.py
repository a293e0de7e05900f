"""Soft injection equals its formula h' = (1 - a) h + a mu at the last prompt token (prefill only), a = 0 is the
unpatched model, and fitting trains theta with the model frozen."""

from __future__ import annotations

import pytest
import torch

import registry
from components.benchmarks import _scoring
from components.patches.soft_injection import reference_output
from tests.helpers.compare import TOL, patched_vs_reference
from tests.helpers.reference import reference
from tests.helpers.tiny import tiny_model, tokenizer


def fitted(model, seed=0, theta=None):
    g = torch.Generator().manual_seed(seed)
    si = registry.get("soft_injection").create({"heads": "0:*,1:1-2"})
    theta = torch.randn(2, 4, generator=g) if theta is None else theta
    return si._fitted(theta, torch.randn(2, 4, 16, generator=g), {})


def si_reference(si, last_of):
    def edit(layer, out, info):  # out (B, H, q, D)
        if info.q_len != info.kv_len:
            return out  # decode steps untouched
        heads = [h for h in range(out.shape[1]) if (layer, h) in si.heads]
        rows = [last_of(b, info) for b in range(out.shape[0])]
        return reference_output(out, rows, si._theta[layer], si._mu[layer], heads)

    return edit


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_soft_injection_matches_formula(family):
    model = tiny_model(family)
    si = fitted(model)
    d = patched_vs_reference(model, [si], edit_out=si_reference(si, lambda b, info: info.q_len - 1),
                             decode_steps=3)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["effect"] > 1e-3, d


def test_alpha_zero_is_the_unpatched_model():
    model = tiny_model("llama")
    si = fitted(model, theta=torch.full((2, 4), float("-inf")))
    ids = torch.randint(3, 300, (2, 12))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with si.applied(model):
            same = model(input_ids=ids).logits
    assert torch.equal(base, same)


def test_injects_at_the_last_prompt_token_when_scoring_options():
    """Option scoring appends the answer tokens; the injection stays on the prompt's last token."""
    model, tok = tiny_model("llama"), tokenizer()
    si = fitted(model, seed=3)
    prompts, choices = ["the cat sat on the", "once upon a"], [[" mat", " dog ran"], [" time", " day"]]
    with si.applied(model) as session:
        got = _scoring.choice_logprobs(model, tok, prompts, choices, session=session, batch_size=4)
    lens = session.inputs["prompt_lens"]  # the one batch of four (prompt, option) pairs
    assert lens == [len(tok(p)["input_ids"]) for p in prompts for _ in range(2)]
    with reference(model, edit_out=si_reference(si, lambda b, info: lens[b] - 1)):
        want = _scoring.choice_logprobs(model, tok, prompts, choices, batch_size=4)
    assert max(abs(x - y) for g, w in zip(got, want) for x, y in zip(g, w)) <= 1e-4


def test_fit_trains_theta_with_the_model_frozen():
    model, tok = tiny_model("llama"), tokenizer()
    rows = registry.get("kv_retrieval").create({"n_pairs": "3", "n_examples": "10"}).build("train")
    si = registry.get("soft_injection").create({"n_shots": "2", "n_prompts": "4", "steps": "4", "valid_every": "2"})
    before = [p.detach().clone() for p in model.parameters()]
    out = si.fit(model, tok, rows)
    assert out._theta.shape == (2, 4) and out._mu.shape == (2, 4, 16)
    assert not torch.equal(out._theta, torch.zeros(2, 4)) or out.fit_record()["best_step"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    rec = out.fit_record()
    assert rec["n_train"] == 8 and rec["n_valid"] == 2 and len(rec["fingerprint"]) == 16
    assert len(rec["table"]) == 8 and all(0 < r["alpha"] < 1 for r in rec["table"])
    assert out.fingerprint() == si.fingerprint()  # the fitted state is not a parameter
    with pytest.raises(ValueError, match="soft_injection is not fitted"):
        with si.applied(model), torch.no_grad():
            model(input_ids=torch.tensor([[1, 5, 6]]))
