"""Head search, the research side: what a search varies for a patch, how a trial is scored, how heads are chosen.

A patch is searchable when its class sets ``head_search`` (see :class:`components.patches.base.AttentionPatch`) to a
:class:`HeadSearch`. The head-search flow (``flows/head_search.py``) then runs, for that patch and nothing else:

1. one trial per candidate (layer, head): the patch with ``trial`` parameters (and the user's) on that head alone,
   plus the unpatched model, each scored by :meth:`HeadSearch.score` on a calibration split;
2. :meth:`HeadSearch.select`: the head set from the gains over the unpatched model;
3. when ``grid`` is not empty, one evaluation per point of :meth:`HeadSearch.grid_points` on the chosen head set,
   and :meth:`HeadSearch.pick`: the point kept (``refined``), or None.

The flow knows no method: a new searchable patch declares (or subclasses) a ``HeadSearch`` in its own file. Objectives
are ``accuracy`` (the benchmark's primary metric, higher is better) and ``entropy`` (mean prediction entropy over the
label or answer positions, lower is better; needs no labels).

Written from the papers' head selection procedures: ACT (Yu et al., arXiv 2406.15765, reference code
https://github.com/GATECH-EIC/ACT: heads kept when calibrating them alone beats the unpatched model), Retrieval Head
(Wu et al., arXiv 2404.15574: heads whose masking hurts most) and ZeroTuning (Han et al., arXiv 2505.11739, see
``components/patches/zerotuning.py``: a dominant group of up- or down-effective heads, then a gamma grid).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

#: objective -> +1 when higher is better, -1 when lower is better
OBJECTIVES: dict[str, int] = {"accuracy": 1, "entropy": -1}


def gain(objective: str, baseline: float, value: float) -> float:
    """How much a trial improves ``objective`` over the unpatched model (positive = better)."""
    return OBJECTIVES[objective] * (value - baseline)


@dataclass(frozen=True)
class HeadSearch:
    """How the head-search flow searches one patch.

    Parameters
    ----------
    good : {"improves", "hurts"}
        What a useful head does to the objective when the patch acts on it alone: ``improves`` keeps the heads whose
        trial beats the unpatched model by more than ``min_gain`` (ACT), ``hurts`` keeps the heads whose trial costs
        most (head masking). Default ``improves``.
    trial : mapping
        Parameters of the single-head trials over the component's defaults (the user's ``params`` override them),
        e.g. ZeroTuning's profiling gamma. Default: none.
    grid : mapping of name -> values
        Parameters searched after the heads are chosen, on the chosen set (one evaluation per point of their
        product); the user's grid replaces a parameter's values. Default: none (no second stage).
    """

    good: Literal["improves", "hurts"] = "improves"
    trial: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.good not in ("improves", "hurts"):
            raise ValueError(f"HeadSearch.good={self.good!r} is not 'improves' or 'hurts'")

    def score(self, bench: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, objective: str,
              session: Any, batch_size: int) -> float:
        """The objective on ``rows`` with the trial patch applied (``session``); higher or lower is better as
        ``OBJECTIVES`` says."""
        if objective == "accuracy":
            result = bench.evaluate(model, tokenizer, rows, session=session, batch_size=batch_size)
            return float(result.metrics[bench.primary_metric])
        if objective == "entropy":
            from components.benchmarks import _scoring

            return _scoring.prediction_entropy(model, tokenizer, rows, session=session, batch_size=batch_size)
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")

    def select(self, table: list[dict[str, Any]], min_gain: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The rows (``layer``, ``head``, ``score``, ``gain``) of the heads to keep, best first, and extra fields for
        the selection record ({} here)."""
        if self.good == "improves":
            return sorted((r for r in table if r["gain"] > min_gain), key=lambda r: -r["gain"]), {}
        return sorted((r for r in table if -r["gain"] > min_gain), key=lambda r: r["gain"]), {}

    def grid_points(self, selection: dict[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
        """The parameter sets evaluated on the chosen heads: every combination of the grid's values."""
        names = [k for k, v in grid.items() if len(v)]
        return [dict(zip(names, values)) for values in itertools.product(*(grid[k] for k in names))] if names else []

    def pick(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The grid point kept: the best gain, only if it beats the unpatched model (rows: ``params``, ``score``,
        ``gain``)."""
        best = max(rows, key=lambda r: r["gain"], default=None)
        return dict(best["params"]) if best and best["gain"] > 0 else None
