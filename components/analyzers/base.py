"""Analyzer: the family base of analyses that read a model and return plain data.

An analyzer is a frozen dataclass (its fields are its parameters) with two jobs, kept apart like a benchmark's so
that data prep is cached and stored as Parquet by the tasks layer:

- ``build()`` -> list of plain rows (JSON-friendly dicts): probe texts, needle tests, prompt pairs...; deterministic
  for the parameters;
- ``analyze(model, tokenizer, rows)`` -> :class:`AnalysisResult`: named arrays (usually (layers, heads)), tables
  (lists of dicts), scalar metrics, named head sets (e.g. the retrieval heads) and figure specs.

Analyzers never plot and never log: the tasks layer turns figure specs into figures and logs everything to MLflow.
Attention probabilities come from the attnflow dispatcher: a forward inside ``applied(model)`` with
``output_attentions=True`` takes the materialised path and returns (B, H, T, S) probabilities per layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from components.attention.session import applied
from components.base import Component
from components.heads import HeadSet
from components.patches.base import model_shape

#: figure kinds the tasks layer draws:
#:   ("layer_head", array)           heatmap of an (L, H) array, layers on y, heads on x, values annotated
#:   ("line", table, x, y)           a line over a table's rows
#:   ("heatmap", table, x, y, value) a grid over a table's rows (values in [0, 1])
FIGURE_KINDS = ("layer_head", "line", "heatmap")


@dataclass
class AnalysisResult:
    """What one analysis produced (plain data, JSON round-trippable with ``to_json`` / ``from_json``)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    heads: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    figures: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, spec in self.figures.items():
            if spec[0] not in FIGURE_KINDS:
                raise ValueError(f"figure {name!r}: unknown kind {spec[0]!r}; kinds: {', '.join(FIGURE_KINDS)}")
            if spec[0] == "layer_head" and spec[1] not in self.arrays:
                raise ValueError(f"figure {name!r} draws array {spec[1]!r}, which the result does not have")
            if spec[0] != "layer_head" and spec[1] not in self.tables:
                raise ValueError(f"figure {name!r} draws table {spec[1]!r}, which the result does not have")

    def to_json(self) -> dict[str, Any]:
        return {
            "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "data": v.ravel().tolist()}
                       for k, v in self.arrays.items()},
            "tables": self.tables,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "heads": {k: [list(map(int, p)) for p in v] for k, v in self.heads.items()},
            "figures": {k: list(v) for k, v in self.figures.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AnalysisResult":
        arrays = {k: np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for k, v in data["arrays"].items()}
        heads = {k: [(int(a), int(b)) for a, b in v] for k, v in data["heads"].items()}
        return cls(arrays, data["tables"], data["metrics"], heads, {k: tuple(v) for k, v in data["figures"].items()})


@dataclass(frozen=True)
class Analyzer(Component):
    """Base class of analyzers (family ``analyzer``)."""

    #: the array most people want to see first (the flows log it as the run's main figure)
    primary_array: ClassVar[str] = ""

    def build(self) -> list[dict[str, Any]]:
        """The analysis data: plain rows, deterministic for the parameters."""
        raise NotImplementedError

    def analyze(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], *,
                progress: bool = False) -> AnalysisResult:
        raise NotImplementedError

    def data_fingerprint(self) -> str:
        """Extra identity of external data (a file's content hash); '' for generated data."""
        return ""

    def check_model(self, config: Any) -> None:
        """Validate parameters against a model config (head ranges...); raise ValueError naming the problem."""
        n_layers, n_heads = model_shape(config)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, HeadSet):
                value.validate(n_layers, n_heads, what=f"{self.component_name}.{f.name}")


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by analyzers
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
    """One forward through the attnflow dispatcher with materialised probabilities.

    Returns (model outputs, per-layer probabilities (B, H, T, S)). Patches applied by an enclosing ``applied``
    scope act on the probabilities as usual. ``force="materialize"``: some models (GPT-2) do not pass
    ``output_attentions`` on to the attention function, so the dispatcher cannot see the request.
    """
    with applied(model, force="materialize"):
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True, **kwargs)
    if not out.attentions:
        raise RuntimeError(f"{type(model).__name__} returned no attention probabilities")
    return out, list(out.attentions)


def layer_head_rows(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """(L, H) arrays -> one row per head: {"layer", "head", <name>: value, ...}."""
    first = next(iter(arrays.values()))
    n_layers, n_heads = first.shape
    return [{"layer": layer, "head": head, **{k: float(v[layer, head]) for k, v in arrays.items()}}
            for layer in range(n_layers) for head in range(n_heads)]


def ranked(rows: list[dict[str, Any]], by: str, descending: bool = True) -> list[dict[str, Any]]:
    """Rows sorted by ``by`` with a 1-based ``rank`` column (ties keep layer/head order)."""
    order = sorted(rows, key=lambda r: (-r[by] if descending else r[by], r["layer"], r["head"]))
    return [{"rank": i + 1, **{k: v for k, v in r.items() if k != "rank"}} for i, r in enumerate(order)]


def top_heads(array: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k heads with the largest values of an (L, H) array (ties broken by layer, head)."""
    flat = [(-float(array[layer, head]), layer, head)
            for layer in range(array.shape[0]) for head in range(array.shape[1])]
    return [(layer, head) for _, layer, head in sorted(flat)[:k]]
