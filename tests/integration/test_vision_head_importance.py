"""vision_head_importance on a tiny random LLaVA and a tiny random ViT classifier, against loop references that
zero one head's slice of the output-projection input by hand (stock attention, no attnflow scope)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from components.analyzers.attention_distance import AttentionDistance
from components.analyzers.vision_head_importance import VisionHeadImportance, vision_encoder
from components.benchmarks.vlm_scenes import TEMPLATE, row_image
from tests.helpers.tiny_vlm import _VISION, _sharpen, tiny_llava_with_processor


def _zero_head(proj: torch.nn.Module, head: int, head_dim: int):
    """Forward pre-hook on an output projection: the input slice of ``head`` set to 0 (the head's context)."""
    def hook(_module, args):
        x = args[0].clone()  # (B, T, H * D)
        x[..., head * head_dim : (head + 1) * head_dim] = 0
        return (x,)
    return proj.register_forward_pre_hook(hook)


def _vlm_reference(model, proc, rows, size):
    """Per row, no batching: mean log-prob of the answer tokens and whether each is the argmax."""
    lps, oks = [], []
    for r in rows:
        prompt = TEMPLATE.format(image=proc.image_token, question=r["question"])
        img = row_image(r, size)
        n = len(proc(images=[img], text=[prompt], return_tensors="pt")["input_ids"][0])
        enc = proc(images=[img], text=[prompt + " " + r["answer"]], return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0].double(), -1)  # (T, V)
        ids = enc["input_ids"][0]
        total, ok = 0.0, True
        for t in range(n, len(ids)):
            total += float(logp[t - 1, ids[t]])
            ok = ok and int(logp[t - 1].argmax()) == int(ids[t])
        lps.append(total / (len(ids) - n))
        oks.append(ok)
    return np.array(lps), np.array(oks, dtype=float)


def test_vlm_head_importance_equals_manual_head_zeroing():
    model, proc = tiny_llava_with_processor(seed=0)
    comp = VisionHeadImportance(n_scenes=2, batch_size=3)
    rows = comp.build()
    res = comp.analyze(model, proc, rows)
    tower = model.model.vision_tower
    cfg = tower.config
    d = cfg.hidden_size // cfg.num_attention_heads
    base_lp, base_ok = _vlm_reference(model, proc, rows, cfg.image_size)
    want_lp = np.zeros((cfg.num_hidden_layers, cfg.num_attention_heads))
    want_acc = np.zeros_like(want_lp)
    for layer in range(cfg.num_hidden_layers):
        for head in range(cfg.num_attention_heads):
            handle = _zero_head(tower.encoder.layers[layer].self_attn.out_proj, head, d)
            try:
                lp, ok = _vlm_reference(model, proc, rows, cfg.image_size)
            finally:
                handle.remove()
            want_lp[layer, head] = (base_lp - lp).mean()
            want_acc[layer, head] = base_ok.mean() - ok.mean()
    np.testing.assert_allclose(res.arrays["logprob_drop"], want_lp, atol=1e-4)
    np.testing.assert_allclose(res.arrays["acc_drop"], want_acc, atol=1e-12)
    assert np.abs(want_lp).max() > 1e-3  # the masks change the answers' log-probs
    pixels = proc.image_processor(images=[row_image(r, 32) for r in {r["scene_id"]: r for r in rows}.values()],
                                  return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(res.arrays["mean_distance"],
                               AttentionDistance().profile(tower, pixels).arrays["mean_distance"], atol=1e-12)
    table = {(r["layer"], r["head"]): r for r in res.tables["heads"]}
    assert len(table) == want_lp.size
    assert table[(1, 0)]["logprob_drop"] == pytest.approx(res.arrays["logprob_drop"][1, 0])
    assert table[(1, 0)]["mean_distance"] == pytest.approx(res.arrays["mean_distance"][1, 0])
    assert model.config._attn_implementation == "sdpa" and tower.config._attn_implementation == "sdpa"


def test_classifier_head_importance_equals_manual_head_zeroing():
    torch.manual_seed(0)
    model = _sharpen(T.ViTForImageClassification(T.ViTConfig(**_VISION, num_labels=5)))
    comp = VisionHeadImportance(n_scenes=6, batch_size=4)
    rows = comp.build()
    res = comp.analyze(model, None, rows)
    images = [row_image(r, 32) for r in {r["scene_id"]: r for r in rows}.values()]
    pixels = torch.tensor(np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images]))
    pixels = pixels.permute(0, 3, 1, 2)
    with torch.no_grad():
        base = torch.log_softmax(model(pixel_values=pixels).logits.double(), -1)  # (N, C)
    labels = base.argmax(-1)
    d = model.config.hidden_size // model.config.num_attention_heads
    for layer in range(2):
        for head in range(2):
            handle = _zero_head(model.vit.layers[layer].attention.o_proj, head, d)
            try:
                with torch.no_grad():
                    lp = torch.log_softmax(model(pixel_values=pixels).logits.double(), -1)
            finally:
                handle.remove()
            drop = float((base.gather(1, labels[:, None]) - lp.gather(1, labels[:, None])).mean())
            acc = float((lp.argmax(-1) == labels).double().mean())
            assert res.arrays["logprob_drop"][layer, head] == pytest.approx(drop, abs=1e-4)
            assert res.arrays["acc_drop"][layer, head] == pytest.approx(1.0 - acc, abs=1e-12)
    assert res.metrics["baseline_accuracy"] == 1.0
    assert np.abs(res.arrays["logprob_drop"]).max() > 1e-3


def test_refuses_models_without_a_maskable_encoder():
    with pytest.raises(ValueError, match="text-only"):
        VisionHeadImportance().check_model(T.LlamaConfig())
    with pytest.raises(ValueError, match="no ViT/CLIP/SigLIP vision encoder"):
        vision_encoder(T.LlamaForCausalLM(T.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32)))
    from components.base import ParamError

    with pytest.raises(ParamError):
        VisionHeadImportance(n_scenes=0)
