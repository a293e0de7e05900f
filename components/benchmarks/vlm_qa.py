"""Visual question answering and POPE-style yes/no questions on a user's image dataset (vision-language models).

Data: a JSONL (or JSON / CSV) file whose records have ``image`` (a path, relative to ``image_root`` or else to the
file's folder), ``question`` and ``answer``, next to an image folder; or a Parquet file / hub dataset whose
``image`` is encoded bytes (a ``bytes`` value, or ``{"bytes": ...}`` as Hugging Face image columns store it).
Field names are parameters. Every record is checked when the rows are built, before any model work: a missing
field, an empty question or answer, a missing image file or bytes that PIL cannot decode raise an error naming the
source, the record's index (0-based) and the field.

Scoring (components/benchmarks/vlm_scenes.py ``score``): a row whose answer is "yes" or "no" is a POPE row
(``exists`` / ``absent``: POPE accuracy, precision, recall, F1, yes ratio, and the hallucination rate = absent
objects answered "yes"); any other answer is a ``vqa`` row, correct when the normalised greedy answer starts with
the normalised reference answer (lower case, punctuation dropped). Reference: POPE, Li et al., EMNLP 2023
(arXiv:2305.10355, github.com/RUCAIBox/POPE) for the yes/no metrics; the VQA rule is a strict prefix match rather
than VQAv2's soft accuracy over ten annotators (one reference answer per question here).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from components import data as data_sources
from components.attention.session import Force
from components.base import ParamError
from components.benchmarks import vlm_scenes
from components.benchmarks._userdata import check_source
from components.benchmarks.base import Benchmark, EvalResult
from registry import register

MAX_ROWS = 20_000


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])
    return None


@register("vlm_qa", version="1.0.0", family="benchmark", paper="arXiv:2305.10355",
          summary="A user's image dataset (JSONL + image folder, or Parquet with image bytes): POPE yes/no and VQA.")
@dataclass(frozen=True)
class VLMQA(Benchmark):
    """POPE-style yes/no and VQA accuracy on a user image dataset (vision-language models only).

    Parameters
    ----------
    source : str
        A .jsonl/.json/.csv/.parquet file or hf:<id>[:<config>[:<split>]] with image, question and answer fields.
    image_root : str
        Folder that image paths are relative to ('' = the source file's folder).
    image_field, question_field, answer_field : str
        Field names. Defaults ``image``, ``question``, ``answer``.
    n_examples : int
        Rows evaluated, in file order (0 = all). Default 0.
    max_new_tokens : int
        Greedy tokens generated per answer. Default 8.
    """

    source: str = ""
    image_root: str = ""
    image_field: str = "image"
    question_field: str = "question"
    answer_field: str = "answer"
    n_examples: int = 0
    max_new_tokens: int = 8

    splits: ClassVar[tuple[str, ...]] = ("eval",)
    needs_images: ClassVar[bool] = True
    prompt_texts: ClassVar[bool] = False
    metrics: ClassVar[dict[str, bool]] = {
        "accuracy": True, "pope_accuracy": True, "pope_precision": True, "pope_recall": True, "pope_f1": True,
        "yes_ratio": True, "hallucination_rate": False, "accuracy_exists": True, "accuracy_absent": True,
        "accuracy_vqa": True}
    primary_metric: ClassVar[str] = "accuracy"
    example: ClassVar[dict[str, str]] = {"source": "questions.jsonl", "n_examples": "8"}

    def __post_init__(self) -> None:
        if self.n_examples < 0 or self.max_new_tokens < 1:
            raise ParamError("vlm_qa: n_examples must be >= 0 and max_new_tokens >= 1")
        if self.image_root and not Path(self.image_root).expanduser().is_dir():
            raise ParamError(f"vlm_qa.image_root: {self.image_root!r} is not a folder")

    def check_source(self) -> None:
        """The source exists (called by the flows' validation; the example's file name is not checked at init)."""
        check_source("vlm_qa.source", self.source)

    def data_fingerprint(self) -> str:
        return data_sources.fingerprint(self.source)

    def build(self, split: str) -> list[dict[str, Any]]:
        self.check_split(split)
        self.check_source()
        records = data_sources.read_records(self.source, limit=self.n_examples or MAX_ROWS)
        if not records:
            raise data_sources.DataSourceError(f"{self.source!r} has no records")
        root = Path(self.image_root or Path(self.source).expanduser().parent).expanduser()
        return [self._row(i, r, root) for i, r in enumerate(records)]

    def _row(self, i: int, record: dict[str, Any], root: Path) -> dict[str, Any]:
        where = f"{self.source!r} record {i}"
        for name in (self.image_field, self.question_field, self.answer_field):
            if record.get(name) in (None, ""):
                raise data_sources.DataSourceError(f"{where}: field {name!r} is missing or empty; fields: "
                                                   f"{', '.join(record)}")
        from PIL import Image, UnidentifiedImageError

        value, row = record[self.image_field], {}
        data = _image_bytes(value)
        if data is not None:
            row["image_bytes"] = data
        elif isinstance(value, str):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise data_sources.DataSourceError(f"{where}: image {value!r} not found (looked for {path})")
            row["image_path"] = str(path)
        else:
            raise data_sources.DataSourceError(f"{where}: field {self.image_field!r} is a {type(value).__name__}; "
                                               "expected a path or encoded image bytes")
        try:
            with Image.open(io.BytesIO(data) if data is not None else row["image_path"]) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as e:
            raise data_sources.DataSourceError(f"{where}: field {self.image_field!r} is not a readable image: {e}") \
                from None
        answer = str(record[self.answer_field]).strip()
        kind = {"yes": "exists", "no": "absent"}.get(answer.lower().rstrip("."), "vqa")
        return {"scene_id": i, "kind": kind, "question": str(record[self.question_field]).strip(),
                "answer": answer.lower().rstrip(".") if kind != "vqa" else answer, **row}

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], *,
                 session: Any = None, batch_size: int = 8, progress: bool = False,
                 patches: Sequence = (), force: Force = None) -> EvalResult:
        """Answer ``rows`` with ``model`` and its processor (``tokenizer``) inside a scope of ``patches``."""
        paired = any(getattr(p, "needs_paired_batch", False) for p in patches)
        preds = vlm_scenes.answer(model, tokenizer, rows, max_new_tokens=self.max_new_tokens, batch_size=batch_size,
                                  patches=patches, force=force, paired=paired,
                                  session_inputs=vlm_scenes.patch_inputs(model, patches, paired))
        return vlm_scenes.score(rows, preds)
