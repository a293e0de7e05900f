"""Attention profile (sink mass per layer, induction scores) vs loops over the reference attention's probabilities."""

import torch

from components.lm.profile import attention_profile
from tests.helpers.reference import reference
from tests.helpers.tiny import tiny_model


def _reference_probs(model, ids):
    """Per layer (B, H, T, T) float64 probabilities from the independent reference attention."""
    seen = {}

    def record(layer, probs, info):
        seen[layer] = probs.clone()
        return probs

    with torch.no_grad(), reference(model, edit_probs=record):
        model(input_ids=ids)
    return [seen[i] for i in sorted(seen)]


def test_profile_matches_loops_over_reference_probabilities():
    model = tiny_model("llama", layers=2, heads=4, kv_heads=2)
    gen = torch.Generator().manual_seed(3)
    texts = [torch.randint(3, 320, (n,), generator=gen) for n in (17, 9)]
    prof = attention_profile(model, texts, vocab_size=320, bos_id=1, seq_len=6, n_sequences=3, seed=5)
    assert model.config._attn_implementation == "sdpa"  # the dispatcher scope is restored

    # sink mass: sum over texts and queries i >= 1 of mean-over-heads A[i, 0], divided by the number of such queries
    total = torch.zeros(2, dtype=torch.float64)
    count = 0
    for ids in texts:
        for layer, p in enumerate(_reference_probs(model, ids[None])):
            for i in range(1, ids.numel()):
                total[layer] += p[0, :, i, 0].mean()
        count += ids.numel() - 1
    assert torch.allclose(torch.tensor(prof.sink_mass, dtype=torch.float64), total / count, atol=1e-5)
    uniform = sum(1.0 / (i + 1) for ids in texts for i in range(1, ids.numel())) / count
    assert abs(prof.uniform - uniform) < 1e-9

    # induction: the same random sequences rebuilt from the seed, one (query, key) pair at a time
    rand = torch.randint(0, 320, (3, 6), generator=torch.Generator().manual_seed(5))
    rand[rand == 1] = 2
    ids = torch.cat([torch.ones(3, 1, dtype=torch.long), rand, rand], dim=1)
    probs = _reference_probs(model, ids)
    for layer, p in enumerate(probs):
        for head in range(4):
            vals = [p[b, head, 1 + 6 + j, 1 + j + 1] for b in range(3) for j in range(6)]
            assert abs(prof.induction[layer][head] - float(torch.stack(vals).mean())) < 1e-5


def test_random_model_has_no_induction_head_and_card_lists_top_heads():
    """A random model's heads are far from induction (score well below 1); the card text names the top heads."""
    model = tiny_model("llama", layers=1, heads=2, kv_heads=1)
    prof = attention_profile(model, [torch.arange(3, 12)], vocab_size=320, bos_id=1, seq_len=5, n_sequences=2)
    assert all(0.0 <= s < 0.99 for s in prof.induction[0])
    assert prof.top_induction(1)[0][2] == max(prof.induction[0])
    assert "L0H" in prof.markdown() and "position 0" in prof.markdown()
