"""rep_shift (MLLM representation shift, arXiv:2501.03012) on tiny random LLaVAs: the shift vector against a
per-scene loop, alpha = 0 against the unpatched model, the steered residual stream against h + alpha v on a ragged
left-padded batch, the token scopes, and scope restoration."""

from __future__ import annotations

import pytest
import torch

from components.attention.session import applied
from components.base import ParamError
from components.benchmarks import _scenes
from components.patches.rep_shift import RepShift, concept_pairs, steer_mask
from tests.helpers.tiny_vlm import tiny_llava_with_processor, tiny_vlm, vlm_batch

PROMPT = "{image}\nDescribe the image."


@pytest.fixture(scope="module")
def llava():
    return tiny_llava_with_processor(seed=0)


def _reference_state(model, proc, scene, layer: int, tokens: str) -> torch.Tensor:
    """One scene at a time (no padding): output of decoder layer ``layer`` from output_hidden_states, pooled by a
    loop over positions."""
    enc = proc(images=[_scenes.render(scene, 32)], text=[PROMPT.format(image=proc.image_token)], return_tensors="pt")
    with torch.no_grad():
        h = model(**enc, output_hidden_states=True).hidden_states[layer + 1][0].double()  # (T, d)
    ids = enc["input_ids"][0].tolist()
    image = model.config.image_token_id
    keep = {"last": [len(ids) - 1], "image": [t for t, i in enumerate(ids) if i == image],
            "text": [t for t, i in enumerate(ids) if i != image], "all": list(range(len(ids)))}[tokens]
    total = torch.zeros(h.shape[1], dtype=torch.float64)
    for t in keep:
        total += h[t]
    return total / len(keep)


@pytest.mark.parametrize("tokens", ["last", "image", "text"])
def test_shift_vector_is_the_difference_of_means(llava, tokens):
    model, proc = llava
    comp = RepShift(layer=0, n_pairs=3, tokens=tokens, prompt=PROMPT).fit(model, proc)
    a, b = concept_pairs("red", "blue", 3, seed=0)
    ref = (torch.stack([_reference_state(model, proc, s, 0, tokens) for s in b]).mean(0)
           - torch.stack([_reference_state(model, proc, s, 0, tokens) for s in a]).mean(0))
    assert comp._vector.shape == (model.config.text_config.hidden_size,)
    torch.testing.assert_close(comp._vector.double(), ref, atol=1e-5, rtol=1e-4)
    assert comp._vector.abs().max() > 1e-4  # the paired images differ, so the states do


def test_pairs_differ_in_one_object_colour_only():
    a, b = concept_pairs("red", "blue", 20, seed=3)
    for sa, sb in zip(a, b):
        diff = [(oa, ob) for oa, ob in zip(sa["objects"], sb["objects"]) if oa != ob]
        assert len(diff) == 1 and diff[0][0]["colour"] == "red" and diff[0][1]["colour"] == "blue"
        assert {oa["shape"] for oa, _ in diff} == {ob["shape"] for _, ob in diff}
        others = [o["colour"] for o in sa["objects"] if o is not diff[0][0]]
        assert not {"red", "blue"} & set(others)


def _layer1_inputs(model, inputs, *patches):
    """(B, T, d) residual stream entering decoder layer 1 (= layer 0's output, after any steering hook)."""
    seen = {}
    block = model.model.language_model.layers[1]
    with applied(model, *patches):
        handle = block.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("h", (a[0] if a else
                                                                                           kw["hidden_states"])),
                                                 with_kwargs=True)
        try:
            with torch.no_grad():
                logits = model(**inputs).logits
        finally:
            handle.remove()
    return seen["h"], logits


def test_steered_residual_equals_h_plus_alpha_v_on_a_ragged_batch():
    model = tiny_vlm("llava", seed=2)
    inputs, _ = vlm_batch("llava")
    v = torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    h, _ = _layer1_inputs(model, inputs)
    steered, _ = _layer1_inputs(model, inputs, RepShift(layer=0, alpha=0.7).with_vector(v))
    mask = inputs["attention_mask"].bool()  # (B, T); row 1 is left-padded
    ref = h.clone()
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            if mask[b, t]:
                ref[b, t] = h[b, t] + 0.7 * v
    torch.testing.assert_close(steered, ref, atol=1e-6, rtol=1e-6)
    assert torch.equal(steered[~mask], h[~mask])  # padding untouched
    assert not torch.equal(steered[mask], h[mask])


