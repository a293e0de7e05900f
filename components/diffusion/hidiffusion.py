"""HiDiffusion: RAU-Net (resolution-aware U-Net) + MSW-MSA (modified shifted-window self-attention).

Paper: Zhang et al., "HiDiffusion: Unlocking Higher-Resolution Creativity and Efficiency in Pretrained Diffusion
Models", ECCV 2024, arXiv:2311.17528; reference code github.com/megvii-research/HiDiffusion
(``hidiffusion/hidiffusion.py``: ``make_diffusers_transformer_block``, ``make_diffusers_downsampler_block``,
``apply_hidiffusion``). Read, not vendored.

MSW-MSA, on the self-attention of the chosen blocks (default: the first down block and the last up block, the
highest-resolution ones, as the reference's SD 1.5 keys ``down_blocks.0`` / ``up_blocks.3``). The (h, w) grid is
rolled by ``-s = -(k * (h/2 // 4), k * (w/2 // 4))`` and cut into 2 x 2 windows of (h/2, w/2) cells; each query
attends only to the keys of its window (cyclic: no Swin mask at the wrap-around). On the original grid, cell
(y, x) lies in window

    win(y, x) = 2 * (((y - s_y) mod h) // (h/2)) + ((x - s_x) mod w) // (w/2)

so the attention is softmax(logits + bias) with ``bias = 0`` where win(query) == win(key) and ``-inf`` elsewhere
(``window_bias``: the materialised form, ``edit_logits``). Fast form (``fused_attention``): the tokens are gathered
window by window and one fused SDPA call runs over (4B, H, T/4, D); outputs scatter back; other components'
score biases are windowed with them. The reference draws k uniformly from {0, 1, 2, 3} at every block call
(``torch.rand``); here k is drawn from a generator seeded by (``seed``, denoising step, layer), so a step's passes
share a shift and runs reproduce (``shift=-1``), or fixed (``shift`` = k in 0..3).

RAU-Net (SD 1.5 form of the reference, ``T1_ratio``): during the first ``int(t1_ratio * n_steps)`` denoising steps,
the downsampler convolution of ``down_block`` (3x3, stride 2, padding 1) runs with stride 4, padding 2, dilation 2
(a 4x reduction with the same weights), and the upsampler feeding the mirrored up block interpolates (nearest) to
the size the downsampler received, so the deeper blocks see the resolution they were trained at. Installed by
``model_scope`` (an instance ``forward`` on the conv, a pre-hook on the upsampler) and removed exactly on exit.

Defaults: ``t1_ratio`` 0.4 (reference ``sd15_1024``, 2x the training resolution), MSW-MSA and RAU-Net on,
``down_block`` 0. Deviations: the step comes from the runner (``call.step``; a call outside the runner counts as an
early step), not a per-module call counter; the shift schedule is seeded (above); odd grids are refused (the
reference interpolates them bicubically to an even size); the SDXL pooling form (``make_diffusers_cross_attn_down_
block``, avg-pool after the first resnet) and the T2 extreme-resolution stage (``T2_ratio``) are not built.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import block_of
from components.diffusion.types import DiffusionCallInfo, DiffusionSession
from registry import register


def shift_index(seed: int, step: int | None, layer: int) -> int:
    """k in {0, 1, 2, 3} for (seed, step, layer): the seeded stand-in of the reference's per-call ``torch.rand``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + ((step if step is not None else -1) + 1) * 1009 + layer)
    return int(torch.randint(4, (1,), generator=gen))


