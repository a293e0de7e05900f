"""Detector components against independent references of their formulas (no models: synthetic logits/features)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import registry
from components.base import ParamError
from components.detectors._features import performer_stats, token_metrics
from components.detectors._logistic import decision, fit_logistic
from components.detectors.base import AUX, METRICS, PERFORMER_AUX, FeatureError, FeatureSet, auroc
from components.detectors.pawn import NEG, PAWN, PAWNHead, collate
from tests.helpers.detection import one_torch_thread  # noqa: F401  (autouse fixture)


def reference_metrics(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Straight from the paper's definitions, in float64, one position at a time."""
    rows = []
    for z, t in zip(logits.double(), targets):
        logp = z - torch.logsumexp(z, 0)
        p = logp.exp()
        lt = logp[t]
        at_least = [v for v in range(len(z)) if logp[v] >= lt]
        rows.append([float(-(p * logp).sum()), float(logp.max()), float(lt), len(at_least) / len(z),
                     float(sum(p[v] for v in at_least)), float((p * logp * logp).sum())])
    return torch.tensor(rows, dtype=torch.float64)


def test_token_metrics_match_reference_with_ties():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(40, 300, generator=g) * 3).round(decimals=1)  # coarse values: many exact ties
    targets = torch.randint(0, 300, (40,), generator=g)
    m, sq = token_metrics(logits, targets)
    ref = reference_metrics(logits, targets)
    assert METRICS == ("entropy", "max_log_prob", "next_token_log_prob", "quantile", "top_p")
    assert (m.double() - ref[:, :5]).abs().max() < 1e-5
    assert (sq[:, 0].double() - ref[:, 5]).abs().max() < 1e-4
    # ">=": the target counts itself, and ties with it count too
    assert torch.equal((m[:, 3] * 300).round(), torch.tensor([(logits[i] >= logits[i, targets[i]]).sum().item()
                                                              for i in range(40)], dtype=torch.float32))


def test_performer_stats_match_reference():
    g = torch.Generator().manual_seed(1)
    obs, perf = torch.randn(7, 50, generator=g), torch.randn(7, 50, generator=g) * 2
    t = torch.randint(0, 50, (7,), generator=g)
    got = performer_stats(obs, perf, t).double()
    p_obs = torch.softmax(obs.double(), -1)
    logq = torch.log_softmax(perf.double(), -1)
    assert (got[:, 0] - logq[torch.arange(7), t]).abs().max() < 1e-6
    assert (got[:, 1] + (p_obs * logq).sum(-1)).abs().max() < 1e-5


