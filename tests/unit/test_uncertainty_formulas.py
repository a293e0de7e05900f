"""Uncertainty formulas on fixed log-probabilities: a hand-computed example each, and an independent straightforward
reference (the paper's formulas written out with plain loops and exp/log, no shared helpers) on random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import registry
from components.uncertainty import _eval, _rouge
from components.uncertainty.base import MissingInputError, QuestionSamples
from components.uncertainty.semantic_entropy import clusters

registry.discover()


def method(name, **params):
    return registry.get(name, family="uncertainty").create(params)


# a hand example: K = 2 answers, NLLs chosen so the sums are exact
NLL = [np.array([1.0, 3.0]), np.array([2.0])]
REL = [np.array([0.25, 0.75]), np.array([1.0])]
SIM = np.array([[1.0, 0.5], [0.5, 1.0]])
Q = QuestionSamples(texts=["the cat sat", "a dog"], nll=NLL, relevance=REL, similarity=SIM,
                    entailment=np.eye(2))


def test_hand_computed_examples():
    assert method("predictive_entropy").uncertainty(Q) == pytest.approx((4.0 + 2.0) / 2)
    assert method("ln_predictive_entropy").uncertainty(Q) == pytest.approx((2.0 + 2.0) / 2)
    # token-SAR: answer 1: 0.25 * 1 + 0.75 * 3 = 2.5; answer 2: 2.0
    assert method("token_sar").uncertainty(Q) == pytest.approx((2.5 + 2.0) / 2)
    # sentence-SAR with t = 0.5: p = (e^-4, e^-2); E_1 = -log(e^-4 + 0.5 e^-2 / 0.5) = -log(e^-4 + e^-2)
    e1, e2 = -math.log(math.exp(-4) + math.exp(-2)), -math.log(math.exp(-2) + math.exp(-4))
    assert method("sentence_sar", t=0.5).uncertainty(Q) == pytest.approx((e1 + e2) / 2)
    # SAR with t = 0.5: p = (e^-2.5, e^-2)
    s1, s2 = -math.log(math.exp(-2.5) + math.exp(-2)), -math.log(math.exp(-2) + math.exp(-2.5))
    assert method("sar", t=0.5).uncertainty(Q) == pytest.approx((s1 + s2) / 2)
    # semantic entropy, two clusters (identity entailment): -(log e^-2 + log e^-2) / 2 = 2
    assert method("semantic_entropy").uncertainty(Q) == pytest.approx(2.0)
    # one cluster: -log(e^-2 + e^-2) = 2 - log 2
    one = QuestionSamples(texts=Q.texts, nll=NLL, entailment=np.ones((2, 2)))
    assert method("semantic_entropy").uncertainty(one) == pytest.approx(2.0 - math.log(2.0))
    # lexical similarity: ROUGE-L("the cat sat", "a dog") = 0
    assert method("lexical_similarity").uncertainty(Q) == pytest.approx(1.0)


def test_rouge_l_hand_examples():
    # LCS("the cat sat on the mat", "the cat is on a mat") = the cat on mat = 4; P = 4/6, R = 4/6
    assert _rouge.rouge_l("The cat sat on the mat.", "the cat is on a mat") == pytest.approx(4 / 6)
    # P = 2/2, R = 2/4 -> F = 2/3
    assert _rouge.rouge_l("Paris France", "it is Paris, France") == pytest.approx(2 / 3)
    assert _rouge.rouge_l("", "anything") == 0.0
    assert _rouge.exact_match("The  Eiffel tower!", "eiffel Tower") == 1.0
    assert _eval.correct("in Paris", ["Paris", "The capital of France"], "rouge_l", 0.5)  # F = 2/3
    assert not _eval.correct("It is in Paris", ["Paris"], "rouge_l", 0.5)  # F = 0.4
    assert _eval.correct("the Paris.", ["Paris"], "exact_match")


def _reference_scores(q: QuestionSamples, t: float, thr: float) -> dict[str, float]:
    """The paper's formulas, written out independently."""
    k = len(q.nll)
    seq = [float(sum(float(x) for x in n)) for n in q.nll]
    avg = [float(sum(float(x) for x in n)) / len(n) for n in q.nll]
    et = []
    for n, r in zip(q.nll, q.relevance):
        total = sum(float(x) for x in r)
        w = [float(x) / total for x in r]
        et.append(sum(wi * float(ni) for wi, ni in zip(w, n)))

    def shifted(log_like):
        p = [math.exp(v) for v in log_like]
        return sum(-math.log(p[j] + sum(q.similarity[j][m] * p[m] / t for m in range(k) if m != j))
                   for j in range(k)) / k

    ids, reps = [], []
    for j in range(k):
        for c, first in enumerate(reps):
            if q.entailment[j][first] >= thr and q.entailment[first][j] >= thr:
                ids.append(c)
                break
        else:
            ids.append(len(reps))
            reps.append(j)
    se = -sum(math.log(sum(math.exp(-avg[j]) for j in range(k) if ids[j] == c)) for c in set(ids)) / len(set(ids))
    lex = [_rouge.rouge_l(q.texts[a], q.texts[b]) for a in range(k) for b in range(a + 1, k)]
    return {"predictive_entropy": sum(seq) / k, "ln_predictive_entropy": sum(avg) / k, "token_sar": sum(et) / k,
            "sentence_sar": shifted([-s for s in seq]), "sar": shifted([-e for e in et]), "semantic_entropy": se,
            "lexical_similarity": 1 - sum(lex) / len(lex)}


