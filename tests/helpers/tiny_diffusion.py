"""Tiny diffusers/CLIP stand-ins built from configs (no downloads): a random UNet2DConditionModel, a one-layer CLIP
text encoder and a WordPiece tokenizer over a few shape words (two-token "triangle")."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

WORDS = ["a", "red", "blue", "circle", "square", "and", "the", "tri", "##angle", "left", "of"]


def tiny_unet(dtype=torch.float32) -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)  # attention_head_dim = heads (legacy)
    return (unet if dtype == torch.float32 else unet.to(dtype)).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 1),
                                                                                                 ("[EOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   unk_token="[UNK]", model_max_length=12)


def tiny_text_encoder() -> CLIPTextModel:
    torch.manual_seed(1)
    cfg = CLIPTextConfig(vocab_size=len(WORDS) + 4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=12, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    return CLIPTextModel(cfg).eval()
