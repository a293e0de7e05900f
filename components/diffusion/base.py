"""DiffusionComponent: the base of attention edits on diffusers denoisers (UNet2DConditionModel).

A component declares how it acts, so the dispatcher (components/diffusion/dispatch.py) keeps the fused SDPA kernel
wherever the math allows:

- ``score_bias(call)``: an additive logit bias broadcastable to (B, H, T, S), or None. Fast path: added to the
  kernel's float mask.
- ``post_attention(call, out)``: a probability edit with a closed form on the kernel's output (B, H, T, D), for
  components with ``edits_probabilities`` and ``has_fast_path``.
- ``edit_logits(call, logits)`` / ``edit_probs(call, probs)``: the edit on materialised (B, H, T, S) logits /
  probabilities. A call where a probability editor without a fast form is active takes the materialised path.
- ``edit_output(call, out)``: per-head outputs (B, H, T, D) before the output projection.

The edit hooks return their input unchanged by default. Capabilities (class attributes) are read by the dispatcher
and by the pipeline runner (components/diffusion/runner.py):

- ``edits_probabilities``, ``has_fast_path``: as above.
- ``needs_extra_pass``: a guidance method: the runner runs one more denoiser pass per step over the conditional
  rows with ``Runtime.pass_kind == "perturbed"`` and combines it with ``guide``; it skips that pass when
  ``guidance_weight() == 0``.
- ``needs_word_tokens``: the component reads prompt-word token positions (cross-attention reweighting).
- ``replaces_kernel``: the component computes the fast path's attention itself (``fused_attention``, e.g. a windowed
  kernel); its materialised form is its ``edit_logits``. At most one such component may act on a call.
- ``model_scope(model, session)``: a context manager the dispatcher enters for the life of the scope, after the
  processors are installed and before the block runs, and leaves on exit (errors included): module surgery that is
  not an attention edit (HiDiffusion's RAU-Net) is installed and restored there.
- ``needs_latent_update``: a test-time optimisation method (A-STAR, Attend-and-Excite, TextCenGen, RASG): in each of
  the first ``latent_update_steps()`` steps the runner calls ``begin_update(session)``, runs the denoiser on the
  conditional rows under autograd, and moves the latent by ``-latent_step_size(i, n) * grad latent_loss(session)``
  before the step's guided prediction.
- ``needs_embedding_update``: a prompt-learning method (Dynamic Prompt Learning): in each of the first
  ``embedding_update_steps()`` steps the runner optimises the input-token embeddings at ``learned_positions`` of
  each prompt (an optimiser from ``embedding_optimizer``, at most ``embedding_iterations()`` iterations of: encode
  the prompt with them, run the denoiser on the conditional rows under autograd, read ``embedding_loss``, stop
  when every image's targets are met), then encodes the prompt with the learned embeddings for that step and the
  following ones. The runner needs the text encoder and the prompts' token ids for it.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch

from components.base import Component
from components.diffusion.types import DiffusionCallInfo, DiffusionSession


@dataclasses.dataclass(frozen=True)
class DiffusionComponent(Component):
    """Base class of diffusion attention components.

    The dispatcher calls, per attention call, for every component whose ``acts_on(call)`` is true: ``score_bias``;
    then either ``post_attention`` (fast path) or ``edit_logits`` and ``edit_probs`` (materialised path) of the
    probability editors; then ``edit_output``.
    """

    edits_probabilities: ClassVar[bool] = False
    has_fast_path: ClassVar[bool] = False
    needs_extra_pass: ClassVar[bool] = False
    needs_word_tokens: ClassVar[bool] = False
    needs_latent_update: ClassVar[bool] = False
    replaces_kernel: ClassVar[bool] = False
    needs_embedding_update: ClassVar[bool] = False

    @contextmanager
    def applied(self, target: torch.nn.Module, *, force: str | None = None) -> Iterator[DiffusionSession]:
        """Install this component on ``target`` (a UNet2DConditionModel or a pipeline holding one as ``unet``)
        for the block; the original attention processors are restored on exit, exceptions included."""
        from components.diffusion.dispatch import applied

        with applied(target, self, force=force) as session:
            yield session

    def check_denoiser(self, modules: dict[str, torch.nn.Module]) -> None:
        """Validate parameters against the denoiser's attention modules (path -> module, in layer order) before
        anything changes; raise ValueError naming the problem."""

    def scope_hooks(self, model: torch.nn.Module, session: DiffusionSession) -> list:
        """Forward hooks (``RemovableHandle`` objects) the component registers on the denoiser's modules for the
        scope, e.g. to read a transformer block's input; the dispatcher removes them on exit (default: none)."""
        return []
    @contextmanager
    def model_scope(self, model: torch.nn.Module, session: DiffusionSession) -> Iterator[None]:
        """Module surgery for the life of the scope (default: none); must restore the model exactly on exit."""
        yield

    # -- where ---------------------------------------------------------------------------------------------------
    def acts_on(self, call: DiffusionCallInfo) -> bool:
        """Whether this call is edited at all (default: every call)."""
        return True

    # -- hooks ---------------------------------------------------------------------------------------------------
    def score_bias(self, call: DiffusionCallInfo) -> torch.Tensor | None:
        """Additive logit bias broadcastable to (B, H, T, S), or None."""
        return None

    def post_attention(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        """Fast form of a probability edit: (B, H, T, D) kernel output -> edited output."""
        return out

    def edit_logits(self, call: DiffusionCallInfo, logits: torch.Tensor) -> torch.Tensor:
        """(B, H, T, S) materialised logits (scaled, masked, biased) -> edited logits."""
        return logits

    def edit_probs(self, call: DiffusionCallInfo, probs: torch.Tensor) -> torch.Tensor:
        """(B, H, T, S) materialised probabilities -> edited probabilities."""
        return probs

    def edit_output(self, call: DiffusionCallInfo, out: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) per-head outputs -> edited outputs (before the output projection)."""
        return out

    def fused_attention(self, call: DiffusionCallInfo, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Fast path of a ``replaces_kernel`` component: (B, H, T, D) outputs equal to
        ``softmax(q k^T * scale + mask + edit_logits) v``, computed by the component's own kernel."""
        raise NotImplementedError(f"{self.component_name} declares no fused attention")

    # -- test-time latent updates (needs_latent_update) ----------------------------------------------------------
    def latent_update_steps(self) -> int:
        """How many of the first denoising steps update the latent (0: none)."""
        return 0

    def begin_update(self, session: DiffusionSession) -> None:
        """Called before the update pass of a step (e.g. to forget the previous pass's recordings)."""

    def latent_loss(self, session: DiffusionSession) -> torch.Tensor:
        """Scalar loss from what the update pass recorded; differentiable with respect to the latent."""
        raise NotImplementedError(f"{self.component_name} declares no latent loss")

    def latent_step_size(self, step: int, n_steps: int) -> float:
        """Step size of the latent update at denoising step ``step`` of ``n_steps``."""
        return 0.0

    # -- learned prompt embeddings (needs_embedding_update) ----------------------------------------------------------
    def embedding_update_steps(self) -> int:
        """How many of the first denoising steps update the learned token embeddings (0: none)."""
        return 0

    def embedding_iterations(self) -> int:
        """At most this many optimiser iterations per step."""
        return 0

    def learned_positions(self, word_tokens: list) -> list[list[int]]:
        """Per prompt (its ``WordTokens``), the token positions whose input embeddings are learned."""
        return [[] for _ in word_tokens]

    def embedding_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """A fresh optimiser over the learned embeddings, made at each updated step."""
        raise NotImplementedError(f"{self.component_name} declares no embedding optimizer")

    def embedding_loss(self, session: DiffusionSession, step: int, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image (B,): the loss from what the update pass recorded, and (B,) bool: its targets are met
        (that image is not updated, and the iterations stop when every image's are)."""
        raise NotImplementedError(f"{self.component_name} declares no embedding loss")

    # -- the sampler's scheduler -------------------------------------------------------------------------------------
    def wrap_scheduler(self, scheduler: Any) -> Any:
        """The scheduler the samplers step with while this component is applied (default: ``scheduler`` itself;
        RASG substitutes its guided DDIM step). ``runner.sample`` and ``inpaint.sample_inpaint`` call it."""
        return scheduler

    # -- guidance (needs_extra_pass) -------------------------------------------------------------------------------
    def guidance_weight(self) -> float:
        """Weight of the extra-pass guidance term; 0 makes the runner skip the pass."""
        return 0.0

    def guide(self, eps: torch.Tensor, eps_cond: torch.Tensor, eps_perturbed: torch.Tensor) -> torch.Tensor:
        """Combine the guided prediction with the perturbed pass's (default: ``eps + w (eps_cond - eps_perturbed)``,
        perturbed-attention guidance, Ahn et al. 2024 eq. 10)."""
        return eps + self.guidance_weight() * (eps_cond - eps_perturbed)
