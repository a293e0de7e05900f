"""Head search is method-agnostic: a searchable patch defined here, in its test alone (no edit to the flow, its tasks,
the command or the registry), is searched end to end with its own trial parameters, selection rule and grid; and
the flow, task and command sources name no method."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import registry
from components.attention.types import CallInfo
from components.heads import HeadSet
from components.patches.base import AttentionPatch
from components.search import HeadSearch
from flows.head_search import head_search
from tests.helpers.counting import counting

TASK = "icl_classification(n_examples=6, n_demos=4)"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LargestChange(HeadSearch):
    """Keep the two heads whose trial changes the objective most, in either direction."""

    def select(self, table: list[dict[str, Any]], min_gain: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return sorted(table, key=lambda r: -abs(r["gain"]))[:2], {"rule": "largest |gain|"}


@dataclass(frozen=True)
class QueryScale(AttentionPatch):
    """Test-only patch: the queries of the chosen heads times ``scale`` (a softmax temperature of 1 / scale)."""

    scale: float = 1.0
    heads: HeadSet = HeadSet.all()

    head_search: ClassVar[HeadSearch] = LargestChange(trial={"scale": 0.0}, grid={"scale": (0.5, 2.0)})

    def query_scale(self, call: CallInfo) -> torch.Tensor | None:
        return self.head_vector(call, on=self.scale, off=1.0) if self.active(call) else None  # (H,)


@pytest.fixture
def query_scale_registered():
    registry.discover()
    registry.register("test_query_scale", version="1.0.0", family="patch", summary="test only")(QueryScale)
    yield
    with registry._lock:  # leave the registry as the other tests expect it
        registry._entries.pop("test_query_scale", None)


def test_a_patch_declared_in_its_test_is_searched_with_its_own_rules(query_scale_registered, tiny_llama_dir):
    with counting() as counts:
        out = head_search(model=str(tiny_llama_dir), method="test_query_scale", task=TASK, layers="0:0-1,1:0",
                          objective="entropy", experiment="head-search-test")
    # specs resolved once in the plan: the patch is never parsed, and built once per trial, grid value, candidate
    # and grid point (1 + 2 + 3 + 2), never again inside a task
    assert counts["parse"]["test_query_scale"] == 0 and counts["parse"]["icl_classification"] == 1, counts["parse"]
    assert counts["build"]["test_query_scale"] == 8, counts["build"]
    sel = out["selection"]
    assert sel["method"] == "test_query_scale" and sel["rule"] == "largest |gain|"
    assert sel["params"] == {"scale": 0.0} and len(sel["gains"]) == 3
    by_change = sorted(sel["gains"], key=lambda r: -abs(r["gain"]))
    assert out["heads"] == sorted([r["layer"], r["head"]] for r in by_change[:2])
    assert {r["params"]["scale"] for r in sel["refine_grid"]} == {0.5, 2.0}  # the patch's grid, on the chosen heads
    best = max(sel["refine_grid"], key=lambda r: r["gain"])
    assert out["refined"] == (best["params"] if best["gain"] > 0 else None)


def test_unsearchable_patch_is_refused_naming_the_searchable_ones(query_scale_registered, tiny_llama_dir):
    from tasks.head_search import plan_search

    with pytest.raises(ValueError, match="'baseline' is not a patch that declares a head search; searchable "
                                         "patches: act, head_mask, test_query_scale, zerotuning"):
        plan_search.fn(str(tiny_llama_dir), "baseline", TASK, {}, "all", "accuracy")
    with pytest.raises(ValueError, match=re.escape("test_query_scale.scale: 'x' is not a number")):
        plan_search.fn(str(tiny_llama_dir), "test_query_scale", TASK, {}, "all", "accuracy", {"scale": ["x"]})


def test_flow_tasks_and_command_name_no_method():
    registry.discover()
    names = [i.name for i in registry.latest("patch") if i.cls.head_search is not None]
    assert {"act", "zerotuning", "head_mask"} <= set(names)
    for path in ("flows/head_search.py", "tasks/head_search.py", "attnflow/commands/head_search.py"):
        text = (ROOT / path).read_text()
        for name in names:  # as a string or a spec ("act" is also an English word: "a patch should act on")
            assert not re.search(rf"[\"'`]{name}\b", text), f"{path} names {name!r}"
        for word in ("zerotuning", "head_mask", "ACT", "gamma"):
            assert not re.search(rf"\b{word}\b", text), f"{path} names {word!r}"
