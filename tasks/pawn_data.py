"""Detection data prep: human / machine texts from the sources users bring -> one Parquet schema.

Schema (one row per text): ``id`` (str, unique), ``text`` (str), ``label`` (int8: 1 = machine, 0 = human),
``domain`` (str), ``generator`` (str; ``human`` for human texts), ``split`` (``train`` | ``valid`` | ``test``),
``source`` (str: the file stem or hub id the text came from, or a record's own ``source`` field) and ``group``
(str: a user-given group column, e.g. native / non-native writer; empty when the source has none). Files with
only one class and no label column take a label for every record (``label="human"`` or ``"machine"``).

Sources: JSONL / CSV / Parquet / JSON-list files, hub datasets (``hf:<id>[:<config>[:<split>]]``) and local
dataset directories (through :mod:`components.data`), and the Fast-DetectGPT pair format
``{"original": [human...], "sampled": [machine...]}`` (files named ``<domain>_<generator>.raw_data.json`` give
domain and generator). Rows without a split get one from a hash of their group (a human/machine pair stays in
one split, so a shared prompt never leaks across splits). Bad input (unknown label values, empty texts, duplicate
ids, unknown split names) fails here, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, Field
from prefect.cache_policies import INPUTS, TASK_SOURCE

from components import data as data_sources
from infra.settings import settings
from tasks import integrity
from tasks.io import atomic_path
from tasks.retry import transient

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                  "dev": "valid", "test": "test", "testing": "test"}
_MACHINE = {"1", "machine", "ai", "generated", "machine-generated", "machine_generated", "llm", "true", "fake"}
_HUMAN = {"0", "human", "human-written", "human_written", "real", "false"}
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int8()), ("domain", pa.string()),
                    ("generator", pa.string()), ("split", pa.string()), ("source", pa.string()),
                    ("group", pa.string())])
#: columns every prepared file has; ``source`` and ``group`` are filled in for files prepared before they existed
REQUIRED = ("id", "text", "label", "domain", "generator", "split")
#: columns a per-group table can be made of (``pawn evaluate --groups``)
GROUP_COLUMNS = ("domain", "source", "generator", "group", "split")


class DetectionDataError(ValueError):
    """Detection data that cannot be prepared (the message names the source and the problem)."""


def parse_label(value: Any, invert: bool = False) -> int | None:
    """1 = machine, 0 = human; None for an unknown value."""
    text = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    label = 1 if text in _MACHINE else 0 if text in _HUMAN else None
    return None if label is None else (1 - label if invert else label)


def _pair_file(path: Path) -> dict[str, Any] | None:
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) and "original" in data and "sampled" in data else None


def _common_prefix_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split()):
        if x != y:
            break
        n += 1
    return n


def _pair_rows(path: Path, data: dict[str, Any], limit: int, strip_prefix: bool,
               label: str | None = None) -> list[dict[str, Any]]:
    """Rows of a Fast-DetectGPT ``{"original": [...], "sampled": [...]}`` file."""
    human, machine = data["original"], data["sampled"]
    if not isinstance(human, list) or not isinstance(machine, list) or len(human) != len(machine):
        raise DetectionDataError(f"{path}: 'original' and 'sampled' must be lists of the same length")
    stem = path.name.removesuffix(".json").removesuffix(".raw_data")
    m = re.match(r"^([A-Za-z0-9]+)_(.+)$", stem)
    domain, generator = (m.group(1), m.group(2)) if m else (stem, "unknown")
    if label is not None:
        raise DetectionDataError(f"{path}: a pair file holds human and machine texts; --label {label} only applies "
                                 "to files of one class without a label column")
    rows = []
    for i, (h, s) in enumerate(zip(human, machine)):
        if limit and i >= limit:
            break
        if strip_prefix and isinstance(h, str) and isinstance(s, str):
            k = _common_prefix_words(h, s)
            if k and len(h.split()) > k and len(s.split()) > k:
                h, s = " ".join(h.split()[k:]), " ".join(s.split()[k:])
        # files of one domain often share their human texts: group by the human text so that it (and every
        # machine continuation of it) lands in one split whichever file it comes from
        pair = hashlib.sha256(str(h).encode()).hexdigest()[:16]
        common = {"domain": domain, "split": None, "pair": pair, "source": stem, "group": ""}
        rows.append({"id": f"{stem}:{i}:human", "text": h, "label": 0, "generator": "human", **common})
        rows.append({"id": f"{stem}:{i}:machine", "text": s, "label": 1, "generator": generator, **common})
    return rows


def _record_rows(source: str, fields: dict[str, str], limit: int, invert: bool,
                 label: str | None = None) -> list[dict[str, Any]]:
    records = data_sources.read_records(source, limit=limit or None)
    if not records:
        raise DetectionDataError(f"{source!r} holds no records")
    given = None if label is None else parse_label(label)
    for key in ("text",) + (("label",) if given is None else ()):
        if fields[key] not in records[0]:
            raise DetectionDataError(f"{source!r}: records have no {key} field {fields[key]!r}; fields: "
                                     f"{', '.join(map(str, records[0]))} (set --{key}-field)")
    stem = Path(source).stem if not source.startswith("hf:") else source[3:].replace("/", "-")
    rows, bad = [], {}
    for i, r in enumerate(records):
        y = given if given is not None else parse_label(r.get(fields["label"]), invert)
        if y is None:
            bad.setdefault(repr(r.get(fields["label"])), i)
            continue
        if given is not None and fields["label"] in r and parse_label(r[fields["label"]], invert) != given:
            raise DetectionDataError(f"{source!r} row {i}: label {r[fields['label']]!r} contradicts --label {label}")
        rid = r.get(fields["id"])
        group = r.get(fields["group"])
        rows.append({
            "id": str(rid) if rid not in (None, "") else f"{stem}:{i}",
            "text": r.get(fields["text"]),
            "label": y,
            "domain": str(r.get(fields["domain"]) or stem),
            "generator": "human" if y == 0 else str(r.get(fields["generator"]) or "unknown"),
            "split": r.get(fields["split"]),
            "pair": str(rid) if rid not in (None, "") else f"{stem}:{i}",
            "source": str(r.get("source") or stem),  # a prepared file read again keeps its sources
            "group": "" if group is None else str(group),
        })
    if bad:
        shown = ", ".join(f"{v} (row {i})" for v, i in list(bad.items())[:5])
        raise DetectionDataError(
            f"{source!r}: label column {fields['label']!r} has value(s) that are neither human nor machine: {shown}; "
            "use 0/1, human/machine or ai (1 = machine; pass --invert-labels when 1 means human)")
    return rows


def _assign_split(row: dict[str, Any], valid_frac: float, test_frac: float, forced: str) -> str:
    if forced != "auto":
        return forced
    if row["split"] not in (None, ""):
        name = _SPLIT_ALIASES.get(str(row["split"]).strip().lower())
        if name is None:
            raise DetectionDataError(f"row {row['id']!r}: unknown split {row['split']!r}; use train, valid or test")
        return name
    u = int(hashlib.sha256(row["pair"].encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test_frac else "valid" if u < test_frac + valid_frac else "train"


def read_sources(sources: list[str], *, fields: dict[str, str], valid_frac: float = 0.15, test_frac: float = 0.15,
                 split: str = "auto", limit_per_source: int = 0, invert_labels: bool = False,
                 drop_empty: bool = False, strip_shared_prefix: bool = True,
                 label: str | None = None) -> list[dict[str, Any]]:
    """Normalised rows of every source (raises DetectionDataError on bad input). ``label`` ("human" or "machine")
    labels every record of sources without a label column."""
    if not sources:
        raise DetectionDataError("no data sources given")
    if label is not None and parse_label(label) is None:
        raise DetectionDataError(f"--label {label!r} must be human or machine")
    fields = {**DEFAULT_FIELDS, **fields}
    if split not in ("auto",) + SPLITS:
        raise DetectionDataError(f"split {split!r} must be auto, train, valid or test")
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise DetectionDataError(f"valid_frac={valid_frac} and test_frac={test_frac} must be in [0, 1) and sum < 1")
    rows: list[dict[str, Any]] = []
    for source in sources:
        path = Path(source).expanduser()
        pairs = _pair_file(path) if not source.startswith("hf:") else None
        rows += (_pair_rows(path, pairs, limit_per_source, strip_shared_prefix, label) if pairs is not None
                 else _record_rows(source, fields, limit_per_source, invert_labels, label))
    empty = [r["id"] for r in rows if not isinstance(r["text"], str) or not r["text"].strip()]
    if empty and not drop_empty:
        raise DetectionDataError(f"{len(empty)} empty text(s), e.g. {', '.join(map(repr, empty[:5]))}; remove them "
                                 "or pass --drop-empty")
    rows = [r for r in rows if isinstance(r["text"], str) and r["text"].strip()]
    seen: set[str] = set()
    dupes = [r["id"] for r in rows if r["id"] in seen or seen.add(r["id"])]  # type: ignore[func-returns-value]
    if dupes:
        raise DetectionDataError(f"duplicate ids: {', '.join(map(repr, dupes[:5]))}")
    for r in rows:
        r["split"] = _assign_split(r, valid_frac, test_frac, split)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {s: {"human": 0, "machine": 0} for s in SPLITS}
    for r in rows:
        counts[r["split"]]["machine" if r["label"] else "human"] += 1
    return {"n_rows": len(rows), "splits": counts, "domains": sorted({r["domain"] for r in rows}),
            "generators": sorted({r["generator"] for r in rows})}


def dataset_fingerprint(path: str | Path) -> str:
    """Content hash of a prepared detection Parquet (every column, row order included)."""
    h = hashlib.sha256()
    for row in read_prepared(path):
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def read_prepared(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a prepared file; checks the schema and the label values."""
    table = pq.read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DetectionDataError(f"{path}: not a prepared detection file (missing column(s) {', '.join(missing)}); "
                                 "run `attnflow pawn prep` on it first")
    rows = table.select([c for c in SCHEMA.names if c in table.column_names]).to_pylist()
    for r in rows:  # files prepared before these columns existed
        r.setdefault("source", r["domain"])
        r.setdefault("group", "")
    bad = {r["label"] for r in rows} - {0, 1}
    if bad:
        raise DetectionDataError(f"{path}: label column has value(s) {sorted(bad)}; expected 0 (human) or 1 (machine)")
    return rows