def shift_of(k: int, h: int, w: int) -> tuple[int, int]:
    """The reference's shift for k: ``(ws_h // 4 * k, ws_w // 4 * k)`` with windows of (h/2, w/2)."""
    return (h // 2 // 4 * k, w // 2 // 4 * k)


def window_order(h: int, w: int, shift: tuple[int, int]) -> torch.Tensor:
    """(4, h*w/4) long: for each window (row-major over the 2 x 2 windows), the grid indices of its cells."""
    ys = ((torch.arange(h) + shift[0]) % h).reshape(2, h // 2)  # (2, h/2): rolled row -> original row
    xs = ((torch.arange(w) + shift[1]) % w).reshape(2, w // 2)  # (2, w/2)
    idx = ys[:, None, :, None] * w + xs[None, :, None, :]  # (2, 2, h/2, w/2)
    return idx.reshape(4, -1)


def window_bias(h: int, w: int, shift: tuple[int, int], dtype=torch.float32) -> torch.Tensor:
    """(T, T) bias: 0 where query and key share a window, -inf elsewhere (the formula in the module docstring)."""
    y = torch.arange(h).repeat_interleave(w)
    x = torch.arange(w).repeat(h)
    win = 2 * (((y - shift[0]) % h) // (h // 2)) + ((x - shift[1]) % w) // (w // 2)  # (T,)
    same = win[:, None] == win[None, :]
    return torch.zeros(h * w, h * w, dtype=dtype).masked_fill(~same, float("-inf"))


@register("hidiffusion", version="0.1.0", family="diffusion", paper="arXiv:2311.17528",
          summary="HiDiffusion: RAU-Net (4x dilated downsampler in early steps) + MSW-MSA windowed self-attention.")
@dataclasses.dataclass(frozen=True)
class HiDiffusion(DiffusionComponent):
    """Higher-resolution sampling of a UNet: windowed self-attention at the outer blocks and a resolution-aware
    down/upsampling pair in early steps.

    Parameters
    ----------
    msw_msa
        Windowed self-attention (2 x 2 windows, shifted) in ``window_blocks``.
    raunet
        Resolution-aware down/upsampling in the first ``t1_ratio`` of the steps.
    t1_ratio
        Fraction of the denoising steps with RAU-Net active, in [0, 1].
    down_block
        Index of the down block whose downsampler becomes resolution-aware (its mirror up block's upsampler follows).
    window_blocks
        Blocks whose self-attention is windowed; empty = the first down block and the last up block.
    shift
        k in 0..3 (shift = k quarters of a window), or -1: drawn per (step, layer) from ``seed``.
    seed
        Seed of the shift schedule.
    """

    msw_msa: bool = True
    raunet: bool = True
    t1_ratio: float = 0.4
    down_block: int = 0
    window_blocks: tuple[str, ...] = ()
    shift: int = -1
    seed: int = 0

    example: ClassVar[dict] = {"t1_ratio": "0.4", "shift": "-1"}
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = True
    replaces_kernel: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("hidiffusion.t1_ratio", self.t1_ratio, 0.0, 1.0)
        if self.shift not in (-1, 0, 1, 2, 3):
            raise ParamError(f"hidiffusion.shift={self.shift}: give 0..3 (quarters of a window) or -1 (seeded draw)")
        if self.down_block < 0:
            raise ParamError(f"hidiffusion.down_block={self.down_block} is negative")

    # -- MSW-MSA -------------------------------------------------------------------------------------------------
    def _window_blocks(self, names) -> tuple[str, ...]:
        if self.window_blocks:
            return self.window_blocks
        blocks = [block_of(n) for n in names]
        downs = sorted({b for b in blocks if b.startswith("down_blocks.")}, key=lambda b: int(b.split(".")[1]))
        ups = sorted({b for b in blocks if b.startswith("up_blocks.")}, key=lambda b: int(b.split(".")[1]))
        return tuple(x for x in (downs[:1] + ups[-1:]))

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        if not self.msw_msa:
            return
        chosen = self._window_blocks(modules)
        selfs = [n for n, m in modules.items() if not getattr(m, "is_cross_attention", False) and block_of(n) in chosen]
        if not selfs:
            raise ValueError(f"hidiffusion.window_blocks={chosen!r} names no self-attention module of this denoiser "
                             f"(blocks: {sorted({block_of(n) for n in modules})})")

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        if not self.msw_msa or not call.is_self or call.n_image is not None:
            return False
        key = (id(self), "window_blocks")
        if key not in call.session.state:
            names = [k.removesuffix(".processor") for k in call.session.model.attn_processors]
            call.session.state[key] = self._window_blocks(names)
        return call.block in call.session.state[key]

    def _shift(self, call: DiffusionCallInfo) -> tuple[int, int]:
        if call.spatial is None:
            raise ValueError(f"hidiffusion: self-attention call {call.name} has no known (h, w) grid")
        h, w = call.spatial
        if h % 2 or w % 2:
            raise ValueError(f"hidiffusion: {call.name} runs on a {h}x{w} grid; MSW-MSA needs even sides (choose a "
                             "sample size divisible by the UNet's downsampling, or msw_msa=False)")
        k = self.shift if self.shift >= 0 else shift_index(self.seed, call.step, call.layer)
        return shift_of(k, h, w)

    def edit_logits(self, call: DiffusionCallInfo, logits: torch.Tensor) -> torch.Tensor:
        h, w = call.spatial or (0, 0)
        return logits + window_bias(h, w, self._shift(call), logits.dtype).to(logits.device)  # (B, H, T, T)

    def fused_attention(self, call, query, key, value, mask):
        b, n_heads, t, d = query.shape
        h, w = call.spatial or (0, 0)
        order = window_order(h, w, self._shift(call)).to(query.device)  # (4, L)
        flat = order.reshape(-1)

        def windows(x):  # (B, H, T, D) -> (4B, H, L, D)
            return x[:, :, flat].reshape(b, x.shape[1], 4, -1, x.shape[-1]).transpose(1, 2).reshape(
                4 * b, x.shape[1], -1, x.shape[-1])

        wmask = None
        if mask is not None:
            full = mask.expand(b, mask.shape[1] if mask.dim() == 4 else 1, t, t)  # (B, Hm, T, T)
            wmask = full[:, :, order[:, :, None], order[:, None, :]]  # (B, Hm, 4, L, L)
            wmask = wmask.transpose(1, 2).reshape(4 * b, full.shape[1], order.shape[1], order.shape[1])
        kwargs = {} if call.scale == d**-0.5 else {"scale": call.scale}
        out_w = F.scaled_dot_product_attention(windows(query), windows(key), windows(value), attn_mask=wmask,
                                               dropout_p=0.0, is_causal=False, **kwargs)  # (4B, H, L, D)
        out_w = out_w.reshape(b, 4, n_heads, -1, d).transpose(1, 2).reshape(b, n_heads, t, d)  # window order
        out = torch.empty_like(out_w)
        out[:, :, flat] = out_w
        return out

    # -- RAU-Net -------------------------------------------------------------------------------------------------
    def _raunet_active(self, session: DiffusionSession) -> bool:
        rt = session.runtime
        if rt.step is None or rt.n_steps is None:
            return self.t1_ratio > 0
        return rt.step < int(rt.n_steps * self.t1_ratio)

    @contextmanager
    def model_scope(self, model: torch.nn.Module, session: DiffusionSession) -> Iterator[None]:
        if not self.raunet:
            yield
            return
        downs, ups = getattr(model, "down_blocks", None), getattr(model, "up_blocks", None)
        if downs is None or ups is None:
            raise ValueError("hidiffusion.raunet needs a UNet with down_blocks / up_blocks, not "
                             f"{type(model).__name__}")
        d, m = self.down_block, len(ups) - 2 - self.down_block
        if d >= len(downs) or m < 0 or getattr(downs[d], "downsamplers", None) is None \
                or getattr(ups[m], "upsamplers", None) is None:
            raise ValueError(f"hidiffusion.down_block={d}: down_blocks.{d} needs a downsampler and its mirror "
                             f"up_blocks.{m} an upsampler ({len(downs)} down blocks)")
        conv, up = downs[d].downsamplers[0].conv, ups[m].upsamplers[0]
        if not isinstance(conv, torch.nn.Conv2d) or conv.kernel_size != (3, 3) or conv.stride != (2, 2) \
                or conv.padding != (1, 1) or conv.dilation != (1, 1):
            raise ValueError(f"hidiffusion.raunet: down_blocks.{d}.downsamplers.0.conv is not a 3x3 stride-2 "
                             f"padding-1 convolution ({conv})")
        if getattr(up, "use_conv_transpose", False) or not getattr(up, "interpolate", False):
            raise ValueError(f"hidiffusion.raunet: up_blocks.{m}.upsamplers.0 does not interpolate")
        sizes: list[tuple[int, int]] = []
        had_forward = "forward" in conv.__dict__
        previous = conv.__dict__.get("forward")
        plain = conv.forward

        def forward(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/4, W/4) while active
            if not self._raunet_active(session):
                sizes.clear()
                return plain(x)
            sizes[:] = [tuple(x.shape[-2:])]
            return F.conv2d(x, conv.weight, conv.bias, (4, 4), (2, 2), (2, 2), conv.groups)

        def upsample_size(module, args, kwargs):
            if not sizes:
                return None
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kwargs.pop("output_size", None)
            return (hidden, sizes[0], *args[2:]), kwargs

        conv.forward = forward
        handle = up.register_forward_pre_hook(upsample_size, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            if had_forward:
                conv.forward = previous
            else:
                del conv.forward
