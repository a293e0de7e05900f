"""The text-to-image model folder attnflow reads and writes: a denoiser, a text encoder, its tokenizer and a scheduler.

Layout (one subfolder per part, each saved by its library's ``save_pretrained`` as safetensors)::

    <dir>/unet/            UNet2DConditionModel (diffusers)
    <dir>/text_encoder/    CLIPTextModel (transformers)
    <dir>/tokenizer/       a fast tokenizer (transformers ``AutoTokenizer``)
    <dir>/scheduler/       a diffusers scheduler config (DDPM, DDIM, ...)
    <dir>/vae/             optional AutoencoderKL: present = latent diffusion (Stable Diffusion folders)
    <dir>/attnflow_t2i.json  {"image_size": pixels, "max_length": prompt tokens, "latent_scale": float, ...}

A Stable Diffusion folder from the hub (``model_index.json`` with the same subfolders) loads too; its
``attnflow_t2i.json`` is absent and the sizes come from the configs. ``demo-t2i`` (the train-t2i flow) is a
pixel-space model: no ``vae``, the UNet denoises RGB images in [-1, 1] directly.

Loading never runs remote code and reads safetensors only (``use_safetensors=True``). Saving writes to a temporary
sibling folder and renames it into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

META = "attnflow_t2i.json"
PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")


@dataclasses.dataclass
class T2IModel:
    """A loaded text-to-image model.

    Attributes
    ----------
    unet, text_encoder, tokenizer, scheduler:
        The parts (diffusers / transformers objects).
    vae:
        An ``AutoencoderKL`` for latent models, None for pixel-space models.
    image_size:
        Output side in pixels.
    max_length:
        Prompt length in tokens (prompts are padded to it).
    meta:
        The rest of ``attnflow_t2i.json`` (training recipe, captions vocabulary, ...).
    """

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler: Any
    vae: torch.nn.Module | None = None
    image_size: int = 32
    max_length: int = 16
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def latent_scale(self) -> float:
        return float(self.meta.get("latent_scale", getattr(getattr(self.vae, "config", None), "scaling_factor", 1.0)))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the denoised sample: pixels, or latents of the vae."""
        c = self.unet.config.in_channels
        s = self.unet.config.sample_size
        return (c, s, s)

    def to_images(self, x: torch.Tensor) -> list[Any]:
        """Denoised samples (B, C, h, w) -> RGB PIL images (decoded by the vae for latent models)."""
        from PIL import Image

        if self.vae is not None:
            with torch.no_grad():
                x = self.vae.decode(x / self.latent_scale).sample  # (B, 3, H, W)
        arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    def fingerprint_parts(self) -> dict[str, Any]:
        """What identifies the model for caches: configs and a digest of the weights."""
        h = hashlib.sha256()
        for part, mod in (("unet", self.unet), ("text_encoder", self.text_encoder), ("vae", self.vae)):
            for name, t in ({} if mod is None else mod.state_dict()).items():
                h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"unet": json.loads(json.dumps(dict(self.unet.config), default=str)), "image_size": self.image_size,
                "max_length": self.max_length, "weights": h.hexdigest(),
                "scheduler": json.loads(json.dumps(dict(self.scheduler.config), default=str))}


def is_t2i_dir(path: str | Path) -> bool:
    """True if ``path`` holds the parts of a text-to-image model folder."""
    p = Path(path)
    return all((p / part).is_dir() for part in PARTS)


def load_t2i(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> T2IModel:
    """Load a model folder (layout above). Missing parts are named before any weights are read."""
    import diffusers
    from transformers import AutoTokenizer, CLIPTextModel

    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"text-to-image model folder {p} does not exist")
    missing = [part for part in PARTS if not (p / part).is_dir()]
    if missing:
        raise ValueError(f"{p} is not a text-to-image model folder: missing {', '.join(missing)}/ "
                         f"(expected {', '.join(PARTS)}/ and optionally vae/)")
    meta = json.loads((p / META).read_text()) if (p / META).is_file() else {}
    sched_cfg = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
    sched_cls = getattr(diffusers, sched_cfg.get("_class_name", "DDPMScheduler"), None)
    if sched_cls is None or not hasattr(sched_cls, "from_pretrained"):
        raise ValueError(f"{p}/scheduler: unknown scheduler class {sched_cfg.get('_class_name')!r}")
    unet = diffusers.UNet2DConditionModel.from_pretrained(p / "unet", use_safetensors=True, torch_dtype=dtype)
    text = CLIPTextModel.from_pretrained(p / "text_encoder", use_safetensors=True, torch_dtype=dtype)
    tok = AutoTokenizer.from_pretrained(p / "tokenizer", trust_remote_code=False)
    vae = None
    if (p / "vae").is_dir():
        vae = diffusers.AutoencoderKL.from_pretrained(p / "vae", use_safetensors=True, torch_dtype=dtype)
        vae = vae.to(device).eval()
    image_size = int(meta.get("image_size", unet.config.sample_size * (8 if vae is not None else 1)))
    max_length = int(meta.get("max_length", tok.model_max_length))
    return T2IModel(unet=unet.to(device).eval(), text_encoder=text.to(device).eval(), tokenizer=tok,
                    scheduler=sched_cls.from_pretrained(p / "scheduler"), vae=vae, image_size=image_size,
                    max_length=max_length, meta=meta)


def save_t2i(model: T2IModel, path: str | Path) -> Path:
    """Write ``model`` as a folder (layout above): a temporary sibling first, then renamed into place (an existing
    model folder at ``path`` is replaced only once the new one is complete)."""
    dest = Path(path).expanduser()
    if dest.exists() and any(dest.iterdir()) and not is_t2i_dir(dest):
        raise ValueError(f"{dest} exists and is not a text-to-image model folder: choose an empty or new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        model.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        model.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        model.scheduler.save_pretrained(tmp / "scheduler")
        if model.vae is not None:
            model.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        meta = {**model.meta, "image_size": model.image_size, "max_length": model.max_length}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if dest.exists():
            old = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.old"
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old)
        else:
            tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest
