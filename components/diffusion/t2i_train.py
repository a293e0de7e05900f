"""Build and train ``demo-t2i``: a small text-conditional pixel-space diffusion model on generated shape scenes.

Recipe (DDPM, Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020, arXiv:2006.11239; text
conditioning and classifier-free guidance as in Stable Diffusion / Ho & Salimans, "Classifier-Free Diffusion
Guidance", arXiv:2207.12598; reference code github.com/huggingface/diffusers ``examples/text_to_image``):

- data: scenes of ``components/benchmarks/_scenes.py`` (1..3 objects, no text), rendered at ``image_size`` pixels in
  [-1, 1], captioned "a red circle at the top left and a blue square at the bottom" (objects in cell order);
- text: a word-level fast tokenizer over the fixed caption vocabulary (one token per word, [BOS] ... [EOS], padded to
  ``max_length``) and a small ``CLIPTextModel``, both trained from scratch with the UNet (Stable Diffusion freezes a
  pretrained CLIP; none is available offline here: a deviation);
- denoiser: ``UNet2DConditionModel`` on RGB pixels (no VAE), blocks at resolutions S, S/2, S/4 with cross-attention
  in the two lower ones (S/2 and S/4) and in the mid block;
- objective: ``|| y - f_theta(x_t, t, c) ||^2`` with ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, t uniform in
  [0, T), the squared-cosine beta schedule (Nichol & Dhariwal, arXiv:2102.09672) with T = 1000; the target ``y`` is
  the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` by default (Salimans & Ho, arXiv:2202.00512;
  ``prediction="epsilon"``: y = eps, DDPM's). Why v: this schedule ends at abar_999 = 2.4e-9 (zero terminal SNR),
  where an epsilon model's x0 estimate ``(x_t - sqrt(1 - abar) eps_theta) / sqrt(abar)`` multiplies its error by
  up to 2e4. The first demo-t2i (epsilon, 750 steps) denoised noised real scenes well from t <= 600 but sampled
  pure noise from t = 961 into grey noise (docs/diffusion.md, section demo-t2i). Sampling with v uses the
  "trailing" DDIM timesteps (start at t = 999, Lin et al., arXiv:2305.08891);
- classifier-free guidance: the caption is replaced by the empty caption with probability ``cfg_dropout`` (0.1);
- AdamW (weight decay 0), linear warm-up over the first 5 % of steps then cosine decay, gradient clipping at 1,
  optional bfloat16 autocast (weights, gradients and optimizer stay float32), optional EMA of all weights (the EMA
  weights are the ones saved and sampled);
- scheduler saved for sampling: ``DDIMScheduler`` with the training betas (deterministic, few steps).

The flow's defaults (channels 16/32/64, batch 32) were sized from a FLOP count for about 30 minutes on 2 CPU cores;
measured runs: docs/diffusion.md, section demo-t2i.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from components.benchmarks import _scenes
from components.diffusion.pipeline import T2IModel

SPECIAL = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
CELL_WORDS = ("top", "bottom", "left", "right", "centre")
VOCAB = (*SPECIAL, "a", "an", "and", "at", "the", *sorted(_scenes.COLOURS), *_scenes.SHAPES, *CELL_WORDS)
MAX_OBJECTS = 3
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
PREDICTIONS = ("v_prediction", "epsilon")


def object_phrase(colour: str, shape: str, cell: int | None = None) -> str:
    """'a red circle at the top left' (cell None: without position)."""
    art = "an" if colour[0] in "aeiou" else "a"
    return f"{art} {colour} {shape}" + ("" if cell is None else f" at the {_scenes.CELLS[cell]}")


def caption(scene: dict[str, Any]) -> str:
    """The scene's caption: every object with its cell, in cell order, joined by 'and'."""
    objs = sorted(scene["objects"], key=lambda o: o["cell"])
    return " and ".join(object_phrase(o["colour"], o["shape"], o["cell"]) for o in objs)


def max_caption_tokens(max_objects: int = MAX_OBJECTS) -> int:
    """Tokens of the longest caption with [BOS] and [EOS]: 7 words per object ("a red circle at the top left"),
    'and' between objects."""
    return 7 * max_objects + (max_objects - 1) + 2


