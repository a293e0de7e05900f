"""ONNX helpers without models: sampling, provider reports, parity inputs, graph rewrites, exporting()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.attention import math as am
from components.onnx import optimize as onnx_optimize
from components.onnx.export import NotExportableError, check_exportable, position_ids
from components.onnx.generate import ProviderReport, pick
from components.onnx.parity import parity_cases


def test_exporting_is_true_while_torch_export_traces():
    """torch.onnx.export(dynamo=True) traces with torch.export (non-strict): the dispatcher must see it."""

    class Probe(torch.nn.Module):
        def forward(self, x):
            return x * (2.0 if am.exporting() else 1.0) + (10.0 if am.lse_available(x) else 0.0)

    ep = torch.export.export(Probe(), (torch.ones(3),), strict=False)
    assert torch.equal(ep.module()(torch.ones(3)), torch.full((3,), 2.0))  # exporting, no log-sum-exp kernel
    assert not am.exporting() and am.lse_available(torch.ones(1))


def test_pick_greedy_and_sampling():
    rng = np.random.default_rng(0)
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    assert pick(logits, False, 1.0, 0, rng).tolist() == [1, 0]
    assert pick(logits, True, 1.0, 1, rng).tolist() == [1, 0]  # top-1 sampling is greedy
    draws = {int(pick(logits[:1], True, 1.0, 2, rng)[0]) for _ in range(200)}
    assert draws == {1, 3}  # only the two best tokens
    a = pick(np.zeros((1, 50)), True, 1.0, 0, np.random.default_rng(7))
    assert a.tolist() == pick(np.zeros((1, 50)), True, 1.0, 0, np.random.default_rng(7)).tolist()
    with pytest.raises(ValueError, match="temperature=0 must be > 0"):
        pick(logits, True, 0, 0, rng)


def test_provider_report_says_when_it_fell_back():
    fell = ProviderReport("cuda", ("CPUExecutionProvider",))
    assert fell.fell_back
    assert fell.message.startswith("CUDAExecutionProvider was requested but is not active: ONNX Runtime fell back "
                                   "to CPUExecutionProvider")
    ok = ProviderReport("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert not ok.fell_back and ok.message == "ONNX Runtime is running on CUDAExecutionProvider"
    assert not ProviderReport("cpu", ("CPUExecutionProvider",)).fell_back


def test_parity_cases_fixed_random_lengths_and_padding():
    cases = parity_cases(100, [8, 20], batch=3, fixed_ids=[5, 6, 7])
    assert [c.name for c in cases] == ["fixed_T8", "random_T8_leftpad", "fixed_T20", "random_T20_leftpad"]
    assert cases[0].input_ids[0].tolist() == [5, 6, 7, 5, 6, 7, 5, 6] and cases[0].attention_mask.all()
    padded = cases[3].attention_mask
    assert padded.shape == (3, 20) and padded[-1, :5].sum() == 0 and padded[:-1].all()
    with pytest.raises(ValueError, match="batch=1: use >= 2"):
        parity_cases(100, [8], batch=1)


def test_positions_follow_generate_for_left_padding():
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert position_ids(mask, 4).tolist() == [[0, 1, 2, 3], [1, 1, 0, 1]]
    assert position_ids(mask, 1).tolist() == [[3], [1]]


def test_not_exportable_component_names_the_reason():
    class Custom:
        onnx_exportable = False
        onnx_reason = "it calls a custom CUDA kernel"
        ref = "custom@1.0.0"

    with pytest.raises(NotExportableError, match="custom@1.0.0 cannot be exported to ONNX: it calls a custom CUDA"):
        check_exportable([Custom()])
    Custom.onnx_reason = ""
    with pytest.raises(NotExportableError, match="declares onnx_exportable = False"):
        check_exportable([Custom()])
    Custom.onnx_exportable, Custom.needs_inputs = True, True
    with pytest.raises(NotExportableError, match=r"reads per-batch inputs \(session.set_inputs"):
        check_exportable([Custom()])


def test_gemm_becomes_matmul_exactly(tmp_path):
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    b = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))
    onnx_optimize.gemm_to_matmul(model)
    path = tmp_path / "m.onnx"
    onnx.save(ir.to_proto(model), path)
    assert onnx_optimize.op_counts(path) == {"MatMul": 1, "Add": 1}
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-6, atol=1e-6)
    io = onnx_optimize.graph_io(path)
    assert io["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["n", 4]}]
    assert io["dynamic_axes"] == {"x": {"0": "n"}, "y": {"0": "n"}} and io["opset"] == 18


def test_fusion_steps_keep_rotary_out_of_group_query_attention():
    import transformers.exporters.onnxruntime_fusions as hf

    steps = onnx_optimize.fusion_steps("cpu")
    assert steps[0] is onnx_optimize.gemm_to_matmul and steps[-1] is onnx_optimize.forget_intermediate_shapes
    gqa = [s for s in steps if getattr(s, "func", None) is hf._fuse_group_query_attention]
    assert len(gqa) == 1 and gqa[0].keywords["rotary"] is False
    assert onnx_optimize.fused_ops({"MatMul": 3, "com.microsoft:GroupQueryAttention": 2, "Attention": 1}) == \
        {"Attention": 1, "com.microsoft:GroupQueryAttention": 2}
    assert onnx_optimize.attention_summary({"Softmax": 2}) == "unfused"
    with pytest.raises(ValueError, match="optimize target 'fast' is not one of none, ort-cpu, ort-gpu"):
        onnx_optimize.optimize("x.onnx", "fast")
