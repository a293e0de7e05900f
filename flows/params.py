"""Typed flow parameters shared by the flows: constraints and choices that Prefect validates before a run starts
and that its UI renders as a form (a choice list for ``Dtype``, minimum values for sizes).

Descriptions come from each flow's ``Args:`` docstring section; these types add what a docstring cannot say.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

Dtype = Literal["float32", "bfloat16", "float16"]
BatchSize = Annotated[int, Field(ge=1, le=4096)]
ModelName = Annotated[str, Field(min_length=1)]
Specs = Annotated[list[str], Field(min_length=1)]
Seeds = Annotated[list[int], Field(min_length=1)]
Experiment = Annotated[str, Field(min_length=1, max_length=250)]
