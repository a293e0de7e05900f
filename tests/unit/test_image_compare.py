"""tasks/image_compare: per-seed means over prompts, t intervals over seeds, paired deltas to the baseline stack,
NaN metrics skipped, one seed gives no interval."""

from __future__ import annotations

import math

import pytest

from tasks.claims_stats import t_interval
from tasks.image_compare import compare_over_seeds, comparison_markdown


def _records():
    # stack -> seed -> prompt -> binding; position NaN for prompt 1 (no cell asked)
    table = {"baseline": {0: [0.0, 1.0], 1: [0.5, 0.5], 2: [1.0, 0.0]},
             "rasg": {0: [1.0, 1.0], 1: [0.5, 1.0], 2: [1.0, 0.5]}}
    return [{"stack": st, "seed": seed, "prompt_index": p,
             "metrics": {"binding": v, "position": math.nan if p == 1 else v, "seconds_per_image": 0.1}}
            for st, by_seed in table.items() for seed, vals in by_seed.items() for p, v in enumerate(vals)]


def test_paired_deltas_and_intervals_over_seeds():
    comp = compare_over_seeds(_records())
    assert comp["reference"] == "baseline" and comp["seeds"] == [0, 1, 2]
    base, rasg = comp["stacks"]["baseline"], comp["stacks"]["rasg"]
    assert "seconds_per_image" not in base and "delta" not in base["binding"]
    assert base["binding"]["per_seed"] == [0.5, 0.5, 0.5] and rasg["binding"]["per_seed"] == [1.0, 0.75, 0.75]
    d = rasg["binding"]["delta"]
    assert d["per_seed"] == [0.5, 0.25, 0.25] and d["mean"] == pytest.approx(1 / 3)
    assert d["ci95"] == pytest.approx(list(t_interval([0.5, 0.25, 0.25])))
    assert rasg["position"]["per_seed"] == [1.0, 0.5, 1.0]  # prompt 1's NaN skipped
    text = comparison_markdown(comp)
    assert "| rasg |" in text and "Δ+0.333" in text and "paired difference to 'baseline'" in text


def test_one_seed_has_no_interval_and_no_baseline_uses_the_first_stack():
    one = [r for r in _records() if r["seed"] == 0]
    assert compare_over_seeds(one)["stacks"] == {} and "one seed" in comparison_markdown(compare_over_seeds(one))
    renamed = [{**r, "stack": "plain" if r["stack"] == "baseline" else r["stack"]} for r in _records()]
    assert compare_over_seeds(renamed)["reference"] == "plain"
