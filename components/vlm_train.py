"""Build and train a small LLaVA-style VLM on generated scenes: a new CLIP-style vision encoder and an MLP projector
in front of an existing causal language model (the LLaVA recipe, Liu et al., "Visual Instruction Tuning",
NeurIPS 2023, arXiv:2304.08485; reference code github.com/haotian-liu/LLaVA).

Stages (``stage``):

- ``align``: captions of generated scenes (``caption``); the language model is frozen. LLaVA's stage 1 trains the
  projector only, on top of a pretrained CLIP encoder. No pretrained encoder is available offline here, so the
  vision encoder (randomly initialised) trains together with the projector: a deviation.
- ``instruct``: scene questions with known answers (components/benchmarks/_scenes.py: present and absent objects,
  counts, positions, text), in the vlm-eval prompt template; vision encoder and projector train, the language model
  stays frozen (LLaVA's stage 2 also tunes the LM: a deviation; an extra stage with LoRA on the LM, or with Wings
  learners, is components/vlm_adapters.py).

Loss: next-token cross-entropy on the target tokens only (prompt, image and padding positions are -100). The
image token of the processor is added to the LM tokenizer; its embedding row is never read (LLaVA replaces image
token embeddings by projected image features). The result is a ``LlavaForConditionalGeneration`` + ``LlavaProcessor``
saved as safetensors, loadable by ``components.modeling.load_vision_model`` and ``AutoProcessor``.
"""

from __future__ import annotations

import copy
import json
import math
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch
from tqdm.auto import tqdm

from components.benchmarks import _scenes
from components.benchmarks.vlm_scenes import TEMPLATE

IMAGE_TOKEN = "<image>"
STAGES = ("align", "instruct")
CAPTION_PROMPT = "{image}\nDescribe the image."


def caption(scene: dict[str, Any]) -> str:
    """A caption listing every object with its cell, then the written word if any (deterministic order)."""
    objs = sorted(scene["objects"], key=lambda o: o["cell"])
    parts = [f"{'an' if o['colour'][0] in 'aeiou' else 'a'} {o['colour']} {o['shape']} at the "
             f"{_scenes.CELLS[o['cell']]}" for o in objs]
    text = ", ".join(parts) + "."
    if scene.get("text"):
        text += f" The word {scene['text']['word']}."
    return text[0].upper() + text[1:]