@task(cache_policy=INPUTS + TASK_SOURCE, retries=1, retry_delay_seconds=2, result_serializer=integrity.CHECKED,
      retry_condition_fn=transient, task_run_name="prepare detection data")
def prepare_detection_data(sources: list[str], source_fingerprints: list[str], fields: dict[str, str],
                           valid_frac: float = 0.15, test_frac: float = 0.15, split: str = "auto",
                           limit_per_source: int = 0, invert_labels: bool = False, drop_empty: bool = False,
                           strip_shared_prefix: bool = True, out: str | None = None,
                           label: str | None = None) -> dict[str, Any]:
    """Write the sources as one prepared Parquet file (content-addressed unless ``out``); returns its summary."""
    rows = read_sources(sources, fields=fields, valid_frac=valid_frac, test_frac=test_frac, split=split,
                        limit_per_source=limit_per_source, invert_labels=invert_labels, drop_empty=drop_empty,
                        strip_shared_prefix=strip_shared_prefix, label=label)
    key = hashlib.sha256(json.dumps([sources, source_fingerprints, fields, valid_frac, test_frac, split,
                                     limit_per_source, invert_labels, drop_empty, strip_shared_prefix,
                                     label]).encode())
    path = Path(out) if out else settings().data_dir / f"detection-{key.hexdigest()[:16]}.parquet"
    table = pa.Table.from_pylist([{k: r[k] for k in SCHEMA.names} for r in rows], schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    integrity.seal(path)
    summary = summarize(rows)
    print(f"prepared {summary['n_rows']} texts -> {path}: " + ", ".join(
        f"{s} {c['human']} human / {c['machine']} machine" for s, c in summary["splits"].items()))
    return {"path": str(path), "fingerprint": dataset_fingerprint(path), "shared_prefix":
            "cut" if strip_shared_prefix else "kept", **summary}


class PrepOptions(BaseModel):
    """How sources become the prepared schema (shown as a form in the Prefect UI)."""

    valid_frac: float = Field(0.15, ge=0, lt=1, description="Fraction of texts (by pair) held out for validation.")
    test_frac: float = Field(0.15, ge=0, lt=1, description="Fraction held out for testing (0 when test data is given).")
    limit_per_source: int = Field(0, ge=0, description="At most this many records (or pairs) per source; 0 = all.")
    text_field: str = Field("text", description="Field holding the text.")
    label_field: str = Field("label", description="Field holding the label (0/1, human/machine, ai).")
    id_field: str = Field("id", description="Field holding a unique id (else source:index).")
    domain_field: str = Field("domain", description="Field holding the domain (else the source name).")
    generator_field: str = Field("generator", description="Field holding the generating model.")
    split_field: str = Field("split", description="Field holding train/valid/test (else a hash split).")
    group_field: str = Field("group", description="Field holding a group for per-group FPR (e.g. native/non-native).")
    invert_labels: bool = Field(False, description="Labels say 1 = human (MAGE); flip them.")
    drop_empty: bool = Field(False, description="Drop empty texts instead of failing.")
    strip_shared_prefix: bool = Field(True, description="Fast-DetectGPT pairs: cut the prompt words both share "
                                      "(a detector must not score the human prefix); false keeps them.")
    label: Optional[Literal["human", "machine"]] = Field(
        None, description="Label every record of sources without a label column (human-only / machine-only files).")

    def fields(self) -> dict[str, str]:
        return {"text": self.text_field, "label": self.label_field, "id": self.id_field,
                "domain": self.domain_field, "generator": self.generator_field, "split": self.split_field,
                "group": self.group_field}


DEFAULT_FIELDS = PrepOptions().fields()


def prepare(sources: list[str], options: PrepOptions, split: str = "auto", out: str | None = None) -> dict[str, Any]:
    """Run the (cached) prep task for ``sources`` with ``options`` (re-run if the file vanished or fails its
    checksum)."""
    args = (sources, source_fingerprints(sources), options.fields(), options.valid_frac, options.test_frac, split,
            options.limit_per_source, options.invert_labels, options.drop_empty, options.strip_shared_prefix, out,
            options.label)
    return integrity.prepared(prepare_detection_data, args, path_of=lambda info: info["path"])


def source_fingerprints(sources: list[str]) -> list[str]:
    """Content hashes of file sources (the cache key of data prep); checks that local paths exist."""
    out = []
    for s in sources:
        if not s.startswith("hf:") and not Path(s).expanduser().exists():
            raise DetectionDataError(f"data source {s!r} does not exist")
        out.append(data_sources.fingerprint(s))
    return out
