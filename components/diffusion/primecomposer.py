"""PrimeComposer: correlation-diffuser attention steering + region-constrained cross-attention (RCA).

Paper: Wang, Zhang, Zheng, Jin, "PrimeComposer: Faster Progressively Combined Diffusion for Image Composition with
Attention Steering", ACM MM 2024, arXiv:2403.05053; reference code github.com/CodeGoat24/PrimeComposer
(``ptp_scripts/ptp_utils.py``: ``register_attention_control`` with ``pseudo_cross`` / ``inject`` and
``prompt_ca_forward``; ``ldm/models/diffusion/dpm_solver/sampler.py``: the tau_a / tau_b / tau_c schedule). Read, not
vendored.

Mechanism, with O the object's cells (centres inside ``box``) on each self-attention grid:

1. Correlation diffuser (a reference pass over the noised composite, inside ``recording(session)``): every
   self-attention call attends only to the object's keys (the reference's pseudo cross-attention), and its logits
   ``S = q k_O^T * scale`` (B, H, T, |O|) are stored per layer.
2. Generator (the conditional rows, in the first ``int(tau_a * n_steps)`` steps): the self-attention logits are
   steered toward S (lambda = ``strength``; lambda = 1 is the reference's replacement), keys first, then queries:

       L[:, :, :, O] <- lambda S + (1 - lambda) L[:, :, :, O]
       L[:, :, O, :] <- lambda S^T + (1 - lambda) L[:, :, O, :]

   then softmax and P V (materialised path).
3. RCA: the tokens of ``words`` are masked out (logit -inf, ``outside`` = 0) for queries outside the box, on the rows
   that name them (the conditional rows), at every generator step: ``region_mask.RegionMask``'s bias.

``compose`` is the progressive combination loop: per step, the correlation pass on the composite noised to t, the
generator's CFG pass with 2-3, then for steps below ``int(tau_c n)`` the generator latent is replaced by the noised
composite and below ``int(tau_b n)`` its background (outside the box) is.

Defaults (reference ``scripts/main.py`` / sampler): tau_a 0.4, tau_b 0.8, tau_c 0.2, hard RCA, every self- and
cross-attention layer. Deviations: the object is the box (the reference uses the foreground's segmentation inside
it); the correlation pass takes its keys from the composite's own object cells (the reference reads them from a
separately inverted reference image whose object is pasted there); the composite is noised with the scheduler's
forward process and one fixed noise (the reference inverts it with DPM-Solver); steps are counted from 0 without
the solver-order offset; ``strength`` below 1 is an attnflow generalisation (0 = off, the plain model exactly).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import applied, block_of
from components.diffusion.region_mask import RegionMask, inside_box
from components.diffusion.types import DiffusionCallInfo, DiffusionSession, WordTokens
from registry import register


@register("primecomposer", version="0.1.0", family="diffusion", paper="arXiv:2403.05053",
          summary="PrimeComposer: reference-pass self-attention logits steered into the object region + RCA.")
@dataclasses.dataclass(frozen=True)
class PrimeComposer(DiffusionComponent):
    """Steer the generator's self-attention with a correlation pass and confine subject words to the object box.

    Parameters
    ----------
    box
        Object region x0, y0, x1, y1 as fractions of width and height (origin top-left).
    words
        Subject words whose cross-attention is confined to the box (RCA); empty = no RCA.
    strength
        lambda in [0, 1]: steering of the object's logits toward the correlation pass (1 = replacement).
    tau_a
        Fraction of the steps with steering (and correlation passes), in [0, 1].
    outside
        RCA factor on the subject words' attention outside the box, in [0, 1] (0 = the reference's hard mask).
    blocks
        UNet blocks whose attention is steered / constrained; empty = every block.
    """

    box: tuple[float, ...] = (0.25, 0.25, 0.75, 0.75)
    words: tuple[str, ...] = ()
    strength: float = 1.0
    tau_a: float = 0.4
    outside: float = 0.0
    blocks: tuple[str, ...] = ()

    example: ClassVar[dict] = {"box": "0.25,0.25,0.75,0.75", "words": "circle", "tau_a": "0.4"}
    edits_probabilities: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if len(self.box) != 4 or not (0 <= self.box[0] < self.box[2] <= 1 and 0 <= self.box[1] < self.box[3] <= 1):
            raise ParamError(f"primecomposer.box={self.box}: give x0, y0, x1, y1 with 0 <= x0 < x1 <= 1, "
                             "0 <= y0 < y1 <= 1")
        check_range("primecomposer.strength", self.strength, 0.0, 1.0)
        check_range("primecomposer.tau_a", self.tau_a, 0.0, 1.0)
        check_range("primecomposer.outside", self.outside, 0.0, 1.0)

    @property
    def needs_word_tokens(self) -> bool:  # type: ignore[override]
        return bool(self.words)

    def region_mask(self) -> RegionMask:
        """The RCA part: ``words`` confined to ``box``."""
        return RegionMask(words=self.words, boxes=tuple(self.box) * len(self.words), outside=self.outside,
                          blocks=self.blocks)

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        selfs = [n for n, m in modules.items() if not getattr(m, "is_cross_attention", False)
                 and (not self.blocks or block_of(n) in self.blocks)]
        if not selfs:
            raise ValueError(f"primecomposer.blocks={self.blocks!r} names no self-attention module of this denoiser "
                             f"(blocks: {sorted({block_of(n) for n in modules})})")
        if self.words:
            self.region_mask().check_denoiser(modules)

    # -- schedule and passes ---------------------------------------------------------------------------------------
    def steers(self, step: int | None, n_steps: int | None) -> bool:
        """Whether step ``step`` of ``n_steps`` is steered (a call outside a sampler counts as steered)."""
        if self.strength == 0:
            return False
        return step is None or n_steps is None or step < int(self.tau_a * n_steps)

    @contextmanager
    def recording(self, session: DiffusionSession) -> Iterator[None]:
        """Run the block as the correlation pass: object-only self-attention, logits stored per layer (the store of
        the previous pass is dropped first)."""
        session.state[(id(self), "store")] = {}
        session.state[(id(self), "recording")] = True
        try:
            yield
        finally:
            session.state[(id(self), "recording")] = False

    def _recording(self, call: DiffusionCallInfo) -> bool:
        return bool(call.session.state.get((id(self), "recording")))

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        if self.blocks and call.block not in self.blocks:
            return False
        if call.is_cross:
            return bool(self.words) and not self._recording(call)
        return self._recording(call) or self.steers(call.step, call.n_steps)

    def score_bias(self, call: DiffusionCallInfo) -> torch.Tensor | None:
        return self.region_mask().score_bias(call) if call.is_cross else None

    def _object(self, call: DiffusionCallInfo) -> torch.Tensor:
        if call.spatial is None:
            raise ValueError(f"primecomposer: self-attention call {call.name} has no known (h, w) grid")
        cells = inside_box(tuple(self.box), *call.spatial).nonzero()[:, 0]  # type: ignore[arg-type]
        if cells.numel() == 0:
            raise ValueError(f"primecomposer.box={self.box} holds no cell centre of the {call.spatial} grid of "
                             f"{call.name}; enlarge it")
        return cells.to(call.device)

    def _rows(self, call: DiffusionCallInfo) -> list[int]:
        """The generator rows that are steered: rows naming prompt words (the conditional half under CFG), or every
        row when no prompt words are set."""
        words = call.session.runtime.word_tokens
        if words is None or len(words) != call.batch:
            return list(range(call.batch))
        return [b for b, row in enumerate(words) if row]

    def edit_logits(self, call: DiffusionCallInfo, logits: torch.Tensor) -> torch.Tensor:
        if call.is_cross:
            return logits
        obj = self._object(call)  # (n,)
        store = call.session.state.setdefault((id(self), "store"), {})
        if self._recording(call):
            store[call.layer] = (call.step, logits[..., obj].detach().clone())  # (B, H, T, n)
            masked = torch.full_like(logits, float("-inf"))
            masked[..., obj] = logits[..., obj]
            return masked
        if call.layer not in store or store[call.layer][0] != call.step:
            raise ValueError(f"primecomposer: no correlation pass recorded {call.name} at step {call.step}; run "
                             "the reference pass inside `recording(session)` first (compose does)")
        s = store[call.layer][1].to(logits.dtype)
        rows = self._rows(call)
        if len(rows) != s.shape[0]:
            raise ValueError(f"primecomposer: the correlation pass had {s.shape[0]} rows, the generator steers "
                             f"{len(rows)} ({call.name})")
        lam = self.strength
        out = logits.clone()
        sub = out[rows]  # (R, H, T, T)
        sub[..., obj] = lam * s + (1 - lam) * sub[..., obj]
        sub[..., obj, :] = lam * s.transpose(-1, -2) + (1 - lam) * sub[..., obj, :]
        out[rows] = sub
        return out


@torch.no_grad()
def compose(unet: torch.nn.Module, scheduler: Any, cond: torch.Tensor, composite: torch.Tensor,
            component: PrimeComposer, *, uncond: torch.Tensor | None = None, cfg_scale: float = 1.0,
            word_tokens: list[WordTokens] | None = None, steps: int = 10, seed: int = 0, tau_b: float = 0.8,
            tau_c: float = 0.2, force: str | None = None) -> torch.Tensor:
    """PrimeComposer's progressive combination: (B, C, H, W) composite (background with the object pasted in the
    box) -> the composed sample. With no steering, no RCA and ``tau_b = tau_c = 0`` this is ``runner.sample``."""
    b = cond.shape[0]
    check_range("compose.tau_b", tau_b, 0.0, 1.0)
    check_range("compose.tau_c", tau_c, 0.0, tau_b)
    if composite.dim() != 4 or composite.shape[0] != b or composite.shape[1] != unet.config.in_channels:
        raise ValueError(f"compose: composite has shape {tuple(composite.shape)}; need ({b}, "
                         f"{unet.config.in_channels}, H, W) for {b} prompts")
    if component.words and word_tokens is None:
        raise ValueError("compose: primecomposer.words needs word_tokens (runner.encode_prompts)")
    if uncond is not None and uncond.shape[0] not in (1, b):
        raise ValueError(f"compose: uncond has {uncond.shape[0]} rows, cond {b}: give 1 or {b}")
    h, w = composite.shape[-2:]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((b, composite.shape[1], h, w), generator=gen, dtype=cond.dtype).to(cond.device)
    x = x * scheduler.init_noise_sigma
    noise = torch.randn(composite.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=cond.dtype)
    noise = noise.to(cond.device)  # the composite's fixed forward-process noise (stand-in for its inversion)
    box = inside_box(tuple(component.box), h, w).reshape(1, 1, h, w).to(cond.device, cond.dtype)  # type: ignore
    scheduler.set_timesteps(steps)
    ts = scheduler.timesteps
    n = len(ts)
    cfg = uncond is not None
    enc_both = torch.cat([uncond.expand(b, -1, -1), cond]) if cfg else cond  # (2B | B, L, E)
    # per-row word tokens; without prompts' words a placeholder entry still marks the conditional rows (non-empty)
    # apart from the unconditional ones (empty), which is how PrimeComposer._rows picks the rows it steers
    rows = list(word_tokens) if word_tokens is not None else [[("", [])] for _ in range(b)]
    rows_both = ([[] for _ in range(b)] + rows) if cfg else rows
    with applied(unet, component, force=force) as session:
        rt = session.runtime
        rt.n_steps = n
        for i, t in enumerate(ts):
            rt.step = i
            if component.steers(i, n):
                noisy = scheduler.add_noise(composite, noise, t.reshape(1))  # (B, C, H, W) composite at t
                rt.set_word_tokens(rows)
                with component.recording(session):
                    unet(scheduler.scale_model_input(noisy, t), t, encoder_hidden_states=cond)
            xin = scheduler.scale_model_input(x, t)
            rt.set_word_tokens(rows_both)
            out = unet(torch.cat([xin, xin]) if cfg else xin, t, encoder_hidden_states=enc_both).sample
            if cfg:
                eps_u, eps_c = out.chunk(2)
                eps = eps_u + cfg_scale * (eps_c - eps_u)
            else:
                eps = out
            x = scheduler.step(eps, t, x, generator=gen).prev_sample
            if i < int(tau_b * n):
                target = scheduler.add_noise(composite, noise, ts[i + 1].reshape(1)) if i + 1 < n else composite
                x = target if i < int(tau_c * n) else box * x + (1 - box) * target
    return x
