"""Few-shot / PASTA claims: interval and verdict arithmetic, dataset usability, instruction checkers, prompt sets
and the disjoint data splits (no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from components.base import ParamError
from tasks import claims_pasta as cp
from tasks import claims_stats as stats
from tasks.claims_fewshot import CLAIMS, Sizes, prepare_splits, summarize


# -- statistics ------------------------------------------------------------------------------------------------------
def test_t_interval_matches_hand_computation():
    lo, hi = stats.t_interval([0.0, 1.0, 2.0])  # mean 1, sd 1, n 3 -> half width 4.303 / sqrt(3)
    half = 4.303 / math.sqrt(3)
    assert lo == pytest.approx(1 - half) and hi == pytest.approx(1 + half)
    assert stats.t_interval([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2))
    assert stats.t_quantile(40) == 1.96 and stats.t_quantile(1) == 12.706


@pytest.mark.parametrize("values", [[1.0], [], [0.1, float("nan")], [0.1, float("inf")]])
def test_t_interval_rejects_too_few_or_non_finite(values):
    with pytest.raises(ValueError):
        stats.t_interval(values)


@pytest.mark.parametrize("ci,verdict", [((0.01, 0.2), "held"), ((-0.2, -0.01), "not held"), ((-0.1, 0.0), "not held"),
                                        ((0.0, 0.1), "inconclusive"), ((-0.05, 0.05), "inconclusive")])
def test_verdict_from_ci(ci, verdict):
    assert stats.verdict_from_ci(ci) == verdict


def test_verdict_rejects_reversed_interval():
    with pytest.raises(ValueError):
        stats.verdict_from_ci((0.2, 0.1))


def test_chance_and_usability():
    assert stats.chance_rate(["a", "a", "b", "c"]) == 0.5
    assert stats.usable([0.56, 0.54], chance=0.5)  # mean 0.55 = chance + 5 points
    assert not stats.usable([0.54, 0.54], chance=0.5)
    with pytest.raises(ValueError):
        stats.chance_rate([])


def _dataset(base, method, chance=0.5):
    return {"baseline": base, "method": method, "chance": chance}


def test_summarize_held_not_held_and_chance_exclusion():
    seeds = [0, 1, 2]
    held = summarize("act", {"a": _dataset([0.7, 0.72, 0.68], [0.8, 0.81, 0.79]),
                             "b": _dataset([0.5, 0.5, 0.5], [0.9, 0.9, 0.9])}, seeds)  # b: at chance, left out
    assert held["verdict"] == "held" and held["figures"]["usable_datasets"] == ["a"]
    assert held["figures"]["gain"] == pytest.approx(0.1) and held["ci"]["gain"][0] > 0
    assert "at chance and left out: b" in held["reason"]
    assert [r["gain"] for r in held["per_seed"]] == pytest.approx([0.1, 0.09, 0.11])
    worse = summarize("act", {"a": _dataset([0.7, 0.72, 0.68], [0.6, 0.63, 0.6])}, seeds)
    assert worse["verdict"] == "not held"
    mixed = summarize("act", {"a": _dataset([0.7, 0.7, 0.7], [0.75, 0.65, 0.72])}, seeds)
    assert mixed["verdict"] == "inconclusive"


def test_summarize_no_usable_dataset_is_inconclusive():
    out = summarize("act", {"a": _dataset([0.5, 0.52, 0.5], [0.9, 0.9, 0.9])}, [0, 1, 2])
    assert out["verdict"] == "inconclusive" and "cannot do" in out["reason"] and out["ci"] == {}


# -- instruction checkers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("check,passing,failing", [
    (cp.all_caps, ["THE BOATS RETURN AT NOON.", " YES, 42 TIMES!"], ["The boats return", "12 34", ""]),
    (cp.one_word, ["Noon.", "  tools ", "\"Honey\"", "42"], ["At noon.", "", "..."]),
    (cp.begins_yes, ["Yes, at noon.", "  Yes.", "\"Yes\" they do"], ["yes, at noon", "Yesterday.", "No. Yes."]),
    (cp.uses_she, ["She sells honey.", "Then she left", "SHE said so"], ["He sells honey.", "shelves", "ashes"]),
    (cp.answer_format, ["Answer: at noon", "  Answer: 5"], ["answer: at noon", "The answer: noon", "Answer noon"]),
])
def test_instruction_checkers(check, passing, failing):
    assert all(check(s) for s in passing), [s for s in passing if not check(s)]
    assert not any(check(s) for s in failing), [s for s in failing if check(s)]


def test_prompt_set_is_deterministic_and_marks_the_instruction():
    a, b, c = cp.prompt_set(0), cp.prompt_set(0), cp.prompt_set(1)
    assert a == b and a != c
    assert len(a) == 2 * len(cp.INSTRUCTIONS)
    for item in a:
        first = item["message"].split("\n", 1)[0]
        assert first == f"Instruction: {item['instruction']}" and item["instruction"] in cp.INSTRUCTIONS


def test_steered_heads_is_the_middle_third():
    assert cp.steered_heads(30) == "10-19:*"
    assert cp.steered_heads(2) == "0-0:*"


# -- data splits and options -------------------------------------------------------------------------------------------
def _write(path, n, labels=("neg", "pos")):
    path.write_text("".join(json.dumps({"text": f"row {i}", "label": labels[i % len(labels)]}) + "\n"
                            for i in range(n)))
    return str(path)


def test_prepare_splits_are_disjoint_and_sized(tmp_path):
    sizes = Sizes(n_test=8, n_val=6, n_train=10, shots=2)
    out = prepare_splits(_write(tmp_path / "d.jsonl", 40), sizes, root=tmp_path / "cache")
    parts = {k: [json.loads(line)["text"] for line in Path(out[k]).read_text().splitlines()]
             for k in ("test", "val", "train")}
    assert [len(parts[k]) for k in ("test", "val", "train")] == [8, 6, 10]
    assert not set(parts["test"]) & set(parts["val"]) and not set(parts["train"]) & (set(parts["test"]) |
                                                                                     set(parts["val"]))
    assert out["labels"] == ["neg", "pos"] and 0.5 <= out["chance"] <= 1
    again = prepare_splits(_write(tmp_path / "d.jsonl", 40), sizes, root=tmp_path / "cache")
    assert again["test"] == out["test"]  # same content -> same files


def test_prepare_splits_errors_name_the_problem(tmp_path):
    with pytest.raises(ParamError, match="n_test=8"):
        prepare_splits(_write(tmp_path / "small.jsonl", 12), Sizes(n_test=8, n_val=6, shots=2), root=tmp_path)
    with pytest.raises(ParamError, match="single label"):
        prepare_splits(_write(tmp_path / "one.jsonl", 40, labels=("x",)), Sizes(n_test=8, n_val=6, shots=2),
                       root=tmp_path)


def test_sizes_validation():
    with pytest.raises(ParamError, match="n_val"):
        Sizes(n_val=3, shots=4)
    with pytest.raises(ParamError, match="unknown claim option"):
        Sizes.from_options({"n_tset": 3})
    assert Sizes.from_options({"n_test": 5, "datasets": ["a"]}).n_test == 5


def test_missing_dataset_is_inconclusive_without_compute():
    out = CLAIMS["act"].run("no-such-model", seeds=[0, 1, 2], data={"sst2": "x.jsonl"})
    assert out["verdict"] == "inconclusive" and out["reason"] == "no agnews dataset given"
    assert out["claim"] == "act" and out["n_seeds"] == 3 and out["per_seed"] == []


def test_claims_follow_the_interface():
    assert set(CLAIMS) == {"act", "zerotuning_supervised", "zerotuning_unsupervised", "soft_injection", "pasta"}
    for name, claim in CLAIMS.items():
        assert claim.name == name and claim.paper.startswith("arXiv:") and claim.criterion and callable(claim.run)
    assert CLAIMS["pasta"].needs_data == () and CLAIMS["act"].needs_data == ("sst2", "agnews", "trec")
