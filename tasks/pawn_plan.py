"""Validate a PAWN request before any compute: detector specs, data sources, backbone (and performer) configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    observer: str | None = None

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
              trust_remote_code: bool = False, observer: str | None = None) -> PawnPlan:
    """Parse and check everything; raises with a message naming the problem, before any model is loaded."""
    dets = [s.create("detector") for s in parse_list(detectors)]
    if not dets:
        raise SpecError("no detectors given")
    if not train:
        raise DetectionDataError("no training data sources given")
    source_fingerprints(list(train) + list(test))
    check_options(max_length, batch_size, prep, bool(test))
    check_model(model, trust_remote_code=trust_remote_code)
    check_same_tokenizer(model, performer, observer, trust_remote_code=trust_remote_code)
    return PawnPlan(model, [spec_text(d) for d in dets], list(train), list(test), performer, observer)


def tokenizer_identity(ref: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """What decides token ids, read from the config and tokenizer files only (no weights): the output vocabulary
    size and, where the tokenizer files are on disk (local directories, pulled models), the token -> id map and the
    special tokens."""
    from transformers import AutoTokenizer

    mref = check_model(ref, trust_remote_code=trust_remote_code)
    config = modeling.load_config(mref, trust_remote_code=trust_remote_code)
    out: dict[str, Any] = {"ref": ref, "vocab_size": getattr(config, "vocab_size", None)}
    if mref.kind == "local":
        tok = AutoTokenizer.from_pretrained(mref.location, trust_remote_code=trust_remote_code)
        out["vocab"] = tok.get_vocab()
        out["special"] = {k: getattr(tok, k, None) for k in ("bos_token_id", "eos_token_id", "unk_token_id")}
    return out


def check_same_tokenizer(model: str, performer: str | None = None, observer: str | None = None,
                         trust_remote_code: bool = False) -> None:
    """Refuse a Binoculars observer / performer whose tokenizer differs from the backbone's, before any weights
    load: every model must map text to the same token ids (same vocabulary size, token -> id map and BOS/EOS)."""
    others = [(role, ref) for role, ref in (("performer", performer), ("observer", observer)) if ref]
    if not others:
        return
    base = tokenizer_identity(model, trust_remote_code)
    for role, ref in others:
        other = tokenizer_identity(ref, trust_remote_code)
        problem = ""
        if base["vocab_size"] != other["vocab_size"]:
            problem = f"vocabulary size {other['vocab_size']} vs {base['vocab_size']}"
        elif "vocab" in base and "vocab" in other:
            a, b = base["vocab"], other["vocab"]
            diff = sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))
            if diff:
                shown = ", ".join(f"{t!r}: {b.get(t)} vs {a.get(t)}" for t in diff[:3])
                problem = f"{len(diff)} token(s) map to other ids ({shown})"
            elif base["special"] != other["special"]:
                problem = f"special tokens {other['special']} vs {base['special']}"
        if problem:
            raise ValueError(f"Binoculars {role} {ref!r} does not share the tokenizer of the backbone {model!r}: "
                             f"{problem}. Observer and performer must tokenize identically (e.g. two sizes of one "
                             "model family); nothing was loaded")
