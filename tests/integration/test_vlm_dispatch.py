"""The dispatcher on vision-language decoders (LLaVA, Idefics3, SmolVLM, Qwen2-VL) and vision encoders (ViT, CLIP
and SigLIP vision towers), issue 22 item 1.

On ragged, left-padded batches with different numbers of images per row: the ``baseline`` patch gives stock
transformers' outputs (eager and sdpa) at prefill and at every KV-cache decode step; every attention call reports
the image keys (decoders: the image-token positions of each row, extended by the generated text tokens; encoders:
every patch, not the class token) and encoders their patch grid; unsupported vision models are named from their
config, before weights load.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as T

import registry
from components import modeling
from components.attention import vision
from components.attention.session import UnsupportedModelError, applied
from components.patches.base import AttentionPatch
from tests.helpers.compare import TOL
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny_vlm import (DECODER_FAMILIES, ENCODER_FAMILIES, TOKENS_PER_IMAGE, pixel_batch,
                                    tiny_encoder, tiny_vlm, vlm_batch)

STEPS = 3


@dataclasses.dataclass(frozen=True)
class Recorder(AttentionPatch):
    """Records what each attention call knows (no edit)."""

    component_name = "recorder"
    calls: list = dataclasses.field(default_factory=list)

    def key_bias(self, call):
        self.calls.append((call.layer, call.q_len, call.kv_len, call.image_keys, call.patch_grid, call.n_prefix,
                           call.image_spans()))
        return None


def _gen(model, inputs):
    """(prefill logits, greedy tokens, logits of each generated step)."""
    logits = model(**inputs).logits
    out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    return logits, out.sequences, torch.stack(out.logits, 1)


@torch.no_grad()
def _generate(model, inputs, *patches, impl=None):
    if impl:
        model.set_attn_implementation(impl)
        return _gen(model, inputs)
    with applied(model, *patches):
        return _gen(model, inputs)


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_decoder_baseline_equals_stock_eager_and_sdpa(family):
    model = tiny_vlm(family)
    inputs, _ = vlm_batch(family)
    valid = inputs["attention_mask"].bool()
    ours = _generate(model, inputs, registry.get("baseline").create())
    for impl in ("eager", "sdpa"):
        stock = _generate(model, inputs, impl=impl)
        assert (ours[0] - stock[0])[valid].abs().max() <= TOL, (family, impl, "prefill")
        assert torch.equal(ours[1], stock[1]), (family, impl, "tokens")
        assert (ours[2] - stock[2]).abs().max() <= TOL, (family, impl, "decode")
    assert model.config.get_text_config()._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_decoder_image_keys_on_a_ragged_batch(family):
    model = tiny_vlm(family)
    inputs, expected = vlm_batch(family)
    assert expected.sum(1).tolist()[0] != expected.sum(1).tolist()[1]  # ragged: different image counts per row
    rec = Recorder()
    with torch.no_grad(), applied(model, rec):
        gen = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, pad_token_id=0)
    n_layers = model.config.get_text_config().num_hidden_layers
    assert len(rec.calls) == n_layers * STEPS  # the vision tower's calls are not the patch's
    width = expected.shape[1]
    for layer, q_len, kv_len, keys, grid, prefix, spans in rec.calls:
        assert grid is None and prefix == 0
        # one span per image: LLaVA-style rows hold 2 and 1 images (Qwen: 1 and 2), each TOKENS_PER_IMAGE long
        n = TOKENS_PER_IMAGE[family]
        assert [len(r) for r in spans] == expected.sum(1).div(n).int().tolist()
        assert all(e - s == n for r in spans for s, e in r)
        assert keys.shape == (2, kv_len) and keys.dtype == torch.bool
        want = torch.cat([expected, torch.zeros(2, kv_len - width, dtype=torch.bool)], 1)
        assert torch.equal(keys, want), (family, layer, kv_len)
        assert (gen[:, :kv_len][keys] == vision.layout_of(model.config).image_token_ids[0]).all()
    assert {c[1] for c in rec.calls} == {width, 1}  # prefill then one-token steps


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_decoder_without_input_ids_has_no_image_keys(family):
    """Embeddings-only input: the dispatcher cannot know the image tokens and says so (None), never guesses."""
    model = tiny_vlm(family)
    inputs, _ = vlm_batch(family)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    rec = Recorder()
    with torch.no_grad(), applied(model, rec):
        model.model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]) \
            if hasattr(model.model, "language_model") else model.model.text_model(
                inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    assert rec.calls and all(c[3] is None for c in rec.calls)


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_encoder_baseline_equals_stock_and_keys_are_patches(family):
    model = tiny_encoder(family)
    pixels = pixel_batch(family)
    with torch.no_grad():
        stock = {impl: (model.set_attn_implementation(impl), model(pixel_values=pixels).last_hidden_state)[1]
                 for impl in ("eager", "sdpa")}
        rec = Recorder()
        with applied(model, registry.get("baseline").create(), rec):
            ours = model(pixel_values=pixels).last_hidden_state
    for impl, want in stock.items():
        assert (ours - want).abs().max() <= TOL, (family, impl)
    prefix = {"vit": 1, "clip_vision": 1, "siglip_vision": 0}[family]
    assert [c[0] for c in rec.calls] == [0, 1]
    for _, q_len, kv_len, keys, grid, n_prefix, spans in rec.calls:
        assert q_len == kv_len == 16 + prefix and grid == (4, 4) and n_prefix == prefix
        assert spans == [[(prefix, kv_len)]] * 2
        assert keys.shape == (2, kv_len) and keys[:, prefix:].all() and not keys[:, :prefix].any()


def test_encoder_grid_follows_the_input_resolution():
    layout = vision.layout_of(T.ViTConfig(image_size=32, patch_size=8))
    assert layout.grid_for(17) == (4, 4) and layout.grid_for(37) == (6, 6)
    with pytest.raises(ValueError, match="not a square patch grid"):
        layout.grid_for(20)


@pytest.mark.parametrize("config, name", [
    (T.Blip2Config(), "Blip2Config"), (T.MllamaConfig(), "MllamaConfig"), (T.CLIPConfig(), "CLIPConfig"),
    (T.Gemma3Config(), "Gemma3Config")])
def test_unsupported_vision_models_are_named_before_weights_load(tmp_path, config, name):
    config.save_pretrained(tmp_path)  # a config and no weights: refusing must not need them
    with pytest.raises(vision.UnsupportedVisionModelError, match=name):
        modeling.load_vision_model(str(tmp_path))
    with pytest.raises(vision.UnsupportedVisionModelError, match="supported: llava"):
        vision.layout_of(config)


def test_text_models_keep_no_layout_and_vision_loader_refuses_them(tmp_path):
    assert vision.layout_of(T.LlamaConfig()) is None
    T.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(vision.UnsupportedVisionModelError, match="no vision part"):
        modeling.load_vision_model(str(tmp_path))


def test_unsupported_multimodal_model_is_refused_by_the_dispatcher():
    cfg = T.Gemma3Config(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8))
    model = T.Gemma3ForConditionalGeneration(cfg)
    with pytest.raises(UnsupportedModelError, match="Gemma3ForConditionalGeneration cannot be patched: Gemma3Config"):
        with applied(model, registry.get("baseline").create()):
            pass


def test_load_vision_model_loads_a_saved_tiny_llava(tmp_path):
    tiny_vlm("llava").save_pretrained(tmp_path)
    model = modeling.load_vision_model(str(tmp_path))
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not model.training
    assert model.config.get_text_config()._attn_implementation == "sdpa"


def test_cache_filled_outside_the_scope_gives_no_image_keys():
    """A decoding step whose prefill ran outside the patch scope: the scope never saw the prompt's image tokens."""
    model = tiny_vlm("llava")
    inputs, _ = vlm_batch("llava")
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        step = {"input_ids": out.logits[:, -1].argmax(-1, keepdim=True),
                "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1)}
        rec = Recorder()
        with applied(model, rec):
            model(**step, past_key_values=out.past_key_values, use_cache=True)
    assert rec.calls and all(c[3] is None for c in rec.calls)