def synthetic_features(n: int = 60, seed: int = 0, hidden: int = 6, vocab: int = 2000,
                       performer: bool = False) -> FeatureSet:
    """Machine texts (label 1) get higher log-probs and lower ranks than human texts."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    lens = rng.integers(4, 14, n)
    metrics, aux, hs = [], [], []
    for y, T in zip(labels, lens):
        lp = rng.normal(-2.0 + 1.5 * y, 0.7, T - 1).clip(max=-0.01)
        ent = rng.uniform(0.5, 3.0, T - 1)
        rank = rng.integers(1, 40 if y else 2000, T - 1)
        m = np.stack([ent, np.maximum(lp, -0.5), lp, rank / vocab, rng.uniform(0, 1, T - 1)], -1).astype(np.float32)
        a = [ent ** 2 + rng.uniform(0.1, 1.0, T - 1)]
        if performer:
            a += [lp - rng.uniform(0, 1, T - 1), ent + rng.uniform(0, 1, T - 1)]
        metrics.append(m)
        aux.append(np.stack(a, -1).astype(np.float32))
        hs.append(rng.normal(0, 1, (T, hidden)).astype(np.float16))
    return FeatureSet(ids=[f"t{i}" for i in range(n)], n_tokens=lens.astype(np.int32), metrics=metrics, aux=aux,
                      aux_names=AUX + (PERFORMER_AUX if performer else ()), vocab_size=vocab, hidden=hs,
                      labels=labels.astype(np.int64), extra={"truncated": [False] * n})


def det(name: str, **params):
    return registry.get(name, family="detector").create(params)


def test_zero_shot_baselines_match_their_formulas():
    f = synthetic_features()
    for i in (0, 1, 7):
        ent, lp, q = (f.metrics[i][:, j].astype(np.float64) for j in (0, 2, 3))
        sq = f.aux[i][:, 0].astype(np.float64)
        rank = np.rint(q * f.vocab_size)
        assert det("log_likelihood").score(f)[i] == pytest.approx(lp.mean(), abs=1e-9)
        assert det("log_rank").score(f)[i] == pytest.approx(-np.log(rank).mean(), abs=1e-9)
        assert det("token_entropy").score(f)[i] == pytest.approx(ent.mean(), abs=1e-9)
        mu, var = -ent, sq - ent ** 2
        expected = (lp.sum() - mu.sum()) / math.sqrt(var.sum())
        assert det("fast_detectgpt").score(f)[i] == pytest.approx(expected, rel=1e-9)
        assert det("binoculars").score(f)[i] == pytest.approx(-lp.mean() / ent.mean(), rel=1e-9)
    # orientation: every evaluation reads "higher = machine"
    b = det("binoculars")
    assert not b.higher_is_machine and np.allclose(b.machine_score(f), -b.score(f))
    assert "single model" in b.describe(f)["binoculars.models"]


def test_binoculars_with_a_performer_uses_the_cross_entropy():
    f = synthetic_features(performer=True)
    perf_lp, xent = f.aux[3][:, 1].astype(np.float64), f.aux[3][:, 2].astype(np.float64)
    lp = f.metrics[3][:, 2].astype(np.float64)
    assert det("binoculars").score(f)[3] == pytest.approx(-perf_lp.mean() / xent.mean(), rel=1e-9)
    assert det("binoculars", ppl_model="observer").score(f)[3] == pytest.approx(-lp.mean() / xent.mean(), rel=1e-9)
    assert "two models: observer=backbone, performer=cached performer" in det("binoculars").describe(f)[
        "binoculars.models"]


def test_gltr_buckets_and_logistic_regression_match_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    f = synthetic_features(n=80)
    g = det("gltr")
    x = g.bucket_fractions(f)
    ranks = np.rint(f.metrics[5][:, 3].astype(np.float64) * f.vocab_size)
    want = [np.mean(ranks <= 10), np.mean((ranks > 10) & (ranks <= 100)), np.mean((ranks > 100) & (ranks <= 1000)),
            np.mean(ranks > 1000)]
    assert np.allclose(x[5], want) and np.allclose(x.sum(1), 1.0)
    state = g.fit(f)
    z = StandardScaler().fit_transform(x)
    sk = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, f.labels)
    assert np.allclose(state.tensors["weight"].numpy(), sk.coef_[0], atol=1e-4)
    assert np.allclose(g.score(f, state), sk.decision_function(z), atol=1e-4)
    assert np.allclose(decision(x, fit_logistic(x, f.labels)), g.score(f, state))
    with pytest.raises(ParamError, match="gltr.buckets"):
        det("gltr", buckets="100,10")


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    s, y = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(auroc(s, np.ones(200)))


def reference_head(head: PAWNHead, hs, metrics, mask) -> torch.Tensor:
    """Per text, over its scored tokens only (no padding at all): softmax per gate, weighted sum, aggregate."""
    out = []
    for b in range(hs.shape[0]):
        n = int(mask[b].sum()) - 1  # tokens 0..n-1 predict tokens 1..n
        pos = torch.arange(n, dtype=torch.float32)[:, None] / head.max_len
        g = head.gate_mlp(torch.cat([hs[b, :n], hs[b, 1 : n + 1], pos], -1))  # (n, G)
        g = torch.cat([g] * (head.features // head.gates), -1)  # (n, F) tiled
        w = torch.exp(g - g.max(0).values) / torch.exp(g - g.max(0).values).sum(0)
        z = (w * head.metrics_mlp(metrics[b, :n])).sum(0)
        out.append(head.aggregate_mlp(z)[0])
    return torch.stack(out)


def head_inputs(B=4, T=11, H=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs, m = torch.randn(B, T, H, generator=g), torch.randn(B, T, 5, generator=g)
    mask = torch.ones(B, T)
    for b, n in enumerate([T, 7, 2, 5][:B]):
        mask[b, n:] = 0
        hs[b, n:] = 7.0  # padding content must not matter
        m[b, n - 1 :] = -3.0
    return hs, m, mask


@pytest.mark.parametrize("gates", [16, 4])
def test_pawn_head_matches_reference_pooling(gates):
    torch.manual_seed(0)
    head = PAWNHead(6, features=16, gates=gates, layers=3).eval()
    hs, m, mask = head_inputs()
    with torch.no_grad():
        assert (head(hs, m, mask) - reference_head(head, hs, m, mask)).abs().max() < 1e-5
    n_params = sum(p.numel() for p in PAWNHead(768).parameters())
    assert 0.9e6 < n_params < 1.1e6  # "about 1M parameters with a GPT-2 backbone"


def test_pawn_hidden_states_only_reweight_tokens():
    """Paper property: the softmax weights sum to 1, so with identical metrics at every token the output cannot
    depend on the hidden states (they re-weight tokens but cannot inject content)."""
    torch.manual_seed(1)
    head = PAWNHead(6, features=16, gates=8, layers=2).eval()
    hs, m, mask = head_inputs()
    m_same = m[:, :1].expand_as(m).clone()
    with torch.no_grad():
        a = head(hs, m_same, mask)
        b = head(hs * -3.0 + 1.0, m_same, mask)
        assert (a - b).abs().max() < 1e-5
        assert (head(hs, m, mask) - head(hs * -3.0 + 1.0, m, mask)).abs().max() > 1e-4  # but they do re-weight


def test_pawn_padding_fully_masked_rows_and_token_dropout():
    torch.manual_seed(2)
    head = PAWNHead(6, features=16, gates=16, layers=2).eval()
    hs, m, mask = head_inputs()
    with torch.no_grad():
        alone = head(hs[1:2, :7], m[1:2, :7], mask[1:2, :7])
        assert (alone - head(hs, m, mask)[1]).abs().max() < 1e-6  # padding changes nothing
        empty = mask.clone()
        empty[0] = 0
        assert torch.isfinite(head(hs, m, empty)).all()  # NEG (finite), not -inf: no NaN
    assert NEG > -1e5
    head.token_dropout = 0.9
    valid = mask[:, 1:] > 0
    for _ in range(20):
        kept = head._drop(valid)
        assert (kept.sum(1) > 0).all() and not (kept & ~valid).any()


def test_pawn_fit_learns_early_stops_and_is_deterministic():
    train, valid = synthetic_features(n=96, seed=0), synthetic_features(n=40, seed=1)
    p = PAWN(features=16, gates=8, layers=2, epochs=6, batch_size=16, patience=2, lr=3e-3)
    state = p.fit(train, valid)
    assert auroc(p.score(valid, state), valid.labels) > 0.9
    hist = state.info["history"]
    assert [r["epoch"] for r in hist] == list(range(1, len(hist) + 1)) and "valid_auroc" in hist[0]
    assert state.info["best_epoch"] == max(r["epoch"] for r in hist if r.get("best"))
    assert state.info["pos_weight"] == pytest.approx(1.0)
    again = p.fit(train, valid)
    assert all(torch.equal(state.tensors[k], again.tensors[k]) for k in state.tensors)
    with pytest.raises(ValueError, match="both human"):
        p.fit(train.subset(np.nonzero(train.labels == 1)[0]))


def test_pawn_parameters_are_validated():
    with pytest.raises(ParamError, match="pawn.gates=3 must divide pawn.features=16"):
        PAWN.from_params({"features": "16", "gates": "3"})
    with pytest.raises(ParamError, match="pawn.lr"):
        PAWN.from_params({"lr": "0"})
    with pytest.raises(ParamError, match="unknown parameter"):
        PAWN.from_params({"feature": "8"})


def test_features_reject_non_finite_values_and_missing_aux():
    f = synthetic_features(n=6)
    f.metrics[2][1, 0] = np.nan
    with pytest.raises(FeatureError, match="non-finite.*'t2'"):
        f.check_finite()
    g = synthetic_features(n=6)
    g.aux_names, g.aux = (), [a[:, :0] for a in g.aux]
    with pytest.raises(FeatureError, match="fast_detectgpt needs aux feature"):
        det("fast_detectgpt").score(g)


def test_collate_pads_right_and_keeps_values():
    f = synthetic_features(n=4)
    hs, m, mask = collate(f, [0, 1])
    n0 = int(f.n_tokens[0])
    assert mask[0].sum() == n0 and torch.equal(m[0, : n0 - 1], torch.from_numpy(f.metrics[0]))
    assert torch.equal(hs[0, :n0], torch.from_numpy(f.hidden[0]).float())
