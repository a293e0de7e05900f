"""Decisions, not only AUROC: the target-FPR threshold, FPR intervals, one-class data, per-group FPR, per-generator
pairing, and the Binoculars observer / performer pair (tiny models built by the tests, no downloads)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from tasks import pawn_metrics
from tests.helpers.detection import one_torch_thread  # noqa: F401  (autouse fixture)

DISTRIBUTIONS = {"normal": stats.norm(0, 1), "exponential": stats.expon(), "student-t (3 df)": stats.t(3),
                 "bimodal humans": None}


def draw(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """n human scores and the distribution's survival function (None: computed from a mixture)."""
    if name == "bimodal humans":  # e.g. two human sources the detector scores differently
        x = np.where(rng.random(n) < 0.7, rng.normal(-1, 0.5, n), rng.normal(1.5, 0.3, n))
        return x, None
    return DISTRIBUTIONS[name].rvs(n, random_state=rng), DISTRIBUTIONS[name]


def true_fpr(name: str, t: float) -> float:
    if name == "bimodal humans":
        return 0.7 * stats.norm(-1, 0.5).sf(t) + 0.3 * stats.norm(1.5, 0.3).sf(t)
    return float(DISTRIBUTIONS[name].sf(t))


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_calibrated_threshold_hits_the_target_fpr(name, target):
    rng = np.random.default_rng(7)
    n_valid, n_test = 4000, 20000
    valid, _ = draw(name, n_valid, rng)
    t = pawn_metrics.calibrate_fpr_threshold(valid, target)
    k = int((valid >= t).sum())
    assert k == int(np.floor(target * n_valid))  # continuous scores: exactly floor(target * n) flagged
    # 12 cases: each interval at 99.9% so that the family fails by chance with probability ~2.4%, not ~46%
    # the population FPR at t lies within the binomial interval of the calibration sample's count
    lo, hi = pawn_metrics.binomial_ci(k, n_valid, level=0.999)
    assert lo <= true_fpr(name, t) <= hi
    # the realised FPR on fresh human texts: its interval covers the population FPR at t
    test, _ = draw(name, n_test, rng)
    row = pawn_metrics.fpr_row(test, t)
    assert row["n_flagged"] == (test >= t).sum() and row["fpr"] == pytest.approx(row["n_flagged"] / n_test)
    assert (row["fpr_ci_low"], row["fpr_ci_high"]) == pawn_metrics.binomial_ci(int(row["n_flagged"]), n_test)
    lo, hi = pawn_metrics.binomial_ci(int(row["n_flagged"]), n_test, level=0.999)
    assert lo <= true_fpr(name, t) <= hi


def test_threshold_with_ties_never_exceeds_the_target():
    scores = np.repeat(np.arange(10.0), 10)  # 100 scores, 10 per value
    for target, flagged in ((0.05, 0), (0.1, 10), (0.15, 10), (0.25, 20)):
        t = pawn_metrics.calibrate_fpr_threshold(scores, target)
        assert (scores >= t).sum() == flagged, target
    assert pawn_metrics.calibrate_fpr_threshold(np.arange(100.0), 0.05) == pytest.approx(94.5)  # midway 94 | 95
    with pytest.raises(ValueError, match="no human texts"):
        pawn_metrics.calibrate_fpr_threshold(np.array([]), 0.05)
    with pytest.raises(ValueError, match=r"target FPR 1.5 must be in \(0, 1\)"):
        pawn_metrics.calibrate_fpr_threshold(scores, 1.5)


def test_clopper_pearson_interval_matches_scipy():
    for k, n in ((0, 20), (3, 40), (20, 20), (57, 1000)):
        want = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
        assert pawn_metrics.binomial_ci(k, n) == pytest.approx((want.low, want.high), abs=1e-9)


def test_human_only_texts_give_fpr_and_no_nan():
    human = np.array([0.1, 0.5, 0.9, 1.3, 2.0])
    m = pawn_metrics.metrics(human, np.zeros(5), threshold=1.0, fpr_threshold=0.8, target_fpr=0.05)
    assert m["fpr"] == pytest.approx(3 / 5) and m["n_flagged"] == 3 and m["recall_human"] == pytest.approx(3 / 5)
    assert (m["fpr_ci_low"], m["fpr_ci_high"]) == pytest.approx(pawn_metrics.binomial_ci(3, 5))
    for key in ("auroc", "macro_f1", "recall_at_5fpr", "accuracy_at_target_fpr"):
        assert key not in m and "needs human and machine texts" in m["omitted"][key]
    assert m["omitted"]["recall_machine"] == "no machine texts"
    assert all(np.isfinite(v) for v in pawn_metrics.finite(m).values())
    line = pawn_metrics.summary_line("det", m, 1.0)
    assert "nan" not in line.lower() and "test FPR 0.600" in line and "omitted auroc" in line
    machine_only = pawn_metrics.metrics(human, np.ones(5), threshold=1.0, fpr_threshold=0.8, target_fpr=0.05)
    assert "fpr" not in machine_only and machine_only["omitted"]["fpr"] == "no human texts"
    assert machine_only["recall_at_target_fpr"] == pytest.approx(3 / 5)
    uncalibrated = pawn_metrics.metrics(human, np.zeros(5), threshold=1.0, fpr_threshold=None, target_fpr=0.05)
    assert "calibrate" in uncalibrated["omitted"]["fpr"]


