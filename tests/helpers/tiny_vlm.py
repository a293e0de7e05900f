"""Tiny random vision-language decoders and vision encoders built from configs, with ragged image batches.

Decoders: a 2-layer Llama/Qwen2-VL language model (4 query heads, 2 KV heads) behind a 2-layer vision tower.
Batches: two rows, the second left-padded, with different numbers of images at different positions (LLaVA,
Idefics3, SmolVLM: 2 images in row 0, 1 in row 1; Qwen2-VL and Qwen2.5-VL: 1 and 2). ``expected`` is the (B, T)
image-token mask the dispatcher must report, built here from the layout of the batch, not from ``input_ids``.
"""

from __future__ import annotations

import torch
import transformers as T

DECODER_FAMILIES = ("llava", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl")
ENCODER_FAMILIES = ("vit", "clip_vision", "siglip_vision")
IMAGE_TOKEN, VIDEO_TOKEN, V_START, V_END = 300, 301, 302, 303
_TEXT = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
               patch_size=8)
# image tokens per image: LLaVA 4x4 patches (CLS dropped); Idefics3/SmolVLM 16 patches / scale_factor^2 = 4;
# Qwen2-VL and Qwen2.5-VL 4x4 patches of 4 pixels (8x8 image... grid 1x4x4) merged 2x2 = 4
TOKENS_PER_IMAGE = {"llava": 16, "idefics3": 4, "smolvlm": 4, "qwen2_vl": 4, "qwen2_5_vl": 4}


def _sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Larger random q/k weights than the default init, so attention patterns are far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and any(s in name for s in ("q_proj", "k_proj", "query", "key", "qkv")):
                p.mul_(4.0)
    return model.eval()


def tiny_vlm(family: str, seed: int = 0, image_token: int = IMAGE_TOKEN, vocab_size: int = 320) -> torch.nn.Module:
    """A tiny random VLM (``image_token`` / ``vocab_size``: LLaVA only, to match a processor's tokenizer)."""
    torch.manual_seed(seed)
    if family == "llava":
        cfg = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**_VISION, projection_dim=32),
                            text_config=T.LlamaConfig(**{**_TEXT, "vocab_size": vocab_size}),
                            image_token_id=image_token, vision_feature_layer=-1)
        model = T.LlavaForConditionalGeneration(cfg)
    elif family in ("idefics3", "smolvlm"):
        conf, cls = ((T.Idefics3Config, T.Idefics3ForConditionalGeneration) if family == "idefics3"
                     else (T.SmolVLMConfig, T.SmolVLMForConditionalGeneration))
        cfg = conf(vision_config=dict(_VISION), text_config=T.LlamaConfig(**_TEXT), image_token_id=IMAGE_TOKEN,
                   scale_factor=2)
        model = cls(cfg)
    elif family == "qwen2_vl":
        cfg = T.Qwen2VLConfig(
            text_config=dict(**_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
            vision_config=dict(depth=2, embed_dim=32, num_heads=2, hidden_size=64, patch_size=4,
                               spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
            image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=V_START,
            vision_end_token_id=V_END)
        model = T.Qwen2VLForConditionalGeneration(cfg)
    elif family == "qwen2_5_vl":  # windowed vision attention in block 0, full attention in block 1
        cfg = T.Qwen2_5_VLConfig(
            text_config=dict(**_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                               window_size=8, fullatt_block_indexes=[1]),
            image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=V_START,
            vision_end_token_id=V_END)
        model = T.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        raise ValueError(family)
    return _sharpen(model)


def tiny_encoder(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "vit":
        model = T.ViTModel(T.ViTConfig(**_VISION), add_pooling_layer=False)
    elif family == "clip_vision":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(**_VISION))
    elif family == "siglip_vision":
        model = T.SiglipVisionModel(T.SiglipVisionConfig(**_VISION))
    else:
        raise ValueError(family)
    return _sharpen(model)


def _row(length: int, starts: list[int], n: int, g: torch.Generator, bracket: bool) -> torch.Tensor:
    ids = torch.randint(4, 290, (length,), generator=g)
    for s in starts:
        ids[s : s + n] = IMAGE_TOKEN
        if bracket:  # Qwen2-VL: <|vision_start|> image tokens <|vision_end|>
            ids[s - 1], ids[s + n] = V_START, V_END
    return ids


def vlm_batch(family: str, seed: int = 1) -> tuple[dict, torch.Tensor]:
    """(model inputs, expected (B, T) image-token mask) for a ragged, left-padded batch of two rows."""
    g = torch.Generator().manual_seed(seed)
    n = TOKENS_PER_IMAGE[family]
    qwen = family.startswith("qwen2")
    row_images = [[3, 6 + n], [2]] if not qwen else [[3], [2, 5 + n]]
    lengths = [2 * n + 16, n + 14] if not qwen else [n + 14, 2 * n + 16]
    width = max(lengths)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    expected = torch.zeros(2, width, dtype=torch.bool)
    for b, (length, starts) in enumerate(zip(lengths, row_images)):
        pad = width - length
        ids[b, pad:] = _row(length, starts, n, g, bracket=qwen)
        mask[b, pad:] = 1
        for s in starts:
            expected[b, pad + s : pad + s + n] = True
    inputs = {"input_ids": ids, "attention_mask": mask}
    n_images = [len(s) for s in row_images]
    if family == "llava":
        inputs["pixel_values"] = torch.randn(sum(n_images), 3, 32, 32, generator=g)
    elif family in ("idefics3", "smolvlm"):
        pv = torch.zeros(2, max(n_images), 3, 32, 32)
        for b, k in enumerate(n_images):
            pv[b, :k] = torch.randn(k, 3, 32, 32, generator=g)
        inputs["pixel_values"] = pv
    else:  # one 8x8 image = 1 x 4 x 4 patches of 4 pixels, flattened (patches, C * temporal * 4 * 4)
        inputs["pixel_values"] = torch.randn(16 * sum(n_images), 3 * 2 * 4 * 4, generator=g)
        inputs["image_grid_thw"] = torch.tensor([[1, 4, 4]] * sum(n_images))
        inputs["mm_token_type_ids"] = (ids == IMAGE_TOKEN).long()
    return inputs, expected


def pixel_batch(family: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Random (B, 3, 32, 32) images for the tiny encoders."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def tiny_llava_with_processor(seed: int = 0):
    """A tiny random LLaVA and a real LlavaProcessor (CLIP image processor at 32 px + the tests' tokenizer with an
    ``<image>`` token), consistent with each other: (model, processor)."""
    from tests.helpers.tiny import tokenizer

    tok = tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    proc = T.LlavaProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                            image_token="<image>", num_additional_image_tokens=1)
    model = tiny_vlm("llava", seed=seed, image_token=tok.convert_tokens_to_ids("<image>"), vocab_size=len(tok))
    return model, proc


def save_tiny_llava(path, seed: int = 0, wings: bool = False):
    """Save ``tiny_llava_with_processor`` to a model directory (safetensors + processor files); ``wings`` also
    writes zero-initialised Wings learners to ``path/wings`` (bench --smoke runs). Returns the path."""
    from pathlib import Path

    model, proc = tiny_llava_with_processor(seed)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    if wings:
        from components.patches.wings import WingsLearners

        WingsLearners.for_model(model, rank=4, router_len=512).save(Path(path) / "wings")
    return path