def test_alpha_zero_is_the_unpatched_model_exactly(llava):
    model, proc = llava
    inputs, _ = vlm_batch("llava")
    model2 = tiny_vlm("llava", seed=2)
    v = torch.randn(model2.config.text_config.hidden_size)
    with torch.no_grad():
        stock = model2(**inputs).logits
    _, scoped = _layer1_inputs(model2, inputs)
    _, zero = _layer1_inputs(model2, inputs, RepShift(layer=0, alpha=0.0).with_vector(v))
    assert torch.equal(zero, scoped)
    torch.testing.assert_close(zero, stock, atol=1e-5, rtol=1e-5)
    enc = proc(images=[_scenes.render(concept_pairs("red", "blue", 1)[0][0], 32)],
               text=[PROMPT.format(image=proc.image_token)], return_tensors="pt")
    gen = {}
    for name, patches in (("stock", ()), ("zero", (RepShift(layer=1, alpha=0.0).with_vector(v[:64]),))):
        with applied(model, *patches):
            gen[name] = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(gen["stock"], gen["zero"])


def test_scopes_select_prompt_and_generated_positions():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert steer_mask("all", mask, 2, 3, "cpu").tolist() == [[0, 1, 1], [1, 1, 1]]
    assert steer_mask("prompt", mask, 2, 3, "cpu").tolist() == [[0, 1, 1], [1, 1, 1]]
    assert steer_mask("generated", mask, 2, 3, "cpu").sum() == 0
    assert steer_mask("last_prompt", mask, 2, 3, "cpu").tolist() == [[0, 0, 1], [0, 0, 1]]
    step = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # a decoding step: one new token per row
    assert steer_mask("prompt", step, 2, 1, "cpu").sum() == 0
    for scope in ("all", "generated", "last_prompt"):
        assert steer_mask(scope, step, 2, 1, "cpu").tolist() == [[1], [1]]


def test_generated_scope_leaves_the_prefill_alone(llava):
    model, proc = llava
    v = 50 * torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(1))
    enc = proc(images=[_scenes.render(concept_pairs("red", "blue", 1)[0][0], 32)],
               text=[PROMPT.format(image=proc.image_token)], return_tensors="pt")
    out = {}
    for scope in ("generated", "prompt", "all"):
        with applied(model, RepShift(layer=0, alpha=1.0, scope=scope).with_vector(v)):
            out[scope] = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=0,
                                        output_scores=True, return_dict_in_generate=True)
    with applied(model):
        stock = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=0, output_scores=True,
                               return_dict_in_generate=True)
    assert torch.equal(out["generated"].scores[0], stock.scores[0])  # first token comes from the prefill
    assert not torch.equal(out["prompt"].scores[0], stock.scores[0])
    assert not torch.equal(out["all"].scores[0], stock.scores[0])


def test_scope_is_restored_on_exit_and_on_error():
    model = tiny_vlm("llava", seed=2)
    inputs, _ = vlm_batch("llava")
    comp = RepShift(layer=0, alpha=3.0).with_vector(torch.randn(model.config.text_config.hidden_size))
    hooks = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    with torch.no_grad():
        stock = model(**inputs).logits
    with applied(model):
        before = hooks()  # the scope's own hooks (mask capture) and transformers' output recorders
    with applied(model, comp), torch.no_grad():
        assert hooks() == before + 1
        assert not torch.allclose(model(**inputs).logits, stock)
    block = model.model.language_model.layers[0]
    assert not block._forward_hooks
    with pytest.raises(RuntimeError, match="boom"), applied(model, comp):
        assert len(block._forward_hooks) == 1
        raise RuntimeError("boom")
    assert not block._forward_hooks
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)


def test_bad_input_is_named_before_compute(llava):
    model, _ = llava
    with pytest.raises(ParamError, match="no shift vector"), applied(model, RepShift(layer=0)):
        pass
    with pytest.raises(ParamError, match="colour 'pink'"):
        RepShift(target="pink")
    with pytest.raises(ParamError, match="outside the 2 decoder layers"):
        RepShift(layer=5).check_model(model.config)
    with pytest.raises(ParamError, match="vector of shape"):
        RepShift(layer=0).with_vector(torch.zeros(3)).check_model(model.config)
    from transformers import LlamaConfig

    with pytest.raises(ParamError, match="needs a vision-language model"):
        RepShift().check_model(LlamaConfig(num_hidden_layers=2))
