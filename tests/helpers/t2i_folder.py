"""A tiny random text-to-image model folder (components/diffusion/pipeline.py layout) for flow tests: the tiny UNet,
text encoder and tokenizer of tests/helpers/tiny_diffusion.py with a DDIM scheduler, 8 x 8 RGB pixels; optionally
an inpainting UNet (3 + 1 + 3 input channels). Also a test metric hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from components.diffusion.pipeline import T2IModel, save_t2i
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet


def tiny_inpainting_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4).eval()


def save_tiny_t2i(path: str | Path, inpainting: bool = False) -> Path:
    model = T2IModel(unet=tiny_inpainting_unet() if inpainting else tiny_unet(), text_encoder=tiny_text_encoder(),
                     tokenizer=tiny_tokenizer(), scheduler=DDIMScheduler(num_train_timesteps=50), image_size=8,
                     max_length=12, meta={"note": "random weights, tests only"})
    return save_t2i(model, path)


def mean_red(image, prompt: str) -> dict[str, float]:
    """Test metric hook: the mean red channel in [0, 1] and the prompt's word count."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return {"mean_red": float(arr[..., 0].mean()), "words": float(len(prompt.split()))}


def save_tiny_clip(path: str | Path) -> Path:
    """A random CLIPModel (16-d towers, 8-d projection) with a character-level CLIP tokenizer and a 16 px image
    processor, saved with its processor (no downloads)."""
    import json
    import string

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase)
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                            crop_size={"height": 16, "width": 16}), tokenizer=tok)
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    torch.manual_seed(3)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32, eos_token_id=eos,
                                      bos_token_id=bos, pad_token_id=eos),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=16, patch_size=8), projection_dim=8)
    CLIPModel(cfg).save_pretrained(path / "model")
    proc.save_pretrained(path / "model")
    return path / "model"
