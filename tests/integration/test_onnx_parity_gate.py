"""The parity gate (error / float32 floor + token agreement) passes a correct export and catches real export bugs.

Each bug is a graph that differs from the reference by one realistic mistake, exported for real from a tiny Llama
(4 layers) and checked against the correct patched model: ZeroTuning's gamma off by 1%, its bias on the wrong key
(the second real token instead of the first), and one head's output dropped (zeroed) in the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from components.attention.types import CallInfo, KeyBias
from components.onnx import export as onnx_export
from components.onnx import optimize as onnx_optimize
from components.onnx.parity import DEFAULT_MULTIPLE, check_parity
from components.patches.zerotuning import ZeroTuning
from registry.specs import parse
from tests.helpers.tiny import tiny_model

REFERENCE = "zerotuning(gamma=3)"
LENGTHS = (9, 24)


@dataclass(frozen=True)
class ZeroTuningWrongKey(ZeroTuning):
    """The bug: log(gamma) on each row's second real token instead of its first (not registered)."""

    def key_bias(self, call: CallInfo) -> KeyBias | None:
        coef = self.head_vector(call, on=math.log(self.gamma), off=0.0)  # (H,)
        return KeyBias(coef=coef, index=call.first_real()[:, None] + 1)  # (B, 1)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=4)


def _exported(model, patches, tmp_path_factory):
    out = tmp_path_factory.mktemp("gate")
    for info in onnx_export.export_graphs(model, patches, out, kv_cache=True, form="bias"):
        onnx_optimize.optimize(out / info.file, "ort-cpu")
    return out


def _gate(model, exported_patches, tmp_path_factory):
    out = _exported(model, exported_patches, tmp_path_factory)
    return check_parity(model, [parse(REFERENCE).create("patch")], out, lengths=LENGTHS, steps=8)


def test_correct_export_passes_with_a_floor_that_is_measured(model, tmp_path_factory):
    result = _gate(model, [parse(REFERENCE).create("patch")], tmp_path_factory)
    assert result["passed"], result["worst"]
    assert result["multiple"] == DEFAULT_MULTIPLE and result["max_ratio"] <= DEFAULT_MULTIPLE
    for name, w in result["worst"].items():  # float32 really differs from float64: the floor is not zero
        assert w["floor"] > 0, name
    assert set(result["worst"]) == {"logits", "present", "decode", "text_decode"}
    tokens = result["tokens"]
    assert tokens["predictions"] == 9 and tokens["agreement_ok"]
    assert tokens["greedy_agreement"] == 1.0
    case = result["cases"][0]
    assert case["logit_std"] > 0 and case["rel_logits"] == pytest.approx(case["logits"]["err"] / case["logit_std"])


@pytest.mark.parametrize("bug, exported", [
    ("gamma off by 1%", "zerotuning(gamma=3.03)"),
    ("bias on the wrong key", "wrong-key"),
    ("one head dropped", "zerotuning(gamma=3)+head_mask(heads=2:1, mode=zero)"),
])
def test_export_bugs_fail_the_gate(bug, exported, model, tmp_path_factory):
    if exported == "wrong-key":
        patches = [ZeroTuningWrongKey(gamma=3.0)]
    else:
        patches = [parse(s).create("patch") for s in exported.split("+")]
    result = _gate(model, patches, tmp_path_factory)
    assert not result["passed"], bug
    assert result["max_ratio"] > 10 * DEFAULT_MULTIPLE, (bug, result["worst"])  # not a borderline miss
    assert result["worst"]["logits"]["ratio"] > DEFAULT_MULTIPLE
