"""PAIntA: prompt-aware introverted attention, HD-Painter's self-attention edit for text-guided inpainting.

Paper: Manukyan et al., "HD-Painter: High-Resolution and Prompt-Faithful Text-Guided Image Inpainting with
Diffusion Models", ICLR 2025, arXiv:2312.14091, Sec. 3.2; reference code github.com/Picsart-AI-Research/HD-Painter
(``src/smplfusion/patches/transformerpatch/painta.py`` and ``attentionpatch/painta.py``, read for the details below;
not vendored; the paper's full text was not available offline, so the formula below is the reference code's).
RASG, the paper's second mechanism, is components/diffusion/rasg.py.

Mechanism, on the self-attention (``attn1``) of each ``BasicTransformerBlock`` whose grid is the latent's size over
one of ``factors``. With x the block's input, y = attn1(norm1(x)) the unedited self-attention output, and the
block's own cross-attention run on the conditional prompt,

    P = mean_heads softmax(attn2.to_q(norm2(x + y)) attn2.to_k(prompt)^T * scale2)          (B, T, L)
    S_j = sum_{l in prompt tokens} P[j, l]                  (the prompt's words and the end-of-text token)
    S <- S * G        (3x3 smoothing, weights exp(-((d)/(2 sigma))^2), sigma = 0.5, normalised, zero padding)
    s_j = clip((S_j - median(S)) / max(S), 0, 1)

and the self-attention scores of a query i inside the region to fill (mask 1) on a key j outside it are scaled:

    logits'_ij = c_ij * (q_i . k_j * scale),   c_ij = 1 - u (1 - s_j) if i in mask and j not in mask, else 1

(u = ``strength``; u = 1 is the paper's ``c_ij = s_j``). Known-region pixels unrelated to the prompt lose their
pull on the region being filled ("introverted"). Classifier-free guidance: the unconditional rows use the similarity
of their conditional partner (rows ``[uncond; cond]``, the runner's layout), as the reference does; a row without
prompt words and without such a partner is left unedited.

Paths. Fast: c_ij depends on j only for the queries in the mask, so those rows equal one more fused kernel call
with keys scaled per row, ``softmax(q (s' * k)^T)`` (s'_j = 1 - u(1 - s_j) off the mask, 1 on it), selected by
query; both kernel calls add the same biases (``call.attn_mask``). Materialised: ``logits + (c - 1) * raw`` with
raw = q k^T * scale, so other components' biases are not scaled.

Defaults (the reference's): every prompt word + the end-of-text token, grids of latent / 2 and latent / 4 (the
reference's 32x32 and 16x16 of a 64x64 SD latent), the first half of the steps (``until`` 0.5: the reference edits
while t > 500 of 1000), smoothing on. Deviations: the mask is downsampled by area averaging and thresholded at 0.5
(the reference: bicubic PIL resize of a mask dilated by one pixel, then > 0.5); the step window is a fraction of
the runner's steps, not a timestep; the reference's prompt suffix (``positive_prompt``) is not modelled.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.region_mask import inside_box
from components.diffusion.types import DiffusionCallInfo, DiffusionSession, WordTokens
from registry import register

SMOOTH_SIGMA = 0.5


def smoothing_kernel(sigma: float = SMOOTH_SIGMA, dtype=torch.float64) -> torch.Tensor:
    """(3, 3) kernel of the reference's GaussianSmoothing: exp(-((d - 1) / (2 sigma))^2) per axis, normalised."""
    d = torch.arange(3, dtype=dtype)
    g = torch.exp(-(((d - 1.0) / (2 * sigma)) ** 2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def normalised_similarity(sim: torch.Tensor, h: int, w: int, smooth: bool = True) -> torch.Tensor:
    """(B, T) summed prompt similarity -> (B, T) s = clip((S - median) / max, 0, 1) after optional smoothing."""
    b = sim.shape[0]
    if smooth:
        k = smoothing_kernel(dtype=sim.dtype).to(sim.device)[None, None]  # (1, 1, 3, 3)
        sim = F.conv2d(sim.reshape(b, 1, h, w), k, padding=1).reshape(b, h * w)
    med = sim.median(dim=-1, keepdim=True).values  # (B, 1), lower median as torch.median
    mx = sim.amax(dim=-1, keepdim=True)
    return ((sim - med) / mx.clamp_min(torch.finfo(sim.dtype).tiny)).clamp(0.0, 1.0)


def mask_at(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B or 1, 1, H, W) 0/1 mask -> (B or 1, h * w) bool on the (h, w) grid (area average > 0.5)."""
    small = F.interpolate(mask.double(), size=(h, w), mode="area")  # (B|1, 1, h, w)
    return (small > 0.5).reshape(mask.shape[0], h * w)


def check_mask(mask: torch.Tensor, who: str) -> torch.Tensor:
    """(H, W) or (B or 1, 1, H, W) with values 0 / 1 -> (B or 1, 1, H, W) float; ParamError naming ``who``."""
    m = mask[None, None] if mask.dim() == 2 else mask
    if m.dim() != 4 or m.shape[1] != 1:
        raise ParamError(f"{who}: mask has shape {tuple(mask.shape)}; need (H, W) or (B or 1, 1, H, W)")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ParamError(f"{who}: mask values must be 0 (keep) or 1 (fill)")
    return m.detach().float().cpu()


def check_box(box: tuple[float, ...], who: str) -> None:
    if len(box) != 4:
        raise ParamError(f"{who}.box: {len(box)} numbers; give x0, y0, x1, y1 (fractions of width / height)")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ParamError(f"{who}.box={box} is not 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")


def region_on_grid(box: tuple[float, ...], mask: torch.Tensor | None, h: int, w: int, batch: int,
                   device) -> torch.Tensor:
    """(batch, h * w) bool: the region to fill on an (h, w) grid, from a tensor mask or else a box."""
    if mask is not None:
        if mask.shape[0] not in (1, batch) and batch % mask.shape[0] != 0:
            raise ValueError(f"mask has {mask.shape[0]} rows; the call has {batch}")
        m = mask_at(mask, h, w)
        m = m.repeat(batch // m.shape[0], 1)  # CFG rows [uncond; cond] share the per-image masks
    else:
        m = inside_box(tuple(box), h, w)[None].expand(batch, -1)
    return m.to(device)


def prompt_tokens(rows: list[WordTokens], words: tuple[str, ...], eot: bool, kv_len: int) -> torch.Tensor:
    """(B, L) bool: per row, the tokens of ``words`` (every word if empty), plus the token after the last word
    (the end-of-text token of CLIP-style tokenizers) when ``eot``."""
    wanted = {w.lower() for w in words}
    out = torch.zeros(len(rows), kv_len, dtype=torch.bool)
    for r, entries in enumerate(rows):
        pos = [p for word, ps in entries for p in ps if not wanted or word.lower() in wanted]
        last = max((p for _, ps in entries for p in ps), default=None)
        if eot and last is not None and last + 1 < kv_len:
            pos.append(last + 1)
        for p in pos:
            if 0 <= p < kv_len:
                out[r, p] = True
    return out


def partner_rows(rows: list[WordTokens]) -> list[int | None]:
    """Per row, the row whose similarity it uses: itself when it names words; under the [uncond; cond] layout the
    conditional partner of an unconditional row; None otherwise."""
    n = len(rows)
    cfg = n % 2 == 0 and all(not r for r in rows[: n // 2]) and all(r for r in rows[n // 2:])
    return [i if rows[i] else (i + n // 2 if cfg else None) for i in range(n)]


@register("painta", version="0.1.0", family="diffusion", paper="arXiv:2312.14091",
          summary="HD-Painter PAIntA: self-attention of the region to fill scaled by the known keys' prompt "
                  "similarity.")
@dataclasses.dataclass(frozen=True)
class PAIntA(DiffusionComponent):
    """Prompt-aware introverted attention (HD-Painter).

    Parameters
    ----------
    strength
        u in [0, 1]: c = 1 - u (1 - s); 1 is the paper's formula, 0 leaves the attention unchanged.
    box
        The region to fill, x0, y0, x1, y1 as fractions of width and height (origin top-left); a tensor mask can
        be given instead with ``with_mask``.
    words
        Prompt words whose similarity counts (case-insensitive); empty = every word of the prompt.
    eot
        Also count the token after the prompt's last word (the end-of-text token), as the reference does.
    factors
        Edit the self-attention on grids of the latent's height over these factors; empty = every grid.
    until
        Edit in denoising steps i < until * n_steps (outside a runner: always).
    smooth
        Smooth the similarity map with the reference's 3x3 kernel before normalising.
    """

    strength: float = 1.0
    box: tuple[float, ...] = ()
    words: tuple[str, ...] = ()
    eot: bool = True
    factors: tuple[int, ...] = (2, 4)
    until: float = 0.5
    smooth: bool = True
    _mask: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)

    example: ClassVar[dict] = {"box": "0.25,0.25,0.75,0.75", "factors": "1,2"}
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = True
    needs_word_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("painta.strength", self.strength, 0.0, 1.0)
        check_range("painta.until", self.until, 0.0, 1.0)
        if any(f < 1 for f in self.factors):
            raise ParamError(f"painta.factors={self.factors}: factors are positive integers")
        if self.box:
            check_box(self.box, "painta")

    def with_mask(self, mask: torch.Tensor) -> "PAIntA":
        """A copy that reads the region to fill from ``mask`` ((H, W) or (B or 1, 1, H, W), 1 = fill, at the
        sample's resolution) instead of ``box``; without either, applying the component fails."""
        return dataclasses.replace(self, _mask=check_mask(mask, "painta"))

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        if not self.box and self._mask is None:
            raise ParamError("painta: give the region to fill, box=x0,y0,x1,y1 or .with_mask(mask)")
        pairs = [n for n in modules if n.endswith(".attn1") and n[:-1] + "2" in modules
                 and getattr(modules[n[:-1] + "2"], "is_cross_attention", False)]
        if not pairs:
            raise ValueError("painta edits the self-attention of transformer blocks with a cross-attention (attn1 +"
                             " attn2, UNet2DConditionModel); this denoiser has none")

    def scope_hooks(self, model: torch.nn.Module, session: DiffusionSession) -> list:
        handles = []
        for name, mod in model.named_modules():
            if type(mod).__name__ != "BasicTransformerBlock":
                continue
            if mod.norm_type != "layer_norm" or mod.pos_embed is not None or mod.attn2 is None \
                    or mod.only_cross_attention:
                raise ValueError(f"painta: block {name} is not a plain layer-norm self + cross-attention block "
                                 f"(norm_type={mod.norm_type!r})")
            handles.append(mod.register_forward_pre_hook(self._block_hook(session, name), with_kwargs=True))
        return handles

    def _block_hook(self, session: DiffusionSession, name: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            session.state[(id(self), "block", name)] = (x, ctx)
        return hook

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        if self.strength == 0 or not call.is_self or call.n_image is not None or not call.name.endswith(".attn1"):
            return False
        if call.step is not None and call.n_steps and call.step >= self.until * call.n_steps:
            return False
        shape = call.session.runtime.latent_shape
        if call.spatial is None or shape is None:
            return False
        return not self.factors or any(shape[-2] == f * call.spatial[0] for f in self.factors)

    # -- the similarity and the factor ------------------------------------------------------------------------
    def _scales(self, call: DiffusionCallInfo, out: torch.Tensor):
        """(B, T) key scale s' and (B, T) query region from the unedited output ``out`` (B, H, T, D)."""
        model = call.session.model
        block_name = call.name.rsplit(".", 1)[0]
        block = model.get_submodule(block_name)
        got = call.session.state.get((id(self), "block", block_name))
        if got is None:
            raise ValueError(f"painta: no input recorded for {block_name} (its forward pre-hook did not run)")
        x, ctx = got
        rows = call.session.runtime.word_tokens
        if rows is None or len(rows) != call.batch:
            raise ValueError("painta reads the prompt's word positions: set them per batch row "
                             "(Runtime.set_word_tokens, done by the runner)")
        attn1, attn2 = block.attn1, block.attn2
        b, t = call.batch, call.q_len
        y = attn1.to_out[1](attn1.to_out[0](out.transpose(1, 2).reshape(b, t, -1).to(x.dtype)))  # (B, T, C)
        if ctx is not None and attn2.norm_cross:
            ctx = attn2.norm_encoder_hidden_states(ctx)
        dtype = torch.promote_types(x.dtype, torch.float32)
        h2 = attn2.heads
        q2 = attn2.to_q(block.norm2(x + y)).to(dtype)  # (B, T, C2)
        k2 = attn2.to_k(ctx).to(dtype)  # (B, L, C2)
        q2 = q2.view(b, t, h2, -1).transpose(1, 2)  # (B, H2, T, d)
        k2 = k2.view(b, k2.shape[1], h2, -1).transpose(1, 2)  # (B, H2, L, d)
        p2 = torch.softmax(q2 @ k2.transpose(-1, -2) * attn2.scale, dim=-1).mean(1)  # (B, T, L)
        tokens = prompt_tokens(rows, self.words, self.eot, p2.shape[-1]).to(p2.device)  # (B, L)
        h, w = call.spatial
        s = normalised_similarity((p2 * tokens[:, None, :]).sum(-1), h, w, self.smooth)  # (B, T)
        src = partner_rows(rows)
        keep = torch.tensor([p is not None for p in src], device=s.device)  # (B,)
        s = s[torch.tensor([p if p is not None else i for i, p in enumerate(src)], device=s.device)]
        region = region_on_grid(self.box, self._mask, h, w, b, s.device) & keep[:, None]  # (B, T)
        key_scale = torch.where(region, torch.ones_like(s), 1.0 - self.strength * (1.0 - s))  # (B, T)
        return key_scale, region

    def post_attention(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        key_scale, region = self._scales(call, out)
        k = call.key * key_scale[:, None, :, None].to(call.key.dtype)  # (B, H, S, D)
        scale = None if call.scale == call.head_dim ** -0.5 else call.scale
        mask = call.attn_mask
        edited = F.scaled_dot_product_attention(call.query, k, call.value, attn_mask=mask, dropout_p=0.0,
                                                scale=scale)  # (B, H, T, D)
        return torch.where(region[:, None, :, None], edited.to(out.dtype), out)

    def edit_logits(self, call: DiffusionCallInfo, logits: torch.Tensor) -> torch.Tensor:
        dtype = logits.dtype
        v = call.value.to(dtype)
        out = torch.softmax(logits, dim=-1) @ v  # (B, H, T, D): the unedited output
        key_scale, region = self._scales(call, out.to(call.query.dtype))
        raw = call.query.to(dtype) @ call.key.to(dtype).transpose(-1, -2) * call.scale  # (B, H, T, S)
        c = torch.where(region[:, None, :, None], key_scale[:, None, None, :].to(dtype),
                        torch.ones((), dtype=dtype, device=logits.device))
        return logits + (c - 1.0) * raw

