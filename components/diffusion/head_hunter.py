"""HeadHunter: iterative selection of the attention heads whose soft perturbation best serves a user objective.

Paper: Ahn et al., "Fine-Grained Perturbation Guidance via Attention Head Selection", arXiv:2506.10978, 2025;
reference code github.com/cvlab-kaist/HeadHunter (not reachable from this machine; the procedure below is
reconstructed from the paper's description: "iteratively selecting attention heads that align with user-centric
objectives"). SoftPAG itself (the per-head perturbation and the guidance) is components/diffusion/softpag.py.

Procedure (``hunt``), for an objective J (higher is better) scored on images sampled with SoftPAG on a head set:

    1. single-head scores  s_h = J(SoftPAG(heads={h}))           for every candidate self-attention head h
    2. pool                P   = the ``pool`` heads with the highest s_h
    3. greedy rounds       S_0 = {argmax_h s_h};
                           S_r = S_{r-1} + {argmax_{h in P - S_{r-1}} J(SoftPAG(heads=S_{r-1} + {h}))}
       stopping after ``rounds`` heads, or earlier when no addition raises J by more than ``min_gain``.

Cost: |candidates| + sum over rounds of |P - S| objective calls, each sampling the objective's prompts x seeds.
The search never changes the model: every evaluation runs inside the component's scope.

Defaults: ``pool`` 8, ``rounds`` 4, ``min_gain`` 0 (stop when nothing improves). The objective is the user's:
on demo-t2i, bench/diffusion_head_hunt.py uses the shape detector's binding rate.

Deviations: the paper ranks heads on SD3 / FLUX with learned quality and style rewards (e.g. HPS, PickScore,
style similarity) over many prompts; here any callable, and UNet self-attention heads as candidates
(``candidate_heads``); joint SD3 blocks work the same way through the SoftPAG component. How the reference composes
heads (pure greedy, beam, or top-k of single-head scores) is not verified; greedy forward selection over a pool is
this file's choice.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from components.diffusion.dispatch import attention_modules, block_of, denoiser_of
from components.diffusion.softpag import SoftPAG
from components.heads import HeadSet

Head = tuple[int, int]  # (attention-module index = DiffusionCallInfo.layer, head)


@dataclasses.dataclass(frozen=True)
class HuntStep:
    """One accepted head: the set after adding it and the objective of that set."""

    head: Head
    heads: tuple[Head, ...]
    score: float


@dataclasses.dataclass(frozen=True)
class HuntResult:
    """Single-head scores, the greedy trajectory, and the number of objective calls."""

    single: dict[Head, float]
    steps: tuple[HuntStep, ...]
    calls: int

    @property
    def heads(self) -> HeadSet:
        return HeadSet.of(self.steps[-1].heads if self.steps else ())

    @property
    def score(self) -> float:
        return self.steps[-1].score if self.steps else float("nan")


def candidate_heads(target: torch.nn.Module, blocks: Sequence[str] = ()) -> list[Head]:
    """Every (module index, head) of the self-attention modules of ``target`` (a denoiser or a pipeline holding
    one) in ``blocks`` (block names as in SoftPAG; empty = all). Module indices follow ``attention_modules``."""
    modules = attention_modules(denoiser_of(target))
    out = [(i, h) for i, (name, m) in enumerate(modules.items())
           if not getattr(m, "is_cross_attention", False) and (not blocks or block_of(name) in blocks)
           for h in range(m.heads)]
    if not out:
        raise ValueError(f"no self-attention module in blocks {tuple(blocks)!r} "
                         f"(blocks: {sorted({block_of(n) for n in modules})})")
    return out


def hunt(objective: Callable[[SoftPAG], float], candidates: Sequence[Head], *, strength: float = 1.0,
         scale: float = 3.0, blocks: Sequence[str] = (), pool: int = 8, rounds: int = 4, min_gain: float = 0.0,
         progress: Callable[[str], None] | None = None) -> HuntResult:
    """Greedy head selection (module docstring). ``objective(component)`` samples with the SoftPAG component and
    returns a score, higher is better; it must be deterministic for a fixed component (fixed prompts and seeds)."""
    if not candidates:
        raise ValueError("hunt: no candidate heads")
    if pool < 1 or rounds < 1:
        raise ValueError(f"hunt: pool ({pool}) and rounds ({rounds}) must be >= 1")
    if len(set(candidates)) != len(candidates):
        raise ValueError("hunt: candidate heads repeat")
    say = progress or (lambda _msg: None)

    def comp(heads: Sequence[Head]) -> SoftPAG:
        return SoftPAG(strength=strength, scale=scale, blocks=tuple(blocks), heads=HeadSet.of(heads))

    comp(candidates[:1])  # parameters validated before any sampling
    single: dict[Head, float] = {}
    for i, h in enumerate(candidates):
        single[h] = float(objective(comp([h])))
        say(f"single head {h}: {single[h]:.4f} ({i + 1}/{len(candidates)})")
    ranked = sorted(candidates, key=lambda h: (-single[h], h))
    chosen = [ranked[0]]
    steps = [HuntStep(ranked[0], (ranked[0],), single[ranked[0]])]
    calls = len(candidates)
    for _ in range(rounds - 1):
        best: tuple[float, Head] | None = None
        for h in ranked[:pool]:
            if h in chosen:
                continue
            score = float(objective(comp([*chosen, h])))
            calls += 1
            if best is None or score > best[0]:
                best = (score, h)
        if best is None or best[0] <= steps[-1].score + min_gain:
            say("no head improves the objective: stop")
            break
        chosen.append(best[1])
        steps.append(HuntStep(best[1], tuple(chosen), best[0]))
        say(f"round {len(steps)}: + {best[1]} -> {best[0]:.4f}")
    return HuntResult(single, tuple(steps), calls)
