"""Kernels installed into tiny Llama models: equivalences, KV-cache decoding, training terms, save/load, presets,
the patch guard and ONNX export (dynamo + onnxruntime CPU)."""

from __future__ import annotations

import pytest
import torch

import registry
from components.attention.session import UnsupportedModelError, applied
from components.base import ParamError
from components.kernels.base import auxiliary_loss, load_kernel_model, observing
from components.lm import trainer
from components.lm.model import build_model, save_model_dir
from components.lm.preset import LMPreset, ModelSpec, TrainSpec
from components.lm.synthetic import Vocab
from components.modeling import load_model
from components.patches.zerotuning import ZeroTuning
from registry.specs import load_preset

pytestmark = pytest.mark.integration
VOCAB = Vocab(64, 0, 1, 2)
KERNELS = ["softmax", "sigmoid", "sigmoid(normalize=true)", "lightning(block=8)", "moh(shared=1, top_k=2)",
           "complex"]


def model(attention: str = "sdpa", qk_layernorm: bool = False, seed: int = 0, **kw):
    spec = ModelSpec(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, context=64, vocab_size=64,
                     attention=attention, qk_layernorm=qk_layernorm, **kw)
    return build_model(spec, VOCAB, seed=seed).eval()


def ids(t: int = 21, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 64, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_softmax_kernel_equals_stock_sdpa_and_cmha_at_delta_one_equals_rope():
    x = ids()
    stock = model().eval()(input_ids=x).logits
    assert torch.equal(model("softmax")(input_ids=x).logits, stock)
    assert (model("complex(init=rope)")(input_ids=x).logits - stock).abs().max() < 1e-5  # same base weights
    assert (model("complex")(input_ids=x).logits - stock).abs().max() > 1e-3  # the reference init changes it


@torch.no_grad()
@pytest.mark.parametrize("attention", KERNELS)
def test_kv_cache_decoding_matches_the_full_forward(attention):
    m, x = model(attention), ids(18)
    full = m(input_ids=x).logits
    out = m(input_ids=x[:, :12], use_cache=True)
    steps = [out.logits]
    cache = out.past_key_values
    for t in range(12, 18):
        out = m(input_ids=x[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


@torch.no_grad()
def test_output_attentions_returns_kernel_weights():
    x = ids(10)
    for attention in ("softmax", "sigmoid", "moh(shared=1, top_k=2)"):
        maps = model(attention)(input_ids=x, output_attentions=True).attentions
        assert len(maps) == 2 and maps[0].shape == (2, 4, 10, 10)
        assert torch.all(maps[0].triu(1) == 0)  # causal
    soft = model("softmax")(input_ids=x, output_attentions=True).attentions[0]
    assert torch.allclose(soft.sum(-1), torch.ones(2, 4, 10), atol=1e-5)


def test_qk_layernorm_normalises_q_and_k_before_rope():
    x = ids(12)
    m = model("softmax", qk_layernorm=True)
    with torch.no_grad():
        for layer in m.model.layers:  # variances well above LayerNorm's eps
            layer.self_attn.q_proj.weight.mul_(30.0)
            layer.self_attn.k_proj.weight.mul_(30.0)
        ref = m(input_ids=x).logits
        for layer in m.model.layers:  # LayerNorm makes each head's q and k invariant to the projection scale
            layer.self_attn.q_proj.weight.mul_(7.0)
            layer.self_attn.k_proj.weight.mul_(0.5)
        assert (m(input_ids=x).logits - ref).abs().max() < 1e-5
    assert "model.layers.0.self_attn.attnflow_qk_norm.q.weight" in m.state_dict()
    with pytest.raises(ParamError, match="qk_layernorm needs an attnflow kernel"):
        ModelSpec(attention="eager", qk_layernorm=True)


def test_moh_balance_loss_reaches_the_trainer_and_z_loss_adds_a_term(tmp_path):
    m = model("moh(shared=1, top_k=2)").train()
    x = ids(16)
    m(input_ids=x, labels=x)
    aux = auxiliary_loss(m)
    assert aux is not None and aux.requires_grad and auxiliary_loss(m) is None  # collected once per forward
    m.eval()
    with torch.no_grad():
        m(input_ids=x)
    assert auxiliary_loss(m) is None  # evaluation records none
    logits = torch.zeros(1, 3, 5)
    assert trainer.z_loss(logits, torch.zeros(1, 3, dtype=torch.long)).item() == pytest.approx(torch.log(
        torch.tensor(5.0)).item() ** 2)
    spec = TrainSpec(steps=3, batch_size=2, lr=1e-2, warmup=1, checkpoint_every=3, log_every=1, z_loss=1e-2)
    result = trainer.train(model("moh(shared=1, top_k=2)"), lambda s: {"input_ids": ids(16, seed=s),
                           "attention_mask": torch.ones(2, 16, dtype=torch.long), "labels": ids(16, seed=s)},
                           spec, tmp_path / "ckpt", progress=False)
    assert result.step == 3 and all(v == v for _, v in result.losses)
    opt = trainer.make_optimizer(m, TrainSpec(lr=0.01, weight_decay=1e-4, independent_weight_decay=True))
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-2)  # (lr_t / lr) * wd in AdamW's lr_t * wd


@pytest.mark.parametrize("attention", ["lightning(block=8)", "moh(shared=1, top_k=2)", "complex"])
def test_saved_kernel_model_loads_with_its_kernel(tmp_path, attention):
    from tests.helpers.tiny import tokenizer

    tok = tokenizer()
    m = build_model(ModelSpec(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, context=64,
                              vocab_size=len(tok), attention=attention, qk_layernorm=True), tok, seed=1).eval()
    out = save_model_dir(m, tok, tmp_path / "m", "# kernel model\n")
    x = ids(9)
    with torch.no_grad():
        ref = m(input_ids=x).logits
        assert torch.equal(load_kernel_model(out)(input_ids=x).logits, ref)
        loaded, _ = load_model(str(out))  # the flows' loader rebuilds the kernel too
        assert torch.equal(loaded(input_ids=x).logits, ref)


def test_patches_refuse_non_softmax_kernels_but_apply_to_softmax_ones():
    with pytest.raises(UnsupportedModelError, match="attention kernel lightning"):
        with applied(model("lightning(block=8)"), ZeroTuning(gamma=2.0)):
            pass
    m, x = model("complex(init=rope)"), ids(8)
    with torch.no_grad():
        plain = m(input_ids=x).logits
        with applied(m, ZeroTuning(gamma=4.0)):
            patched = m(input_ids=x).logits
        assert (patched - plain).abs().max() > 1e-3 and torch.equal(m(input_ids=x).logits, plain)


def test_observer_sees_every_layer_and_presets_name_bad_kernels():
    seen = []
    with observing(m := model("sigmoid"), lambda mod, q, k, call: seen.append((call.layer, tuple(q.shape)))):
        with torch.no_grad():
            m(input_ids=ids(5))
    assert seen == [(0, (2, 4, 5, 8)), (1, (2, 4, 5, 8))]
    with pytest.raises(registry.UnknownComponentError, match="Did you mean lightning"):
        ModelSpec(attention="lightnin")
    with pytest.raises(ParamError, match="moh.top_k=4 must be in"):
        LMPreset.from_dict("x", load_preset("lm/tiny"), {"model.attention": "moh(shared=1, top_k=4)"})
    spec = LMPreset.from_dict("x", load_preset("lm/tiny"), {"model.attention": "lightning(block=16)"})
    assert spec.model.kernel()[1].block == 16


def test_every_kernel_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids, use_cache=False).logits

    exportable = [i for i in registry.all_components("kernel") if i.cls.onnx_exportable]
    assert {i.name for i in exportable} == {"softmax", "sigmoid", "lightning", "moh", "complex"}
    for info in exportable:
        attention = info.create(info.cls.example).spec_text()
        wrapper = Logits(build_model(ModelSpec(layers=1, hidden=32, heads=4, kv_heads=2, intermediate=32,
                                               context=64, vocab_size=64, attention=attention), VOCAB)).eval()
        path = tmp_path / f"{info.name}.onnx"
        torch.onnx.export(wrapper, (ids(12),), str(path), dynamo=True, input_names=["input_ids"],
                          output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch", max=64),
                                                                    1: torch.export.Dim("seq", max=64)},))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for t in (12, 37):  # 37: another length, not a multiple of the lightning block
            x = ids(t, b=3, seed=t)
            with torch.no_grad():
                ref = wrapper(x).numpy()
            got = sess.run(None, {"input_ids": x.numpy()})[0]
            assert abs(got - ref).max() < 1e-5, (info.name, t)


