"""lsa_icl and softmax_icl: theory values on closed-form cases, model vs independent references, estimators on
hand cases, determinism for a seed, the optimiser, and the verdict logic. No Prefect, no MLflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.base import ParamError
from components.studies import _icl_checks
from components.studies._utils import Adam, generator, mean_ci
from components.studies.lsa_icl import LSAICL, parse_shift
from components.studies.softmax_icl import SoftmaxICL


# -- lsa_icl: theory ----------------------------------------------------------------------------------------

def test_gamma_inverse_for_identity_covariance():
    d, n = 5, 20
    study = LSAICL(d=d, n_prompt=n)
    c = 1 / (1 + (d + 1) / n)  # Γ = (1 + (d+1)/N) I for Λ = I
    assert torch.allclose(torch.linalg.inv(study.gamma()), c * torch.eye(d, dtype=torch.float64))
    for m in (5, 20, 160):  # the closed form for Λ = I: d c²(d+1)/M + d(1 − c)²
        assert study.theory_error(m) == pytest.approx(d * c ** 2 * (d + 1) / m + d * (1 - c) ** 2, rel=1e-12)


@pytest.mark.parametrize("covariance, m, shift", [("diagonal", 6, "none"), ("identity", 12, "covariate:2")])
def test_error_formula_matches_monte_carlo_of_the_global_minimum(covariance, m, shift):
    """The trained predictor ŷ = x_qᵀΓ⁻¹(1/M)Σ y_i x_i (u = 1, U11 = Γ⁻¹) simulated vs the formula."""
    study = LSAICL(d=3, n_prompt=10, covariance=covariance, spread=3.0)
    pv, kq = torch.zeros(4, 4), torch.zeros(4, 4)
    pv[3, 3] = 1.0
    kq[:3, :3] = torch.linalg.inv(study.gamma()).float()
    mse, y2 = study._mse(pv, kq, m, 40_000, generator(7), shift)
    kind, s = parse_shift(shift)
    expected = study.theory_error(m, s if kind == "covariate" else 1.0, s if kind == "query" else 1.0)
    assert mse == pytest.approx(expected, rel=0.05)
    assert mse / y2 == pytest.approx(study.theory_relative_error(shift, m), rel=0.06)


def test_lsa_prediction_is_the_layer_output_entry():
    """predict() vs the layer written out: f(E) = E + W^PV E (Eᵀ W^KQ E)/M, entry (d+1, M+1)."""
    torch.manual_seed(0)
    d, m = 3, 6
    pv, kq = torch.randn(d + 1, d + 1, dtype=torch.float64), torch.randn(d + 1, d + 1, dtype=torch.float64)
    x, y = torch.randn(2, m + 1, d, dtype=torch.float64), torch.randn(2, m + 1, dtype=torch.float64)
    for b in range(2):
        e = torch.cat([x[b].T, torch.cat([y[b, :-1], torch.zeros(1, dtype=torch.float64)])[None]], dim=0)
        f = e + pv @ e @ (e.T @ kq @ e) / m  # (d+1, M+1)
        assert LSAICL.predict(pv, kq, x, y)[b] == pytest.approx(float(f[d, m]), rel=1e-10)


def test_lsa_training_converges_and_is_deterministic():
    study = LSAICL(d=3, n_prompt=10, steps=100, batch=512, seed=3)
    a, b = study.train(), study.train()
    assert a["w_pv"] == b["w_pv"] and a["w_kq"] == b["w_kq"]
    assert study.replace(seed=4).train()["w_kq"] != a["w_kq"]
    ev = study.evaluate(a, lengths=[10], shifts=["task"], n_test=2000)
    assert ev["gap"] < 0.05  # u·U11 close to Γ⁻¹ after 150 steps
    assert [r["shift"] for r in ev["shifts"]] == ["none", "task"]


def test_shift_parsing_and_validation():
    assert parse_shift("covariate:2") == ("covariate", 2.0)
    assert parse_shift("task") == ("task", 1.0)
    for bad, msg in (("covariate", "expected covariate:<scale>"), ("query:-1", "must be > 0"),
                     ("label:2", "kind must be one of"), ("task:2", "takes no scale")):
        with pytest.raises(ParamError, match=msg):
            parse_shift(bad)
    with pytest.raises(ParamError, match=r"lsa_icl.steps=0 is out of range"):
        LSAICL.from_params({"steps": "0"})


def _lsa_point(gap=0.01, other=0.01, ratio=1.0, cov=5.0):
    lengths = [{"m": 10, "error": 1.0, "theory": 1.02}]
    shifts = [{"shift": "none", "relative_error": 0.2, "theory": 0.2},
              {"shift": "task", "relative_error": 0.2 * ratio, "theory": 0.2},
              {"shift": "covariate:2", "relative_error": 0.2 * cov, "theory": 1.0}]
    return {"label": "x", "params": {}, "eval": {"gap": gap, "other_pv": other, "other_kq": 0.0,
                                                 "lengths": lengths, "shifts": shifts}}


def test_lsa_verdict_passes_and_fails_on_the_numbers():
    ok = {c.name: c.passed for c in LSAICL.verdict([_lsa_point()])}
    assert ok == {"converges_to_gamma_inv": True, "only_u_and_U11_move": True, "error_follows_theory": True,
                  "task_shift_tolerated": True, "covariate_shift_not_tolerated": True,
                  "shift_table_follows_theory": True}
    bad = {c.name: c.passed for c in LSAICL.verdict([_lsa_point(), _lsa_point(gap=0.05, ratio=1.6, cov=1.2)])}
    assert not bad["converges_to_gamma_inv"] and not bad["task_shift_tolerated"]
    assert not bad["covariate_shift_not_tolerated"] and not bad["shift_table_follows_theory"]
    assert bad["only_u_and_U11_move"]


# -- softmax_icl --------------------------------------------------------------------------------------------

def _reference_forward(study, p, tokens):
    """Per head, per prompt, with explicit matrices: Σ_h O_h V_h Z softmax(Zᵀ K_hᵀ Q_h z_q / √E)."""
    out = torch.zeros(tokens.shape[0], study.n_out, dtype=torch.float64)
    for b in range(tokens.shape[0]):
        z, zq = tokens[b, :-1].T.double(), tokens[b, -1].double()  # (E, L), (E,)
        for h in range(study.heads):
            q, k, v, o = (p[n][h].double() for n in ("q", "k", "v", "o"))
            s = (k @ z).T @ (q @ zq) / math.sqrt(study.width)  # (L,)
            a = torch.softmax(s, 0) if study.attention == "softmax" else s / study.context
            out[b] += o @ (v @ z @ a)
    return out


@pytest.mark.parametrize("attention, tasks", [("softmax", "single"), ("linear", "single"), ("softmax", "multi")])
def test_softmax_forward_matches_reference(attention, tasks):
    study = SoftmaxICL(heads=3, attention=attention, tasks=tasks, context=7, d=4, dx1=2, dx2=3)
    p = study.init_params(generator(0))
    tokens, _ = study.sample(5, 7, generator(1))
    got = study.forward(p, tokens).double()
    assert torch.allclose(got, _reference_forward(study, {k: v.detach() for k, v in p.items()}, tokens), atol=1e-5)
    assert (tokens[:, -1, study.d:] == 0).all()  # the query's labels are hidden


def test_regression_baselines_on_a_hand_case():
    # d = 1, L = 2: x = (1, 3), y = (2, 6), x_q = 1
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [1.0, 0.0]]])
    gd, dgd = _icl_checks._features(tokens, 1)
    assert float(gd) == pytest.approx((2 * 1 + 6 * 3) / 2)  # (1/L) Σ y x · x_q
    assert float(dgd) == pytest.approx((2 * (1 - 2) + 6 * (3 - 2)) / 2)  # centred at x̄ = 2
    preds = _icl_checks.baselines(tokens, 1, 0.1, {"gd": 0.5, "dgd": 2.0})
    assert float(preds["gd"]) == pytest.approx(5.0) and float(preds["dgd"]) == pytest.approx(4.0)
    assert float(preds["ridge"]) == pytest.approx(20 / (10 + 0.1 * 1))  # Σxy / (Σx² + σ²d)
    steps = _icl_checks.fit_steps(tokens.repeat(3, 1, 1), torch.tensor([[2.0]] * 3), 1)
    assert steps["gd"] == pytest.approx(2 / 10) and steps["dgd"] == pytest.approx(1.0)


def test_softmax_training_is_deterministic_and_reports_circuits():
    study = SoftmaxICL(heads=2, context=8, steps=30, batch=16, snapshot_every=10)
    a, b = study.train(), study.train()
    assert a["params"] == b["params"] and a["loss"] == b["loss"]
    assert [s["step"] for s in a["snapshots"]] == [0, 10, 20, 29]
    ev = study.evaluate(a, lengths=[8, 16], n_test=200)
    assert [r["length"] for r in ev["lengths"]] == [8, 16]
    assert {"model", "gd", "dgd", "ridge"} <= set(ev["lengths"][0]) and len(ev["heads"]) == 2
    with pytest.raises(ParamError, match="rho applies to single-task prompts only"):
        SoftmaxICL(tasks="multi", rho=0.5)


def _head(h, omega, mu, off=0.01, ov_x=0.01):
    return {"head": h, "omega": omega, "spread": 0.01, "offdiag": off, "mu": [mu], "ov_x": ov_x,
            "cos_identity": 1.0, "cos_sigma_inv": 1.0}


def _sm_point(heads, attention="softmax", mse=(0.24, 0.2), dgd=0.237):
    params = {"heads": len(heads), "attention": attention, "tasks": "single", "rho": 0.0, "context": 40}
    lengths = [{"length": 40, "model": mse[0], "dgd": dgd, "ridge": 0.115},
               {"length": 320, "model": mse[1], "dgd": 0.1, "ridge": 0.1}]
    return {"label": f"{attention} H={len(heads)}", "params": params, "eval": {"heads": heads, "lengths": lengths}}


def test_softmax_verdict_on_the_paper_pattern_and_on_a_broken_one():
    good = [_sm_point([_head(0, -0.5, -1.5)], mse=(0.4, 0.3)),
            _sm_point([_head(0, -0.19, -2.35), _head(1, 0.19, 2.37)]),
            _sm_point([_head(0, -0.2, -2.0), _head(1, 0.2, 2.0)], "linear", mse=(0.23, 37.0))]
    ok = {c.name: c.passed for c in SoftmaxICL.verdict(good)}
    assert all(ok.values()) and {"kq_diagonal_homogeneous", "mu_sums_to_zero", "two_heads_match_debiased_gd",
                                 "multihead_beats_single_head", "linear_length_generalisation"} <= set(ok)
    broken = [_sm_point([_head(0, 0.2, 2.0, off=0.3), _head(1, 0.2, 2.0, ov_x=0.5)], mse=(0.4, 0.5))]
    bad = {c.name: c.passed for c in SoftmaxICL.verdict(broken)}
    assert not any(bad[k] for k in ("kq_diagonal_homogeneous", "ov_last_entry_only", "mu_sums_to_zero",
                                    "omega_both_signs", "two_heads_match_debiased_gd",
                                    "softmax_length_generalisation"))


# -- shared helpers -------------------------------------------------------------------------------------------

def test_adam_matches_the_textbook_update():
    """Kingma & Ba, Algorithm 1 (β = 0.9, 0.999; ε = 1e-8), written out in numpy."""
    rng = np.random.default_rng(0)
    w0, x, y = rng.normal(size=(4, 3)), rng.normal(size=(16, 4)), rng.normal(size=(16, 3))
    a = torch.tensor(w0, requires_grad=True)
    opt = Adam([a], lr=1e-2)
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t in range(1, 21):
        ((torch.tensor(x) @ a - torch.tensor(y)) ** 2).mean().backward()
        opt.step()
        g = 2 * x.T @ (x @ w - y) / y.size
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - 1e-2 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    assert np.allclose(a.detach().numpy(), w, atol=1e-10)


def test_mean_ci_is_the_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert np.isnan(mean_ci([0.5])[1])
