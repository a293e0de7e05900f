"""Wings: "Learning Multimodal LLMs without Text-only Forgetting" (Zhang et al., NeurIPS 2024, arXiv:2406.03496).
Reference code: github.com/AIDC-AI/Wings (read here from its mirror Now-Join-Us/Wings: ``wings/model/base_module.py``
``WingsAttention``, ``ReweightLinear``; ``wings/model/modeling_wings_llama.py`` ``wings_layer_forward``).

Two LoRRA learners (low-rank residual attention) sit beside the main attention of chosen decoder layers. With
``x`` the residual stream after the layer's attention (``h + Attn(norm(h))``, what the reference feeds them), ``f``
the language model's input embeddings (projected image features at image tokens, word embeddings elsewhere), and
per learner ``W' = W + B A`` (A: rank x d, B: d x rank):

    q = x + B_q A_q x,   k = f + B_k A_k f,   v = f + B_v A_v f      (H heads of d / H, RoPE on q and k)
    L(x) = B_o A_o MHA(q, k, v)
    x' = x + r_v(x) L_visual(x) + r_t(x) L_textual(x)

- visual learner: keys/values = the row's image tokens, every query sees all of them (no causal mask, as in the
  reference); a row without image tokens gets 0 from it;
- textual learner: keys/values = the row's real text tokens at positions <= the query's (causal);
- router (``ReweightLinear``): a = sum over heads of the main attention's probabilities of the query (a row over
  keys), r = softmax(SiLU(W_r a + b_r)), W_r: 2 x ``router_len``, column j for the key at position j.

Defaults: ``rank`` 16 (the reference's ``lora_dim`` is a training argument), every layer, ``router_len`` 1024 (the
reference hard-codes 4096). Initialisation as the reference: A truncated-normal (std 0.02), every B zero, so
L(x) = 0 and the model equals the base model at step 0 (tested bit for bit).

Deviations: positions (RoPE and router columns) count from each row's first real token (padding-aware; the
reference uses right padding only). The reference adds the routed sum twice when both learners run (a loop after
the explicit sum); here once (a factor absorbed by B_o). The reference drops a system prompt from the text keys and
mis-aligns the causal mask with them; here every real text token is a key, masked by its own position. The
reference decodes without a KV cache; here the features and positions of every step are kept in the scope, so
cached decoding gives the same tokens as full recomputation. A sequence longer than ``router_len`` is refused.

Implementation: a registered patch (``wings``) on the dispatcher. On learner layers it takes the materialised path
(``edit_probs`` reads the main probabilities; they are not changed), ``CallInfo.image_keys`` gives the image
tokens, ``needs_layer_inputs`` the residual ``h``; ``model_hooks`` adds a pre-hook on the language model (input
embeddings) and a forward hook on each learner layer's ``self_attn`` that adds the routed learners to its output
(after ``o_proj``). The trainable weights are a :class:`WingsLearners` module, saved as an adapter folder
(``wings.json`` + ``wings.safetensors``); ``Wings.of(learners)`` applies an in-memory one (training).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from components.attention.types import CallInfo
from components.base import ParamError
from components.patches.base import AttentionPatch
from registry import register

CONFIG_FILE, WEIGHTS_FILE = "wings.json", "wings.safetensors"


@dataclass(frozen=True)
class WingsConfig:
    """Shapes of the learners: ``layers`` (decoder layer indices), ``hidden`` size, ``n_heads``, ``rank``,
    ``router_len`` (router input width = longest sequence), ``rope_theta``."""

    layers: tuple[int, ...]
    hidden: int
    n_heads: int
    rank: int = 16
    router_len: int = 1024
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ParamError(f"wings.layers: {self.layers} must be distinct non-negative layer indices")
        if self.hidden % self.n_heads or (self.hidden // self.n_heads) % 2:
            raise ParamError(f"wings: hidden {self.hidden} / heads {self.n_heads} must give an even head size")
        if not 1 <= self.rank <= self.hidden:
            raise ParamError(f"wings.rank: {self.rank} is outside [1, {self.hidden}]")
        if self.router_len < 1:
            raise ParamError(f"wings.router_len: {self.router_len} must be >= 1")


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half form, as HF Llama) of x (B, H, T, dh) at positions pos (B, T)."""
    dh = x.shape[-1]
    inv = theta ** (-torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh)  # (dh/2,)
    ang = pos.float()[..., None] * inv  # (B, T, dh/2)
    emb = torch.cat([ang, ang], dim=-1)[:, None]  # (B, 1, T, dh)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    return x * emb.cos().to(x.dtype) + torch.cat([-x2, x1], dim=-1) * emb.sin().to(x.dtype)