def build_llava(lm: torch.nn.Module, tokenizer: Any, *, image_size: int = 64, patch_size: int = 8,
                vision_hidden: int = 128, vision_layers: int = 4, vision_heads: int = 4,
                seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A LLaVA model around ``lm`` (its weights copied) with a new random CLIP vision tower and projector, and the
    matching processor, whose tokenizer is a copy of ``tokenizer`` with the ``<image>`` token (the caller's object is
    left unchanged)."""
    import transformers as T

    if vision_hidden % vision_heads:
        raise ValueError(f"vision_hidden {vision_hidden} is not a multiple of vision_heads {vision_heads}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = T.CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                                num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                                image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden)
    text = lm.config.__class__.from_dict(lm.config.to_dict())
    text.vocab_size = max(len(tokenizer), lm.config.vocab_size)
    cfg = T.LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id, vision_feature_layer=-1,
                        vision_feature_select_strategy="default", projector_hidden_act="gelu",
                        tie_word_embeddings=getattr(lm.config, "tie_word_embeddings", False))
    torch.manual_seed(seed)
    model = T.LlavaForConditionalGeneration(cfg)
    lm_state = {k[len("model."):]: v for k, v in lm.state_dict().items() if k.startswith("model.")}
    emb = lm_state["embed_tokens.weight"]  # (V_lm, d)
    new_emb = model.model.language_model.embed_tokens.weight.detach().clone()  # (V, d)
    new_emb[: emb.shape[0]] = emb
    lm_state["embed_tokens.weight"] = new_emb
    model.model.language_model.load_state_dict(lm_state)
    head = lm.get_output_embeddings().weight  # (V_lm, d)
    with torch.no_grad():
        model.lm_head.weight[: head.shape[0]] = head
        model.lm_head.weight[head.shape[0]:] = 0.0
    proc = T.LlavaProcessor(image_processor=T.CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    return model, proc


def stage_rows(stage: str, seed: int, n_scenes: int, max_objects: int = 4) -> list[dict[str, Any]]:
    """Training rows {"scene", "prompt", "target"} of a stage (captions, or every question of each scene)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    if stage == "align":
        rng = random.Random(seed)
        scenes = [_scenes.sample_scene(rng, max_objects) for _ in range(n_scenes)]
        return [{"scene": s, "prompt": CAPTION_PROMPT, "target": " " + caption(s)} for s in scenes]
    out = []
    for i, strategy in enumerate(_scenes.STRATEGIES):
        for r in _scenes.dataset(seed * 10 + i, max(1, n_scenes // 3), strategy, max_objects):
            out.append({"scene": r["scene"], "prompt": TEMPLATE.replace("{question}", r["question"]),
                        "target": " " + r["answer"]})
    return out


def batch(processor: Any, rows: Sequence[dict[str, Any]], image_size: int) -> dict[str, torch.Tensor]:
    """Processor inputs with ``labels``: target tokens only (the prompt, its image tokens and padding are -100)."""
    tok = processor.tokenizer
    tok.padding_side = "right"
    images = [_scenes.render(r["scene"], image_size) for r in rows]
    prompts = [r["prompt"].format(image=processor.image_token) for r in rows]
    enc = dict(processor(images=images, text=[p + r["target"] + (tok.eos_token or "") for p, r in zip(prompts, rows)],
                         return_tensors="pt", padding=True))
    prompt_lens = [len(processor(images=[im], text=[p], return_tensors="pt")["input_ids"][0])
                   for im, p in zip(images, prompts)]
    labels = enc["input_ids"].clone()  # (B, T)
    labels[enc["attention_mask"] == 0] = -100
    for i, n in enumerate(prompt_lens):
        labels[i, :n] = -100
    enc["labels"] = labels
    return enc


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Freeze the language model and its head; the vision tower and the projector train. Returns those params."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def loss_on(model: torch.nn.Module, processor: Any, rows: Sequence[dict[str, Any]], image_size: int,
            scope: Callable[[], ContextManager] = nullcontext) -> float:
    """Mean target-token loss on ``rows`` (eval mode, no gradient, inside ``scope()``)."""
    model.eval()
    with torch.no_grad(), scope():
        return float(model(**batch(processor, rows, image_size)).loss)


def train_stage(model: torch.nn.Module, processor: Any, rows: list[dict[str, Any]], *, steps: int,
                batch_size: int = 8, lr: float = 1e-3, image_size: int = 64, seed: int = 0,
                progress: bool = True, desc: str = "train", mixed_precision: bool = False,
                params: list[torch.nn.Parameter] | None = None,
                scope: Callable[[], ContextManager] = nullcontext) -> list[float]:
    """AdamW on ``params`` (default: the vision tower + projector, LM frozen), cosine decay, ``steps`` minibatches
    drawn from ``rows``, every forward inside ``scope()`` (an adapter's patch scope, components/vlm_adapters.py);
    returns the training loss per step. ``progress`` shows a step bar with the running loss. ``mixed_precision``
    runs forward and backward under bfloat16 autocast on the model's device (weights, gradients and the optimizer
    stay float32)."""
    if steps < 1 or batch_size < 1 or not rows:
        raise ValueError("train_stage needs steps >= 1, batch_size >= 1 and rows")
    params = trainable(model) if params is None else params
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    losses = []
    model.train()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    device = next(model.parameters()).device.type
    for _ in range(steps):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=mixed_precision), scope():
            loss = model(**batch(processor, rng.sample(rows, min(batch_size, len(rows))), image_size)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses


def save(model: torch.nn.Module, processor: Any, out: str | Path, card: dict[str, Any]) -> Path:
    """Save weights (safetensors), processor and a model card (README.md with the recipe and losses)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    lines = ["# demo-vlm-style LLaVA model (attnflow train-vlm recipe)", "",
             "A small CLIP-style vision encoder and MLP projector trained in front of a frozen language model on "
             "generated scenes (components/vlm_train.py).", "", "```json", json.dumps(card, indent=2), "```", ""]
    (out / "README.md").write_text("\n".join(lines))
    return out
