"""Validate a PAWN request before any compute: detector specs, data sources, backbone (and performer) configs."""

from __future__ import annotations

from dataclasses import dataclass
from prefect import task
from prefect.cache_policies import NO_CACHE

from components import modeling
from registry.specs import SpecError, parse_list, spec_text
from tasks.models import check_model
from tasks.pawn_data import DetectionDataError, PrepOptions, source_fingerprints


@dataclass
class PawnPlan:
    """Pinned detector specs (``name@x.y.z(params)``) and the checked inputs."""

    model: str
    detectors: list[str]
    train: list[str]
    test: list[str]
    performer: str | None

    @property
    def refs(self) -> list[str]:
        return [s.split("(")[0] for s in self.detectors]


def check_options(max_length: int, batch_size: int, prep: PrepOptions, has_test: bool) -> None:
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 tokens")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if not has_test and prep.test_frac <= 0:
        raise ValueError("no test data: give test sources or a test_frac > 0")
    if prep.valid_frac + (0 if has_test else prep.test_frac) >= 1:
        raise ValueError("valid_frac + test_frac leaves no training data")


@task(cache_policy=NO_CACHE, task_run_name="validate pawn request")
def plan_pawn(model: str, detectors: list[str], train: list[str], test: list[str], prep: PrepOptions,
              max_length: int = 512, batch_size: int = 16, performer: str | None = None,
              trust_remote_code: bool = False) -> PawnPlan:
    """Parse and check everything; raises with a message naming the problem, before any model is loaded."""
    dets = [s.create("detector") for s in parse_list(detectors)]
    if not dets:
        raise SpecError("no detectors given")
    if not train:
        raise DetectionDataError("no training data sources given")
    source_fingerprints(list(train) + list(test))
    check_options(max_length, batch_size, prep, bool(test))
    check_model(model, trust_remote_code=trust_remote_code)
    if performer:
        check_model(performer, trust_remote_code=trust_remote_code)
        v1 = getattr(modeling.load_config(model, trust_remote_code=trust_remote_code), "vocab_size", None)
        v2 = getattr(modeling.load_config(performer, trust_remote_code=trust_remote_code), "vocab_size", None)
        if v1 != v2:
            raise ValueError(f"performer {performer!r} has vocabulary size {v2}, the backbone {v1}: Binoculars needs "
                             "two models sharing one tokenizer")
    return PawnPlan(model, [spec_text(d) for d in dets], list(train), list(test), performer)
