"""PAWN feature extraction on tiny models against a straightforward reference from the model's full logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.detectors._features import encode, extract
from components.detectors.base import FeatureError
from tests.helpers.detection import human_texts, one_torch_thread  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import tiny_model, tokenizer

TEXTS = human_texts(5) + ["Tom.", "A cat sat on the mat and looked at the big red ball for a long time " * 3]


def reference(model, ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Metrics (float64, one unpadded text at a time, the model's own forward) and its final hidden states."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=x, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[0, :-1].double(), -1)  # (T-1, V)
    t = x[0, 1:]
    lt = logp[torch.arange(len(t)), t][:, None]
    p = logp.exp()
    m = torch.stack([-(p * logp).sum(-1), logp.max(-1).values, lt[:, 0], (logp >= lt).double().mean(-1),
                     (p * (logp >= lt)).sum(-1)], -1)
    sq = (p * logp * logp).sum(-1)
    return m.numpy(), sq.numpy(), out.hidden_states[-1][0].numpy()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_extraction_matches_reference(family):
    model, tok = tiny_model(family), tokenizer()
    feats = extract(model, tok, TEXTS, max_length=40, batch_size=3, chunk_elements=1000)  # several chunks
    enc = encode(tok, TEXTS, 40)
    full = [len(x) for x in encode(tok, TEXTS, 10_000).ids]
    for i, ids in enumerate(enc.ids):
        m, sq, h = reference(model, ids)
        assert feats.n_tokens[i] == len(ids) and feats.metrics[i].shape == (len(ids) - 1, 5)
        assert np.abs(feats.metrics[i] - m).max() < 1e-5
        assert np.abs(feats.aux[i][:, 0] - sq).max() < 1e-4
        assert np.abs(feats.hidden[i].astype(np.float32) - h).max() <= 2e-3 * max(1.0, np.abs(h).max())  # fp16
        assert feats.hidden[i].dtype == np.float16
    assert feats.extra["truncated"] == [n > 40 for n in full] and feats.extra["truncated"][-1]
    assert feats.n_tokens[-1] == 40 and not feats.extra["truncated"][5]


def test_batching_chunking_and_order_do_not_change_features():
    model, tok = tiny_model("llama"), tokenizer()
    a = extract(model, tok, TEXTS, max_length=32, batch_size=1)
    b = extract(model, tok, TEXTS[::-1], max_length=32, batch_size=7, chunk_elements=1 << 20)
    for i in range(len(TEXTS)):
        j = len(TEXTS) - 1 - i
        assert np.abs(a.metrics[i] - b.metrics[j]).max() < 1e-5
        assert np.array_equal(a.n_tokens[i], b.n_tokens[j])


def test_performer_statistics_match_reference():
    obs, perf, tok = tiny_model("llama", seed=0), tiny_model("llama", seed=1), tokenizer()
    feats = extract(obs, tok, TEXTS[:3], max_length=24, batch_size=2, performer=perf)
    assert feats.aux_names == ("log_prob_sq", "performer_log_prob", "cross_entropy")
    ids = encode(tok, TEXTS[:3], 24).ids[1]
    x = torch.tensor([ids])
    with torch.no_grad():
        p_obs = torch.softmax(obs(x).logits[0, :-1].double(), -1)
        logq = torch.log_softmax(perf(x).logits[0, :-1].double(), -1)
    assert np.abs(feats.aux[1][:, 1] - logq[torch.arange(len(ids) - 1), x[0, 1:]].numpy()).max() < 1e-5
    assert np.abs(feats.aux[1][:, 2] + (p_obs * logq).sum(-1).numpy()).max() < 1e-4


def test_bad_texts_and_broken_backbones():
    model, tok = tiny_model("llama"), tokenizer()
    with pytest.raises(FeatureError, match="2 empty text.*'b', 'c'"):
        extract(model, tok, ["fine", "", "  \n"], names=["a", "b", "c"])
    huge = "word " * 400_000  # 2 MB: capped before tokenizing, truncated, flagged
    feats = extract(model, tok, [huge], max_length=16)
    assert feats.n_tokens[0] == 16 and feats.extra["truncated"] == [True]
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    with pytest.raises(FeatureError, match="non-finite.*'x1'"):
        extract(model, tok, TEXTS[:2], names=["x0", "x1"], batch_size=2)
