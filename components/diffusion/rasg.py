"""RASG: reweighting attention score guidance, HD-Painter's sampling-time guidance for text-guided inpainting.

Paper: Manukyan et al., "HD-Painter: High-Resolution and Prompt-Faithful Text-Guided Image Inpainting with
Diffusion Models", ICLR 2025, arXiv:2312.14091, Sec. 3.3; reference code github.com/Picsart-AI-Research/HD-Painter
(``src/methods/rasg.py``, ``src/utils/scores.py``: ``bce``; read, not vendored; the paper's full text was not available
offline, so the score and step below are the reference code's). PAIntA is painta.py.

Score. In a conditional denoiser pass at x_t, the cross-attention logits (before softmax, no bias) of every call on
the grids of the latent's height over ``factors`` are averaged over calls and heads, ``sim`` (B, T, L), and

    L(x_t) = sum_{k in prompt tokens} BCEWithLogits(sim[:, k] - 1, m)          (mean over the T cells; m = mask)

is the loss of the cross-attention of the prompt's tokens (its words and the end-of-text token) against the
region to fill. RASG does not descend L: it replaces the random term of a DDIM step with eta > 0 by the
normalised gradient (the paper's "general form of DDIM" argument: a unit-variance term keeps x in distribution),

    x_{t-1} = sqrt(a_{t-1}) x0_hat + sqrt(1 - a_{t-1} - (eta sigma_t)^2) eps + eta sigma_t g / std(g),
    g = -grad_{x_t} L                                       (the reference: ``grad`` of ``-sum BCE``, ``/= std``)

Form used: the DDIM-with-guidance form of the paper. The gradient comes from the runner's test-time update pass
(``needs_latent_update``, a conditional pass under autograd in every step; ``latent_step_size`` is 0, so the runner
leaves x unchanged bit for bit); a tensor hook on the denoiser's input captures grad_x L during the runner's
backward, and :class:`RASGScheduler` (a wrapper of a ``DDIMScheduler``: ``rasg.scheduler(ddim)``) makes the DDIM
step with ``eta`` and ``variance_noise = g / std(g)`` (per image). ``runner.sample`` and ``sample_inpaint`` wrap a
plain DDIM scheduler themselves (``wrap_scheduler``); a hand-written loop with an unwrapped scheduler fails at the
next step (the gradient would be wasted). With ``eta = 0`` there is no pass and every step is the
plain DDIM step.

Defaults (the reference's): eta 0.1 (``hd_inpaint.py --rasg-eta``), grid latent / 4 (the 16x16 cross-attention of a
64x64 SD latent), every prompt word + the end-of-text token, every step. Deviations: sigma_t is DDIM's
(cumulative-alpha) sigma as in the paper, where the reference's ``Schedule.sigma`` reads the per-step
alpha = 1 - beta; std(g) is taken per image (the reference runs one image); the reference's gradient pass is its
guided batched pass, here a separate conditional pass (the same gradient: batch rows are independent).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from components.base import ParamError, check_range
from components.diffusion.base import DiffusionComponent
from components.diffusion.painta import check_box, check_mask, prompt_tokens, region_on_grid
from components.diffusion.types import DiffusionCallInfo, DiffusionSession
from registry import register


@register("rasg", version="0.1.0", family="diffusion", paper="arXiv:2312.14091",
          summary="HD-Painter RASG: DDIM noise replaced by the normalised gradient of a cross-attention BCE "
                  "against the mask.")
@dataclasses.dataclass(frozen=True)
class RASG(DiffusionComponent):
    """Reweighting attention score guidance (HD-Painter); sample with ``RASG.scheduler(DDIMScheduler(...))``.

    Parameters
    ----------
    eta
        DDIM eta >= 0 of the guided step; 0 = plain DDIM (no gradient pass).
    box
        The region to fill, x0, y0, x1, y1 as fractions of width and height; or ``with_mask(mask)``.
    words
        Prompt words whose cross-attention is scored (case-insensitive); empty = every word.
    eot
        Also score the token after the prompt's last word (end-of-text), as the reference does.
    factors
        Score the cross-attention on grids of the latent's height over these factors.
    """

    eta: float = 0.1
    box: tuple[float, ...] = ()
    words: tuple[str, ...] = ()
    eot: bool = True
    factors: tuple[int, ...] = (4,)
    _mask: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)
    _pending: dict = dataclasses.field(init=False, repr=False, compare=False)  # the gradient of this step

    example: ClassVar[dict] = {"eta": "0.5", "box": "0.25,0.25,0.75,0.75", "factors": "1"}
    needs_word_tokens: ClassVar[bool] = True
    needs_latent_update: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pending", {})
        check_range("rasg.eta", self.eta, 0.0, None)
        if not self.factors or any(f < 1 for f in self.factors):
            raise ParamError(f"rasg.factors={self.factors}: give positive integer factors")
        if self.box:
            check_box(self.box, "rasg")

    def with_mask(self, mask: torch.Tensor) -> "RASG":
        """A copy that reads the region to fill from ``mask`` ((H, W) or (B or 1, 1, H, W), 1 = fill)."""
        return dataclasses.replace(self, _mask=check_mask(mask, "rasg"))

    def scheduler(self, ddim: Any) -> "RASGScheduler":
        """``ddim`` (a diffusers ``DDIMScheduler``) wrapped so that its steps use this component's gradient."""
        return RASGScheduler(ddim, self)

    def wrap_scheduler(self, scheduler: Any) -> Any:
        """The samplers' hook: a plain ``DDIMScheduler`` is wrapped (``scheduler(ddim)``) unless eta is 0; a
        scheduler already wrapped for this component is kept."""
        if isinstance(scheduler, RASGScheduler):
            if scheduler.rasg is not self:
                raise ValueError("rasg: the scheduler is wrapped for another RASG component (one RASG per sampler)")
            return scheduler
        return self.scheduler(scheduler) if self.latent_update_steps() > 0 else scheduler

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        if not self.box and self._mask is None:
            raise ParamError("rasg: give the region to fill, box=x0,y0,x1,y1 or .with_mask(mask)")
        if not any(getattr(m, "is_cross_attention", False) for m in modules.values()):
            raise ValueError("rasg scores cross-attention; this denoiser has no cross-attention module")

    # -- the update pass -------------------------------------------------------------------------------------
    def latent_update_steps(self) -> int:
        return 0 if self.eta == 0 else sys.maxsize

    def latent_step_size(self, step: int, n_steps: int) -> float:
        return 0.0  # the gradient is used by RASGScheduler, not descended

    def begin_update(self, session: DiffusionSession) -> None:
        if "grad" in self._pending:
            raise ValueError("rasg: the previous step's gradient was not used; sample with rasg.scheduler(ddim)")
        self._pending.clear()
        session.state[(id(self), "logits")] = []
        session.state[(id(self), "updating")] = True

    def scope_hooks(self, model: torch.nn.Module, session: DiffusionSession) -> list:
        self._pending.clear()  # a gradient left by an interrupted run is never used
        channels = int(model.config.out_channels)

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("sample")
            if not (session.state.get((id(self), "updating")) and torch.is_grad_enabled()
                    and isinstance(x, torch.Tensor) and x.requires_grad):
                return

            def capture(grad):
                self._pending["grad"] = grad[:, :channels].detach()  # (B, C, H, W) of the sample channels
            x.register_hook(capture)
            t = args[1] if len(args) > 1 else kwargs.get("timestep")
            self._pending["t"] = torch.as_tensor(t).detach().clone()
        return [model.register_forward_pre_hook(hook, with_kwargs=True)]

    def acts_on(self, call: DiffusionCallInfo) -> bool:
        if not (call.is_cross and call.spatial is not None and call.session.state.get((id(self), "updating"))):
            return False
        shape = call.session.runtime.latent_shape
        return shape is not None and any(shape[-2] == f * call.spatial[0] for f in self.factors)

    def edit_output(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(call.query.dtype, torch.float32)
        sim = call.query.to(dtype) @ call.key.to(dtype).transpose(-1, -2) * call.scale  # (B, H, T, L)
        call.session.state[(id(self), "logits")].append((call.spatial, sim))
        return out

    def latent_loss(self, session: DiffusionSession) -> torch.Tensor:
        session.state[(id(self), "updating")] = False
        recorded = session.state.get((id(self), "logits")) or []
        if not recorded:
            raise ValueError(f"rasg recorded no cross-attention on grids of latent / {self.factors}")
        grids = {g for g, _ in recorded}
        if len(grids) > 1:
            raise ValueError(f"rasg: factors {self.factors} select several grids {sorted(grids)}; give one")
        (h, w), = grids
        sim = torch.cat([s for _, s in recorded], dim=1).mean(1)  # (B, T, L): mean over calls and heads
        rows = session.runtime.word_tokens
        if rows is None or len(rows) != sim.shape[0]:
            raise ValueError("rasg reads the prompt's word positions: set them per batch row (the runner does)")
        tokens = prompt_tokens(rows, self.words, self.eot, sim.shape[-1]).to(sim.device)  # (B, L)
        target = region_on_grid(self.box, self._mask, h, w, sim.shape[0], sim.device).to(sim.dtype)  # (B, T)
        loss = sim.new_zeros(())
        for b in range(sim.shape[0]):
            for k in tokens[b].nonzero().flatten().tolist():
                loss = loss + F.binary_cross_entropy_with_logits(sim[b, :, k] - 1.0, target[b])
        return loss


class RASGScheduler:
    """A ``DDIMScheduler`` whose ``step`` uses RASG's normalised gradient as the DDIM noise (eta of the component).

    Everything else (``set_timesteps``, ``timesteps``, ``scale_model_input``, ``add_noise``, ``config`` ...) is the
    wrapped scheduler's. A step without a pending gradient (eta 0, or outside a RASG sampling run) is the plain
    deterministic DDIM step (eta 0).
    """

    def __init__(self, ddim: Any, rasg: RASG) -> None:
        if type(ddim).__name__ != "DDIMScheduler":
            raise ValueError(f"RASG guides a DDIM step (eta, variance_noise); got {type(ddim).__name__}")
        self.inner = ddim
        self.rasg = rasg

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator=None, **kwargs):
        pending = self.rasg._pending
        grad = pending.pop("grad", None)
        t = pending.pop("t", None)
        if grad is None:
            return self.inner.step(model_output, timestep, sample, eta=0.0, generator=generator, **kwargs)
        if grad.shape != sample.shape or (t is not None and not bool((t == torch.as_tensor(timestep)).all())):
            raise ValueError(f"rasg: the pending gradient (shape {tuple(grad.shape)}, t {t}) is not this step's "
                             f"(shape {tuple(sample.shape)}, t {timestep})")
        g = -grad  # ascend the score = descend the BCE loss
        g = g / g.flatten(1).std(dim=1).clamp_min(torch.finfo(g.dtype).tiny).view(-1, *[1] * (g.dim() - 1))
        return self.inner.step(model_output, timestep, sample, eta=self.rasg.eta, variance_noise=g.to(sample.dtype),
                               **kwargs)