def scenes(seed: int, n: int, max_objects: int = MAX_OBJECTS) -> list[dict[str, Any]]:
    """``n`` scenes without text, deterministic for (seed, n, max_objects)."""
    rng = random.Random(seed)
    return [_scenes.sample_scene(rng, max_objects=max_objects, text_prob=0.0) for _ in range(n)]


def build_tokenizer(max_length: int | None = None) -> Any:
    """A word-level fast tokenizer over ``VOCAB`` (whitespace split, [BOS] $A [EOS], unknown words -> [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   unk_token="[UNK]", model_max_length=max_length or max_caption_tokens())


def build_model(*, image_size: int = 32, channels: Sequence[int] = (16, 32, 64), text_hidden: int = 64,
                text_layers: int = 2, heads: int = 4, layers_per_block: int = 1, seed: int = 0,
                prediction: str = "v_prediction") -> T2IModel:
    """A random ``T2IModel``: UNet (cross-attention in every block but the first, and in the mid block), CLIP text
    encoder, word-level tokenizer and DDIM scheduler predicting ``prediction`` (``PREDICTIONS``)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    channels = tuple(int(c) for c in channels)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r}: choose one of {PREDICTIONS}")
    if len(channels) < 3:
        raise ValueError(f"channels {channels}: need at least 3 resolutions (cross-attention at 2 of them)")
    if image_size % 2 ** (len(channels) - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{len(channels) - 1} ({len(channels)} "
                         "resolutions)")
    groups = math.gcd(*channels, 8)
    bad = [c for c in channels if c % heads]
    if bad or text_hidden % heads:
        raise ValueError(f"channels {channels} and text_hidden {text_hidden} must be multiples of heads {heads}")
    max_length = max_caption_tokens()
    tok = build_tokenizer(max_length)
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(VOCAB), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers, num_attention_heads=heads, max_position_embeddings=max_length,
        pad_token_id=0, bos_token_id=1, eos_token_id=2))
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1)
    up = ("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",)
    unet = diffusers.UNet2DConditionModel(
        sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=channels,
        layers_per_block=layers_per_block, down_block_types=down, up_block_types=up,
        cross_attention_dim=text_hidden, attention_head_dim=heads, norm_num_groups=groups)  # attention_head_dim = heads
    spacing = dict(timestep_spacing="trailing") if prediction == "v_prediction" else dict(steps_offset=1)
    sched = diffusers.DDIMScheduler(**SCHEDULE, prediction_type=prediction, set_alpha_to_one=False, **spacing)
    return T2IModel(unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched, image_size=image_size,
                    max_length=max_length, meta={"vocabulary": list(VOCAB), "pixel_space": True})


def render_batch(batch: Sequence[dict[str, Any]], image_size: int) -> torch.Tensor:
    """Scenes -> images (B, 3, S, S) in [-1, 1]."""
    import numpy as np

    arr = np.stack([np.asarray(_scenes.render(s, image_size), dtype=np.float32) for s in batch])  # (B, S, S, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def tokenize(model: T2IModel, texts: Sequence[str]) -> torch.Tensor:
    """Captions -> input ids (B, L), padded to ``model.max_length``."""
    return model.tokenizer(list(texts), padding="max_length", max_length=model.max_length, truncation=True,
                           return_tensors="pt")["input_ids"]


