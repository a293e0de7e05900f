"""Few-shot / PASTA claims end to end on a tiny model and a tiny user file the test writes (real head-search flow,
real Prefect server and MLflow store). Structure and finiteness only: a tiny random model's verdict means nothing."""

from __future__ import annotations

import json
import math

from tasks.claims_fewshot import CLAIMS

SMALL = {"n_test": 6, "n_val": 5, "n_train": 12, "shots": 2, "n_fit": 10, "site_shots": 2, "site_prompts": 2,
         "site_steps": 2, "site_valid_every": 1, "batch_size": 4}


def _user_file(path):
    words = {"positive": ["good", "great", "fine"], "negative": ["bad", "awful", "poor"]}
    rows = [{"text": f"the story was {w} and the end was {w}", "label": label}
            for i in range(5) for label, ws in words.items() for w in ws]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _check(out, name, seeds):
    assert out["claim"] == name and out["verdict"] in ("held", "not held", "inconclusive") and out["reason"]
    assert out["n_seeds"] == len(seeds) and [r["seed"] for r in out["per_seed"]] == seeds
    assert out["wall_s"] >= 0 and out["paper"] == CLAIMS[name].paper
    for row in out["per_seed"]:
        assert all(math.isfinite(v) for k, v in row.items() if k != "seed")
    if out["ci"]:
        lo, hi = out["ci"]["gain"]
        assert math.isfinite(lo) and lo <= out["figures"]["gain"] <= hi


def test_zerotuning_unsupervised_claim_end_to_end(tiny_llama_dir, tmp_path):
    src = _user_file(tmp_path / "reviews.jsonl")
    out = CLAIMS["zerotuning_unsupervised"].run(str(tiny_llama_dir), seeds=[0, 1], data={"toy": src},
                                                datasets=["toy"], **SMALL)
    _check(out, "zerotuning_unsupervised", [0, 1])
    row = out["per_seed"][0]
    assert 0 <= row["toy/baseline_acc"] <= 1 and 0 <= row["toy/method_acc"] <= 1
    details = out["details"]["toy"]
    assert details["n"] == {"test": 6, "val": 5, "train": 12} and details["search"]["search_run"]
    assert details["component"].startswith(("zerotuning@", "none"))


def test_soft_injection_claim_end_to_end(tiny_llama_dir, tmp_path):
    src = _user_file(tmp_path / "reviews.jsonl")
    out = CLAIMS["soft_injection"].run(str(tiny_llama_dir), seeds=[0, 1], data={"toy": src}, datasets=["toy"],
                                       **SMALL)
    _check(out, "soft_injection", [0, 1])
    assert 0 <= out["figures"]["toy/zero_shot_acc"] <= 1


def test_pasta_claim_end_to_end(tiny_llama_dir):
    out = CLAIMS["pasta"].run(str(tiny_llama_dir), seeds=[0, 1], data={}, per_instruction=1, max_new_tokens=4)
    _check(out, "pasta", [0, 1])
    figures = out["figures"]
    assert 0 <= figures["baseline_compliance"] <= 1 and 0 <= figures["method_compliance"] <= 1
    assert figures["ppl_off"] > 1 and figures["ppl_pasta"] > 1 and math.isfinite(figures["ppl_change"])
    assert len(out["details"]["examples"]) == 2 * 5 and out["details"]["heads"] == "0-0:*"
