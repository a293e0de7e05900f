"""Typed plans: one compare cell parses each spec once, builds each component once and reads the model config
twice (the plan, the model load); before ResolvedSpec the same cell parsed ZeroTuning 5 times, built it 4 times and
read the config 5 times (tests/helpers/count_compare.py prints both)."""

from __future__ import annotations

from flows.compare import compare
from flows.evaluate import evaluate
from tests.helpers.counting import counting


def test_one_compare_cell_parses_and_builds_each_spec_once(tiny_llama_dir):
    with counting() as counts:
        out = compare(model=str(tiny_llama_dir), components=["zerotuning(gamma=2.5)"],
                      tasks=["kv_retrieval(n_examples=3)"], seeds=[0], experiment="counts-test", progress=False)
    assert out["table"]["rows"] == ["zerotuning(gamma=2.5)"]
    assert counts["parse"] == {"zerotuning": 1, "kv_retrieval": 1, "*": 2}, counts["parse"]
    assert counts["build"]["zerotuning"] == 1, counts["build"]
    # the benchmark: once in the plan, and once more inside the data-prep task when its Parquet is not cached yet
    assert 1 <= counts["build"]["kv_retrieval"] <= 2, counts["build"]
    assert counts["config"]["*"] == 2, counts["config"]  # the plan, the model load (model and tokenizer share it)


def test_evaluate_flow_parses_each_spec_once(tiny_llama_dir):
    with counting() as counts:
        evaluate(model=str(tiny_llama_dir), component="head_mask", params={"heads": "0:1"},
                 task="kv_retrieval", task_params={"n_examples": "3"}, seeds=[1], experiment="counts-test",
                 progress=False)
    assert counts["parse"] == {"head_mask": 1, "kv_retrieval": 1, "*": 2}, counts["parse"]
    assert counts["build"]["head_mask"] == 1, counts["build"]
