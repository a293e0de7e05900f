"""Typed flow parameters shared by the flows: constraints and choices that Prefect validates before a run starts
and that its UI renders as a form (a choice list for ``Dtype``, minimum values for sizes).

Descriptions come from each flow's ``Args:`` docstring section; these types add what a docstring cannot say.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Dtype = Literal["float32", "bfloat16", "float16"]
BatchSize = Annotated[int, Field(ge=1, le=4096)]
ModelName = Annotated[str, Field(min_length=1)]
Specs = Annotated[list[str], Field(min_length=1)]
Seeds = Annotated[list[int], Field(min_length=1)]
Experiment = Annotated[str, Field(min_length=1, max_length=250)]
Count = Annotated[int, Field(ge=0)]  # 0 allowed ("all", "none")
Positive = Annotated[int, Field(ge=1)]
Fpr = Annotated[float, Field(gt=0, lt=1)]  # a false-positive rate to calibrate a threshold for


class ComparisonPreset(BaseModel):
    """The keys of a comparison preset (``registry/presets/*.yaml``; ``attnflow compare --preset`` and
    ``attnflow quickstart --preset``), typed as the flow parameters they feed. ``include: <name>`` merges a base."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName | None = None  # quickstart: the model to tour (--model overrides it)
    dtype: Dtype = "float32"  # quickstart
    seed: int = 0  # quickstart: the data seed
    seeds: Seeds | None = None  # compare: data seeds (--seeds overrides them)
    sinks: str | None = None  # quickstart: the attention-sink analyzer spec
    retrieval: str | None = None  # quickstart: the retrieval-head analyzer spec
    components: Specs | None = None  # component specs, one list item each (--components overrides them)
    tasks: Specs | None = None  # benchmark specs, one list item each (--tasks overrides them)