def test_kernel_model_exports_with_the_baseline_component_and_refuses_real_patches(tmp_path):
    """The export flow's pieces on a saved lightning model: validation, export (no patch) and parity vs PyTorch."""
    from components.onnx.export import export_graphs, patched
    from components.onnx.parity import check_parity
    from components.patches.baseline import Baseline
    from tasks.export import plan_export
    from tests.helpers.tiny import tokenizer

    tok = tokenizer()
    m = build_model(ModelSpec(layers=1, hidden=32, heads=4, kv_heads=2, intermediate=32, context=64,
                              vocab_size=len(tok), attention="lightning(block=8)"), tok, seed=1).eval()
    path = save_model_dir(m, tok, tmp_path / "m", "# kernel model\n")
    plan = plan_export.fn(str(path), "baseline", {}, "none", str(tmp_path / "out"))
    assert plan.component.startswith("baseline@")
    with pytest.raises(ValueError, match=r"attention kernel lightning@[0-9.]+\(block=8.*cannot apply zerotuning.*"
                                         r"export it with the component 'baseline'"):
        plan_export.fn(str(path), "zerotuning", {"gamma": 2.0}, "none", None)  # refused before the model loads
    with pytest.raises(UnsupportedModelError, match=r"attention kernel lightning.*cannot apply zerotuning"):
        patched(m, [Baseline(), ZeroTuning(gamma=2.0)])
    loaded, _ = load_model(str(path))
    export_graphs(loaded, [Baseline()], tmp_path / "onnx", kv_cache=False)
    result = check_parity(loaded, [Baseline()], tmp_path / "onnx", lengths=(12, 37),
                          fixed_ids=tok("a fox")["input_ids"])
    assert result["passed"] and result["max_abs_diff"] < 1e-5, result["worst"]
    assert any(case["padded"] for case in result["cases"])  # left padding goes through the kernel's mask too
