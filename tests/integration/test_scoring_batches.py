"""Evaluations batch prompts by length: the results equal one-prompt-at-a-time scoring, in the input order."""

from __future__ import annotations

import pytest
import torch

from components.attention.session import applied
from components.benchmarks import _scoring
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model, tokenizer

# ragged lengths, deliberately not sorted, so batches are regrouped and left/right padded
PROMPTS = ["Tom saw a", "Once upon a time there was a little dog who liked to run in the park and", "abc:012 xyz:",
           "The cat", "Lily went to the store to buy some milk. She", "abc:101 xyz:707. abc:102 xyz:",
           "One day a big", "The sun was hot and the birds were"]


def test_by_length_groups_similar_lengths_and_covers_every_index():
    groups = _scoring.by_length([5, 1, 9, 3, 3, 7], 4)
    assert groups == [[1, 3, 4, 0], [5, 2]]
    assert sorted(i for g in groups for i in g) == list(range(6))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_scoring_equals_one_at_a_time(family):
    tok = tokenizer()
    model = tiny_model(family, layers=2, heads=4, kv_heads=2).double()  # GQA for llama; float64: no rounding flips
    lengths = [len(tok(p)["input_ids"]) for p in PROMPTS]
    assert len(set(lengths)) > 4 and lengths != sorted(lengths)
    choices = [[" dog", " big red ball"], [" the", " a"], ["1", "2"], [" ran", " sat down"], [" was", " is"],
               ["7", "70"], [" bird", " tree"], [" happy", " loud"]]
    rows = [{"prompt": p} for p in PROMPTS]
    with applied(model) as session:  # evaluations run through the dispatcher
        batched = _scoring.greedy_continuations(model, tok, PROMPTS, 6, session=session, batch_size=3)
        single = [_scoring.greedy_continuations(model, tok, [p], 6, session=session, batch_size=1)[0]
                  for p in PROMPTS]
        lp_batched = _scoring.choice_logprobs(model, tok, PROMPTS, choices, session=session, batch_size=3)
        lp_single = [_scoring.choice_logprobs(model, tok, [p], [c], session=session, batch_size=1)[0]
                     for p, c in zip(PROMPTS, choices)]
        ent_batched = _scoring.prediction_entropy(model, tok, rows, session=session, batch_size=3)
        ent_single = [_scoring.prediction_entropy(model, tok, [r], session=session, batch_size=1) for r in rows]
    assert batched == single
    assert len(set(batched)) > 1  # the continuations differ between prompts: a mix-up of order would show
    assert torch.allclose(torch.tensor(lp_batched), torch.tensor(lp_single), atol=1e-9, rtol=0)
    assert ent_batched == pytest.approx(sum(ent_single) / len(ent_single), abs=1e-9)
