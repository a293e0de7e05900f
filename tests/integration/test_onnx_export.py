"""ONNX export of patched tiny models: parity with PyTorch, fusions, KV-cache generation, providers, bad input.

Exports take seconds each, so every exported directory is a module-scoped fixture shared by the tests reading it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import registry
from components.attention.session import applied
from components.onnx import export as onnx_export
from components.onnx import optimize as onnx_optimize
from components.onnx.generate import OnnxCausalLM, open_session
from components.onnx.parity import check_parity
from registry.specs import parse
from tests.helpers.compare import TOL, patched_vs_reference
from tests.helpers.tiny import FAMILIES, tiny_model


def _export(tmp_path_factory, family, spec, *, kv_cache, target, form="bias"):
    model = tiny_model(family)
    patches = [] if spec is None else [parse(spec).create("patch")]
    out = tmp_path_factory.mktemp(f"onnx-{family}")
    infos = onnx_export.export_graphs(model, patches, out, kv_cache=kv_cache, form=form)
    for info in infos:
        onnx_optimize.optimize(out / info.file, target)
    return model, patches, out


@pytest.fixture(scope="module")
def llama_zt(tmp_path_factory):
    """Llama + ZeroTuning on some heads, prefill + decode graphs, fused for the CPU provider."""
    return _export(tmp_path_factory, "llama", "zerotuning(gamma=3, heads=0:1;1:*)", kv_cache=True, target="ort-cpu")


@pytest.fixture(scope="module")
def qwen2_head_mask(tmp_path_factory):
    """Qwen2 + uniform head masking, prefill graph only, plain (unfused) graph."""
    return _export(tmp_path_factory, "qwen2", "head_mask(heads=0:1;1:3)", kv_cache=False, target="none")


@pytest.fixture(scope="module")
def gpt2_plain(tmp_path_factory):
    """GPT-2 without any patch, prefill + decode, fused for the CPU provider."""
    return _export(tmp_path_factory, "gpt2", None, kv_cache=True, target="ort-cpu")


@pytest.mark.parametrize("fixture", ["llama_zt", "qwen2_head_mask", "gpt2_plain"])
def test_parity_with_patched_pytorch(fixture, request):
    model, patches, out = request.getfixturevalue(fixture)
    result = check_parity(model, patches, out, lengths=(9, 40))
    assert result["passed"], result["worst"]
    assert result["max_abs_diff"] <= 1e-4
    assert {c["case"] for c in result["cases"]} >= {"fixed_T9", "random_T40_leftpad"}
    assert all(c["batch"] == 2 for c in result["cases"])
    assert ("decode" in result["worst"]) == (out / onnx_export.DECODE_FILE).is_file()


def test_exported_graph_contains_the_patch(llama_zt):
    """The graph computes the patched model, not the stock one (ZeroTuning moves logits far beyond the tolerance)."""
    model, patches, out = llama_zt
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    logits, _ = OnnxCausalLM(out).prefill(ids.numpy(), mask.numpy())
    with torch.no_grad():
        stock = model(input_ids=ids, attention_mask=mask).logits.numpy()
        with applied(model, *patches):
            patched = model(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(logits - patched).max() <= 1e-4
    assert np.abs(logits - stock).max() > 1e-2


def test_fused_ops_and_dynamic_axes(llama_zt, qwen2_head_mask):
    _, _, out = llama_zt
    for name in (onnx_export.PREFILL_FILE, onnx_export.DECODE_FILE):
        counts = onnx_optimize.op_counts(out / name)
        fused = onnx_optimize.fused_ops(counts)
        # the additive-bias form of ZeroTuning fuses into GroupQueryAttention, one per layer
        assert fused.get("com.microsoft:GroupQueryAttention") == 2, fused
        assert onnx_optimize.attention_summary(counts) == "GroupQueryAttention"
    io = onnx_optimize.graph_io(out / onnx_export.DECODE_FILE)
    assert [i["name"] for i in io["inputs"]][:3] == ["input_ids", "attention_mask", "past.0.key"]
    assert io["dynamic_axes"]["input_ids"] == {"0": "batch"}
    assert io["dynamic_axes"]["past.0.key"] == {"0": "batch", "2": "past"}
    prefill = onnx_optimize.graph_io(out / onnx_export.PREFILL_FILE)
    assert prefill["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "seq"}
    assert [o["name"] for o in prefill["outputs"]] == ["logits", *onnx_export.present_names(2)]
    _, _, plain = qwen2_head_mask
    counts = onnx_optimize.op_counts(plain / onnx_export.PREFILL_FILE)
    assert onnx_optimize.fused_ops(counts) == {} and onnx_optimize.attention_summary(counts) == "unfused"


def _torch_generate(model, patches, ids, mask, n):
    with torch.no_grad(), applied(model, *patches):
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                              pad_token_id=0).numpy()


@pytest.mark.parametrize("fixture", ["llama_zt", "gpt2_plain"])
def test_greedy_generation_matches_pytorch_with_kv_cache(fixture, request):
    model, patches, out = request.getfixturevalue(fixture)
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    lm = OnnxCausalLM(out)
    assert lm.has_kv_cache
    got = lm.generate(ids.numpy(), mask.numpy(), max_new_tokens=10, eos_token_id=2, pad_token_id=0)
    want = _torch_generate(model, patches, ids, mask, 10)
    assert got.tolist() == want.tolist()
    lm.decode_session = None  # without the decode graph: the prefill graph re-run on the growing sequence
    assert lm.generate(ids.numpy(), mask.numpy(), max_new_tokens=10, eos_token_id=2, pad_token_id=0).tolist() \
        == want.tolist()


def test_sampling_is_seeded_and_top_k_1_is_greedy(llama_zt):
    _, _, out = llama_zt
    lm = OnnxCausalLM(out)
    ids = np.array([[5, 17, 42, 99, 7]])
    a = lm.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    b = lm.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    c = lm.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.5, seed=4)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    greedy = lm.generate(ids, max_new_tokens=8)
    assert lm.generate(ids, max_new_tokens=8, do_sample=True, top_k=1, seed=9).tolist() == greedy.tolist()


def test_cuda_provider_reports_what_actually_runs(llama_zt):
    _, _, out = llama_zt
    session, report = open_session(out / onnx_export.PREFILL_FILE, "cuda")
    assert report.active == tuple(session.get_providers())
    assert report.fell_back == ("CUDAExecutionProvider" not in session.get_providers())
    if report.fell_back:  # no usable GPU here: the fallback is said, not silent
        assert "CUDAExecutionProvider was requested but is not active" in report.message
        assert "fell back to CPUExecutionProvider" in report.message
    cpu_session, cpu = open_session(out / onnx_export.PREFILL_FILE, "cpu")
    assert not cpu.fell_back and cpu.message == "ONNX Runtime is running on CPUExecutionProvider"


def test_not_exportable_component_is_refused_before_export(tmp_path, monkeypatch):
    head_mask = registry.get("head_mask")
    monkeypatch.setattr(head_mask.cls, "onnx_exportable", False)
    monkeypatch.setattr(head_mask.cls, "onnx_reason", "test: its edit needs a custom op", raising=False)
    patch = head_mask.create({"heads": "0:1"})
    with pytest.raises(onnx_export.NotExportableError, match=r"head_mask@1.0.0 cannot be exported to ONNX: test"):
        onnx_export.export_graphs(torch.nn.Linear(2, 2), [patch], tmp_path)  # refused before touching the model
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("family", FAMILIES)
def test_bias_form_matches_the_formula(family):
    """force="bias" (key biases as an additive SDPA mask, the form exported graphs use) is exact."""
    from tests.integration.test_zerotuning import zt_reference

    model = tiny_model(family)
    zt = registry.get("zerotuning").create({"gamma": "3", "heads": "0:1,1:*"})
    d = patched_vs_reference(model, [zt], zt_reference(zt, 4), force="bias", decode_steps=3)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["same_tokens"] == 1.0
    assert d["effect"] > 1e-3


def test_sparse_biases_take_the_channel_form_under_export():
    """Under torch.export the dispatcher has no log-sum-exp kernel: ZeroTuning's sparse bias becomes one extra
    head-dim channel on the standard SDPA op (and the additive mask with force="bias")."""
    model = tiny_model("llama", layers=1)
    zt = registry.get("zerotuning").create({"gamma": "3"})
    ids = torch.randint(3, 300, (2, 7))
    mask = torch.ones_like(ids)

    def sdpa_nodes(force):
        with torch.no_grad(), applied(model, zt, force=force):
            ep = torch.export.export(onnx_export.PrefillGraph(model), (ids, mask), strict=False)
        targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        assert not any("flash_attention_for_cpu" in t for t in targets)
        return [n for n in ep.graph.nodes if "scaled_dot_product_attention" in str(n.target)]

    (channels,) = sdpa_nodes(None)
    assert channels.args[0].meta["val"].shape[-1] == 16 + 1  # head_dim 16 + the bias channel
    (bias,) = sdpa_nodes("bias")
    assert bias.args[0].meta["val"].shape[-1] == 16 and bias.args[3].meta["val"].dtype == torch.float32