def test_per_group_fpr_table_against_a_hand_count():
    #            native: 4 human (2 flagged at >= 0.5), non-native: 5 human (4 flagged), one machine text each
    scores = [0.1, 0.6, 0.7, 0.2, 0.9, 0.55, 0.8, 0.9, 0.3, 0.95, 0.4, 0.99]
    labels = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1]
    groups = ["native"] * 5 + ["non-native"] * 6 + ["machine-only"]
    t = pawn_metrics.group_fpr(np.array(scores), np.array(labels), groups, threshold=0.5, column="group")
    rows = {r["group"]: r for r in t["rows"]}
    assert set(rows) == {"native", "non-native"} and t["omitted"] == {"machine-only": "no human texts"}
    assert (rows["native"]["n_human"], rows["native"]["n_flagged"]) == (4, 2)
    assert (rows["non-native"]["n_human"], rows["non-native"]["n_flagged"]) == (5, 4)
    assert rows["non-native"]["fpr"] == pytest.approx(0.8) and rows["native"]["fpr"] == pytest.approx(0.5)
    assert t["lowest"] == "native" and rows["non-native"]["ratio_to_lowest"] == pytest.approx(1.6)
    assert rows["native"]["ratio_to_lowest"] == pytest.approx(1.0)
    assert (rows["native"]["fpr_ci_low"], rows["native"]["fpr_ci_high"]) == pytest.approx(
        pawn_metrics.binomial_ci(2, 4))
    zero = pawn_metrics.group_fpr(np.array(scores), np.array(labels), groups, threshold=0.75)  # native: 0 of 4
    assert "no ratio" in zero["ratio_note"] and all("ratio_to_lowest" not in r for r in zero["rows"])


def test_per_generator_metrics_pair_with_human_texts_of_the_same_domains():
    # domain news: 3 human, generator g1 (2 texts); domain essays: 4 human, generator g2 (2 texts) and g1 (1 text)
    doms = ["news"] * 5 + ["essays"] * 7
    gens = ["human"] * 3 + ["g1"] * 2 + ["human"] * 4 + ["g2"] * 2 + ["g1"]
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.95, 0.99, 0.5, 0.6, 0.7, 0.75, 0.2])
    b = pawn_metrics.breakdowns(scores, labels, doms, gens, threshold=0.5)
    g = {r["generator"]: r for r in b["by_generator"]}
    assert g["g1"]["domains"] == ["essays", "news"] and (g["g1"]["n"], g["g1"]["n_human"]) == (10, 7)
    assert g["g2"]["domains"] == ["essays"] and (g["g2"]["n"], g["g2"]["n_human"]) == (6, 4)
    # g2 vs essays' humans only: 2 of 4 humans score above both g2 texts -> AUROC 0.5 (news humans would lift it)
    assert g["g2"]["auroc"] == pytest.approx(0.5)
    assert [r["domain"] for r in b["by_domain"]] == ["essays", "news"]


@pytest.fixture()
def tokenizer_variants(tmp_path, tiny_llama_dir):
    """Another model with the same tokenizer (weights present), one whose tokenizer maps two tokens to swapped ids
    (weights deleted: loading them would fail with another error)."""
    same = tmp_path / "same"
    shutil.copytree(tiny_llama_dir, same)
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_llama_dir, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    for f in other.glob("*.safetensors"):
        f.unlink()
    return same, other


def test_binoculars_pair_with_another_tokenizer_is_refused_before_loading(tokenizer_variants, tiny_llama_dir,
                                                                          monkeypatch, tmp_path):
    from components import modeling
    from tasks.pawn_data import PrepOptions
    from tasks.pawn_plan import check_same_tokenizer, plan_pawn

    same, other = tokenizer_variants

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded before the tokenizer check")

    monkeypatch.setattr(modeling, "load_model", no_loading)
    check_same_tokenizer(str(tiny_llama_dir), performer=str(same), observer=str(same))  # same tokenizer: fine
    for role in ("performer", "observer"):
        with pytest.raises(ValueError, match=rf"Binoculars {role} .*other-tokenizer.* does not share the tokenizer"
                                             r".*2 token\(s\) map to other ids.*nothing was loaded"):
            check_same_tokenizer(str(tiny_llama_dir), **{role: str(other)})
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "one two", "label": 0}\n{"text": "three four", "label": 1}\n')
    with pytest.raises(ValueError, match="does not share the tokenizer"):  # the first step of pawn / pawn-train
        plan_pawn.fn(str(tiny_llama_dir), ["binoculars"], [str(data)], [str(data)], PrepOptions(), observer=str(other))


def test_observer_statistics_come_from_the_observer(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    from components.detectors._features import extract
    from components.detectors.base import OBSERVER_AUX, PERFORMER_AUX
    from components.detectors.binoculars import Binoculars
    from tests.helpers.tiny import tiny_model

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    backbone, observer = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    texts = ["once upon a time there was a cat", "the dog ran to the park and sat down"]
    both = extract(backbone, tok, texts, max_length=32, observer=observer)
    assert both.aux_names == ("log_prob_sq",) + PERFORMER_AUX + OBSERVER_AUX
    alone = extract(observer, tok, texts, max_length=32)  # the observer as the backbone
    own = extract(backbone, tok, texts, max_length=32)
    for i in range(2):
        # observer log-prob = the observer's own next-token log-prob; performer = the backbone here
        assert np.allclose(both.metric("observer_log_prob")[i], alone.metric("next_token_log_prob")[i], atol=1e-5)
        assert np.allclose(both.metric("performer_log_prob")[i], own.metric("next_token_log_prob")[i], atol=1e-5)
    b = Binoculars(ppl_model="observer")
    want = -np.mean(alone.metric("next_token_log_prob")[0]) / np.mean(both.metric("cross_entropy")[0])
    assert b.score(both)[0] == pytest.approx(want, rel=1e-5)
    assert "observer=cached observer" in b.describe(both)["binoculars.models"]
