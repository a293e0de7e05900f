"""compare with prompt components: a cell holds a prompt component, a patch, or both (``pgi+zerotuning``)."""

from __future__ import annotations

import json

import mlflow
import pytest

from flows.compare import compare
from infra.settings import settings
from registry.specs import SpecError
from tasks.plan import plan_request

pytestmark = pytest.mark.flows

TEXTS = ["a joy to watch", "dull and tired", "bright and funny", "a waste of time", "warm and clever",
         "flat and boring", "sharp and moving", "slow and empty", "a real delight", "noisy and dumb"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt-data") / "sentiment.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": i % 2 == 0}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def test_prompt_and_patch_cells_in_one_compare(source, tiny_llama_dir):
    task = f"classification(source={source}, labels=False;True, shots=1, n_examples=5)"
    components = ["baseline", "pgi(persona=, grouping=, intelligence=)", "pgi", "zerotuning(gamma=3)",
                  "pgi+zerotuning(gamma=3)"]
    out = compare(model=str(tiny_llama_dir), components=components, tasks=[task], seeds=[0],
                  experiment="prompt-compare-test", progress=False)
    table = out["table"]
    assert set(table["rows"]) == {"baseline", "pgi(persona=, grouping=, intelligence=)", "pgi",
                                  "zerotuning(gamma=3.0)", "pgi+zerotuning(gamma=3.0)"}
    acc = {row: table["cells"][row]["classification/accuracy"]["mean"] for row in table["rows"]}
    assert acc["pgi(persona=, grouping=, intelligence=)"] == acc["baseline"]  # identity prompt = plain prompt

    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["prompt-compare-test"], output_format="list")
    children = {r.data.tags["attnflow.component_label"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == out["run_id"]}
    both = children["pgi+zerotuning(gamma=3.0)"].data.tags
    assert both["attnflow.component"] == "zerotuning" and both["attnflow.prompt"].startswith("pgi@1.0.0")
    assert both["attnflow.fingerprint"] != children["zerotuning(gamma=3.0)"].data.tags["attnflow.fingerprint"]
    assert "attnflow.prompt" not in children["zerotuning(gamma=3.0)"].data.tags


@pytest.mark.parametrize("components, message", [
    (["pgi+sca"], "at most one prompt component and one patch"),
    (["zerotuning+act"], "at most one prompt component and one patch"),
    (["pgi+nope"], "unknown patch component 'nope'"),
])
def test_bad_cells_fail_before_any_model_work(components, message, source, tiny_llama_dir):
    with pytest.raises((SpecError, LookupError), match=message):
        plan_request.fn(str(tiny_llama_dir), components, [f"classification(source={source})"])


def test_prompt_components_need_benchmarks_that_build_query_rows(tiny_llama_dir):
    with pytest.raises(SpecError, match="pgi rewrites prompts, and kv_retrieval builds no query/content rows"):
        plan_request.fn(str(tiny_llama_dir), ["pgi"], ["kv_retrieval"])