class LowRank(nn.Module):
    """x -> B A x (A: rank x d_in truncated-normal std 0.02, B: d_out x rank zero), the reference's Sequential."""

    def __init__(self, d_in: int, rank: int, d_out: int) -> None:
        super().__init__()
        self.a = nn.Linear(d_in, rank, bias=False)
        self.b = nn.Linear(rank, d_out, bias=False)
        nn.init.trunc_normal_(self.a.weight, std=0.02)
        nn.init.zeros_(self.b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class LoRRA(nn.Module):
    """One low-rank residual attention learner: queries from x, keys/values from features f (see module doc)."""

    def __init__(self, cfg: WingsConfig) -> None:
        super().__init__()
        d, r = cfg.hidden, cfg.rank
        self.n_heads, self.theta = cfg.n_heads, cfg.rope_theta
        self.q, self.k, self.v, self.o = (LowRank(d, r, d) for _ in range(4))

    def forward(self, x: torch.Tensor, f: torch.Tensor, visible: torch.Tensor, q_pos: torch.Tensor,
                k_pos: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), f (B, S, d), visible (B, T, S) bool, q_pos (B, T), k_pos (B, S) -> (B, T, d); a query that
        sees no key gets 0."""
        b, t, d = x.shape
        h = self.n_heads
        f = f.to(x.dtype)

        def heads(z: torch.Tensor) -> torch.Tensor:  # (B, N, d) -> (B, H, N, d/H)
            return z.view(b, z.shape[1], h, d // h).transpose(1, 2)

        q = rope(heads(x + self.q(x)), q_pos, self.theta)  # (B, H, T, dh)
        k = rope(heads(f + self.k(f)), k_pos, self.theta)  # (B, H, S, dh)
        v = heads(f + self.v(f))  # (B, H, S, dh)
        logits = (q @ k.transpose(-1, -2)).float() / math.sqrt(d // h)  # (B, H, T, S)
        logits = logits.masked_fill(~visible[:, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0).to(v.dtype)  # rows without keys: 0
        out = (probs @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, d)
        return self.o(out)


class Router(nn.Module):
    """r = softmax(SiLU(W a + b)) over (visual, textual); a (B, T, S) head-summed attention, key j -> column
    ``pos[b, j]`` of W (2 x router_len). nn.Linear's default init, as the reference."""

    def __init__(self, cfg: WingsConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(cfg.router_len, 2)

    def forward(self, attn: torch.Tensor, k_pos: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """attn (B, T, S), k_pos (B, S) long, real (B, S) bool -> (B, T, 2) routing weights."""
        if int(k_pos.max()) >= self.linear.in_features:
            raise ValueError(f"wings: position {int(k_pos.max())} is beyond the router's {self.linear.in_features} "
                             "columns (router_len); train learners with a larger router_len")
        w = self.linear.weight[:, k_pos].to(attn.dtype)  # (2, B, S)
        a = attn * real[:, None, :]  # (B, T, S)
        logits = torch.einsum("bts,cbs->btc", a, w) + self.linear.bias.to(attn.dtype)  # (B, T, 2)
        return torch.softmax(torch.nn.functional.silu(logits), dim=-1)


class LayerWings(nn.Module):
    def __init__(self, cfg: WingsConfig) -> None:
        super().__init__()
        self.visual, self.textual, self.router = LoRRA(cfg), LoRRA(cfg), Router(cfg)


class WingsLearners(nn.Module):
    """The trainable Wings modules of every chosen layer (``blocks[str(layer)]``), with save/load."""

    def __init__(self, cfg: WingsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleDict({str(i): LayerWings(cfg) for i in cfg.layers})

    @classmethod
    def for_model(cls, model: nn.Module, layers: tuple[int, ...] | None = None, rank: int = 16,
                  router_len: int = 1024, seed: int = 0) -> "WingsLearners":
        """New learners shaped for ``model``'s language model (``layers`` None: every layer)."""
        text = model.config.get_text_config()
        n_layers = text.num_hidden_layers
        layers = tuple(range(n_layers)) if layers is None else tuple(layers)
        if any(i >= n_layers for i in layers):
            raise ParamError(f"wings.layers: {layers} has a layer >= the model's {n_layers}")
        theta = getattr(text, "rope_theta", None) or (getattr(text, "rope_parameters", None) or {}).get(
            "rope_theta", 10000.0)
        torch.manual_seed(seed)
        return cls(WingsConfig(layers=layers, hidden=text.hidden_size, n_heads=text.num_attention_heads, rank=rank,
                               router_len=router_len, rope_theta=float(theta)))

    def save(self, out: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps({**asdict(self.cfg), "layers": list(self.cfg.layers)}, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "WingsLearners":
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / CONFIG_FILE).read_text())
        learners = cls(WingsConfig(**{**cfg, "layers": tuple(cfg["layers"])}))
        learners.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return learners.eval()


def adapter_sha256(path: str | Path) -> str:
    """sha256 of an adapter folder's config and weights (what identifies a trained adapter in caches)."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()


@register("wings", version="1.0.0", family="patch", paper="arXiv:2406.03496",
          summary="Wings: trained LoRRA visual/textual learners beside the attention, attention-based router.")
@dataclass(frozen=True)
class Wings(AttentionPatch):
    """Wings learners (a trained adapter) added beside the main attention of their layers (NeurIPS 2024).

    Parameters
    ----------
    adapter : str
        Folder with ``wings.json`` and ``wings.safetensors`` (``attnflow train-vlm --adapter wings`` writes it to
        ``<out>/wings``). Required, except for learners given in memory with ``Wings.of``.
    adapter_sha256 : str
        sha256 of the adapter's files; filled from the folder when empty (so caches key on the weights), checked
        against it when given (pins an adapter). Default empty.
    """

    adapter: str = ""
    adapter_sha256: str = ""

    component_name: ClassVar[str] = "wings"
    edits_probabilities: ClassVar[bool] = True  # reads the main attention (router input); leaves it unchanged
    has_fast_path: ClassVar[bool] = False
    needs_images: ClassVar[bool] = True
    needs_layer_inputs: ClassVar[bool] = True
    runs_without_images: ClassVar[bool] = True  # text-only prompts: the textual learner still acts (vlm-eval)
    onnx_exportable: ClassVar[bool] = False
    onnx_reason: ClassVar[str] = "it adds trained modules through forward hooks outside the attention function"
    example: ClassVar[dict[str, str]] = {"adapter": "./demo-vlm-wings/wings"}

    def __post_init__(self) -> None:
        path = Path(self.adapter).expanduser() if self.adapter else None
        if path is not None and (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file():
            sha = adapter_sha256(path)
            if self.adapter_sha256 and self.adapter_sha256 != sha:
                raise ParamError(f"wings.adapter_sha256: {self.adapter_sha256} does not match {path} ({sha})")
            object.__setattr__(self, "adapter_sha256", sha)

    @classmethod
    def of(cls, learners: WingsLearners) -> "Wings":
        """A patch applying in-memory learners (training; not a registry spec)."""
        patch = cls()
        object.__setattr__(patch, "_learners", learners)
        return patch

    def learners(self) -> WingsLearners:
        """The learners: in memory (``of``) or loaded from ``adapter`` (once per patch object)."""
        got = self.__dict__.get("_learners")
        if got is None:
            path = Path(self.adapter).expanduser()
            if not self.adapter or not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
                raise ParamError(f"wings.adapter: {self.adapter!r} is not a Wings adapter folder ({CONFIG_FILE} + "
                                 f"{WEIGHTS_FILE}); train one with attnflow train-vlm --adapter wings")
            got = WingsLearners.load(path)
            object.__setattr__(self, "_learners", got)
        return got

    def check_model(self, config: Any) -> None:
        super().check_model(config)
        if getattr(config, "model_type", None) != "llava":
            raise ParamError(f"wings is implemented for LLaVA-style models; got model_type={config.model_type!r}")
        cfg, text = self.learners().cfg, config.get_text_config()
        if (cfg.hidden, cfg.n_heads) != (text.hidden_size, text.num_attention_heads) or \
                max(cfg.layers) >= text.num_hidden_layers:
            raise ParamError(f"wings: the adapter (hidden {cfg.hidden}, {cfg.n_heads} heads, layers {cfg.layers}) "
                             f"does not fit the model (hidden {text.hidden_size}, {text.num_attention_heads} heads, "
                             f"{text.num_hidden_layers} layers)")

    def acts_on_layer(self, layer: int, n_layers: int) -> bool:
        return layer in self.learners().cfg.layers

    def edit_probs(self, call: CallInfo, probs: torch.Tensor) -> torch.Tensor:
        """Keep the head-summed probabilities (B, T, S) of this call for the router; probabilities unchanged."""
        call.state(self)["attn"] = probs.sum(dim=1)
        return probs

    def model_hooks(self, model: nn.Module, session: Any) -> list:
        """Pre-hook on the language model (input embeddings, kept across cached steps) and a forward hook on each
        learner layer's ``self_attn`` that adds the routed learners to its output."""
        from components.attention.session import attention_modules

        learners = self.learners().to(next(model.parameters()).device)
        scope = session.state.setdefault(("wings", id(self)), {})
        decoder = model.get_decoder()

        def keep_features(module, args, kwargs):
            emb = kwargs.get("inputs_embeds")
            if emb is None:
                ids = kwargs.get("input_ids", args[0] if args else None)
                emb = module.get_input_embeddings()(ids)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
            seen = scope.get("feats")
            if past == 0:
                scope["feats"] = emb
            elif seen is None or seen.shape[0] != emb.shape[0] or seen.shape[1] != past:
                raise ValueError("wings: a cached step continues a prefill that ran outside the wings scope")
            else:
                scope["feats"] = torch.cat([seen, emb], dim=1)

        handles = [decoder.register_forward_pre_hook(keep_features, with_kwargs=True)]
        mods = attention_modules(model)
        for layer in learners.cfg.layers:
            handles.append(mods[layer].register_forward_hook(self._adder(learners, layer, scope, session)))
        return handles

    def _adder(self, learners: WingsLearners, layer: int, scope: dict, session: Any):
        block = learners.blocks[str(layer)]

        def hook(module, args, output):
            out = output[0]  # (B, T, d) after o_proj
            feats = scope["feats"]  # (B, S, d)
            attn = session.state[(id(self), layer)]["attn"]  # (B, T, S)
            img, am = session.image_tokens, session.attention_mask_2d
            b, s = feats.shape[:2]
            if img is None or img.shape != (b, s):
                raise ValueError("wings needs the image-token flags of the whole sequence (call the model with "
                                 "input_ids inside the scope)")
            real = am.bool() if am is not None and am.shape == (b, s) else torch.ones(b, s, dtype=torch.bool)
            real, img = real.to(out.device), img.to(out.device)
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, S) from each row's first real token
            q_pos = pos[:, s - out.shape[1]:]  # (B, T)
            x = session.layer_inputs[layer] + out  # (B, T, d) residual after the main attention
            t = x.shape[1]
            see_img = (img & real)[:, None, :].expand(b, t, s)  # (B, T, S)
            see_txt = (real & ~img)[:, None, :] & (pos[:, None, :] <= q_pos[:, :, None])  # (B, T, S) causal
            r = block.router(attn.to(x.dtype), pos, real)  # (B, T, 2)
            delta = r[..., :1] * block.visual(x, feats, see_img, q_pos, pos) + \
                r[..., 1:] * block.textual(x, feats, see_txt, q_pos, pos)
            return (out + delta.to(out.dtype), *output[1:])

        return hook
