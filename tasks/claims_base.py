"""The claim interface of ``attnflow reproduce``: a paper's headline statement checked on a real model.

``run(model, *, seeds, data, dtype, progress, **options)`` returns a ClaimResult dict: claim, paper, statement,
criterion, verdict ("held" | "not held" | "inconclusive"), reason, figures (means over seeds), ci (95% intervals),
per_seed, n_seeds, model, wall_s. ``needs_data`` names the keys of ``data`` (user files) the claim reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    name: str                     # "sinks"
    paper: str                    # "arXiv:2410.10781"
    statement: str                # the paper's claim in one sentence
    criterion: str                # the threshold in words, stated before running (also in docs)
    run: Callable[..., dict]      # run(model, *, seeds, data, dtype, progress, **options) -> ClaimResult dict
    needs_data: tuple[str, ...] = ()   # keys of `data` it needs; missing -> verdict "inconclusive", no compute