@pytest.mark.parametrize("seed", range(5))
def test_methods_match_an_independent_reference(seed):
    rng = np.random.default_rng(seed)
    words = ["paris", "france", "the", "city", "of", "light", "london", "is"]
    qs = []
    for _ in range(4):
        k = 5
        lens = rng.integers(1, 9, k)
        sim = rng.uniform(0, 1, (k, k))
        sim = (sim + sim.T) / 2
        np.fill_diagonal(sim, 1.0)
        qs.append(QuestionSamples(
            texts=[" ".join(rng.choice(words, int(n))) for n in lens],
            nll=[rng.exponential(2.0, int(n)).astype(np.float32) for n in lens],
            relevance=[rng.uniform(0.01, 1, int(n)).astype(np.float32) for n in lens],
            similarity=sim, entailment=rng.uniform(0, 1, (k, k))))
    t, thr = 0.05, 0.4
    params = {"sentence_sar": {"t": t}, "sar": {"t": t}, "semantic_entropy": {"threshold": thr}}
    for info in registry.latest("uncertainty"):
        got = info.create(params.get(info.name, {})).score(qs)
        want = [_reference_scores(q, t, thr)[info.name] for q in qs]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=info.name)


def test_log_space_form_survives_long_answers():
    q = QuestionSamples(texts=["a", "b"], nll=[np.full(40, 5.0), np.full(40, 6.0)], relevance=[np.ones(40)] * 2,
                        similarity=np.full((2, 2), 0.5))
    for name in ("sentence_sar", "sar"):
        assert np.isfinite(method(name).uncertainty(q))  # exp(-200) underflows float32 in the reference


def test_missing_inputs_are_named():
    bare = QuestionSamples(texts=["a"], nll=[np.array([1.0])])
    with pytest.raises(MissingInputError, match="sar needs relevance, similarity"):
        method("sar").score([bare])
    assert method("predictive_entropy").score([bare])[0] == 1.0


def test_semantic_clusters_need_both_directions():
    e = np.array([[1.0, 0.9, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert clusters(e, 0.5) == [0, 1, 2]
    e[1, 0] = 0.6
    assert clusters(e, 0.5) == [0, 0, 1]


def test_auroc_auprc_match_sklearn_and_cis_bracket():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = y * 0.7 + rng.normal(0, 1, 200)
    s[:20] = np.round(s[:20])  # ties
    assert _eval.auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert _eval.auprc(s, y) == pytest.approx(average_precision_score(y, s))
    lo, hi = _eval.bootstrap_ci(_eval.auroc, s, y, n_boot=200)
    assert lo < _eval.auroc(s, y) < hi
    d = _eval.paired_delta(s, -s, y, n_boot=100)
    assert d["delta"] == pytest.approx(2 * roc_auc_score(y, s) - 1) and d["lo"] > 0


def test_bad_parameters_fail():
    from components.base import ParamError

    with pytest.raises(ParamError, match="sar.t"):
        method("sar", t=0)
    with pytest.raises(ParamError, match="semantic_entropy.threshold"):
        method("semantic_entropy", threshold=2)