def diffusion_loss(model: T2IModel, x0: torch.Tensor, ids: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the prediction (v or eps, the scheduler's ``prediction_type``): x0 (B, 3, S, S),
    ids (B, L), t (B,), noise like x0."""
    alphas = model.scheduler.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    xt = alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise  # (B, 3, S, S)
    kind = model.scheduler.config.prediction_type
    if kind == "v_prediction":
        target = alphas.sqrt() * noise - (1 - alphas).sqrt() * x0  # (B, 3, S, S)
    elif kind == "epsilon":
        target = noise
    else:
        raise ValueError(f"diffusion_loss: prediction_type {kind!r} is not one of {PREDICTIONS}")
    hidden = model.text_encoder(ids)[0]  # (B, L, E)
    out = model.unet(xt, t, encoder_hidden_states=hidden).sample  # (B, 3, S, S)
    return torch.nn.functional.mse_loss(out.float(), target.float())


def held_out_set(seed: int, n: int, image_size: int, n_timesteps: int = 1000) -> dict[str, Any]:
    """A fixed evaluation set: scenes, images, timesteps and noise (deterministic for the arguments)."""
    batch = scenes(seed, n)
    g = torch.Generator().manual_seed(seed)
    x0 = render_batch(batch, image_size)
    return {"captions": [caption(s) for s in batch], "x0": x0,
            "t": torch.randint(0, n_timesteps, (n,), generator=g), "noise": torch.randn(x0.shape, generator=g)}


@torch.no_grad()
def held_out_loss(model: T2IModel, held: dict[str, Any], batch_size: int = 32) -> float:
    """Mean prediction MSE (v or eps) on ``held`` (same timesteps and noise every call)."""
    model.unet.eval()
    model.text_encoder.eval()
    ids = tokenize(model, held["captions"])
    total, n = 0.0, len(ids)
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        total += diffusion_loss(model, held["x0"][sl], ids[sl], held["t"][sl], held["noise"][sl]).item() * len(ids[sl])
    return total / n


def _lr_lambda(steps: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    return f


def train(model: T2IModel, *, steps: int, n_scenes: int, batch_size: int = 32, lr: float = 1e-3,
          cfg_dropout: float = 0.1, ema_decay: float = 0.0, mixed_precision: bool = False, seed: int = 0,
          progress: bool = True) -> list[float]:
    """Train UNet and text encoder jointly in place for ``steps`` minibatches drawn from ``n_scenes`` pre-rendered
    scenes; returns the training loss per step. With ``ema_decay`` > 0 the model ends with its EMA weights."""
    if steps < 1 or batch_size < 1 or n_scenes < 1:
        raise ValueError("train needs steps, batch_size and n_scenes >= 1")
    if not 0.0 <= cfg_dropout < 1.0 or not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"cfg_dropout {cfg_dropout} and ema_decay {ema_decay} must be in [0, 1)")
    data = scenes(seed, n_scenes)
    images = render_batch(data, model.image_size)  # (N, 3, S, S)
    ids_all = tokenize(model, [caption(s) for s in data])  # (N, L)
    empty = tokenize(model, [""])[0]  # (L,)
    parts = torch.nn.ModuleList([model.unet, model.text_encoder])
    ema = copy.deepcopy(parts).requires_grad_(False) if ema_decay > 0 else None
    opt = torch.optim.AdamW(parts.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, max(1, steps // 20)))
    g = torch.Generator().manual_seed(seed + 1)
    n_t = model.scheduler.config.num_train_timesteps
    parts.train()
    losses = []
    bar = tqdm(total=steps, desc="train-t2i", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        x0, ids = images[idx], ids_all[idx].clone()  # (B, 3, S, S), (B, L)
        ids[torch.rand(batch_size, generator=g) < cfg_dropout] = empty
        t = torch.randint(0, n_t, (batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        # Horizontal flips would break "left"/"right": no augmentation.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision):
            loss = diffusion_loss(model, x0, ids, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), parts.parameters()):
                    pe.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    if ema is not None:
        parts.load_state_dict(ema.state_dict())
    parts.eval()
    return losses


def generate(model: T2IModel, prompts: Sequence[str], *, seed: int = 0, steps: int = 25, cfg_scale: float = 3.0,
             components: Sequence[Any] = (), batch_size: int = 16, size: int = 0) -> list[Any]:
    """PIL images for ``prompts`` with ``runner.sample`` (classifier-free guidance against the empty caption);
    image i uses seed ``seed + (i // batch_size) * batch_size`` for its batch. ``size``: side of the sample in
    pixels (0 = the training size). Prompt-learning components get the text encoder and the token ids."""
    from components.diffusion.runner import encode_prompts, prompt_ids, sample

    side = size or model.image_size
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        cond, words = encode_prompts(model.tokenizer, model.text_encoder, chunk, model.max_length)
        uncond, _ = encode_prompts(model.tokenizer, model.text_encoder, [""], model.max_length)
        x = sample(model.unet, model.scheduler, cond, uncond=uncond, cfg_scale=cfg_scale, components=components,
                   word_tokens=words, steps=steps, seed=seed + i, sample_size=(side, side),
                   text_encoder=model.text_encoder, input_ids=prompt_ids(model.tokenizer, chunk, model.max_length))
        out += model.to_images(x)
    return out


def sample_prompts(seed: int, n: int) -> list[str]:
    """``n`` evaluation captions from scenes not drawn for training (a separate seed stream)."""
    return [caption(s) for s in scenes(seed + 104729, n)]
