"""Trust what was cached: checksummed task results and checksummed prepared data files.

Persisted task results. Every cached task (``cache_policy=INPUTS...`` or ``cache_key_fn``) persists its result with
:data:`CHECKED` (JSON) or :data:`CHECKED_PICKLE`: the stored payload starts with the sha256 of the rest. Prefect
decides whether a cached result exists by deserializing it (``ResultStore.exists``), and any error there counts as
"not cached"; so a stored result whose bytes changed (a flipped bit, a truncated file) raises here, prints a line
saying so, and the task runs again and overwrites it. A corrupted result is never returned.

Prepared data. A prepared file (Parquet, npz) gets a sidecar ``<file>.sha256`` written after the file itself
(:func:`seal`). :func:`intact` re-hashes the whole file (no memo: prepared files are small) and compares; the
``*_data`` helpers rebuild a file that fails (``refresh_cache`` of its prepare task) and say so, and
:func:`read_checked` refuses to read one. Downstream caches are keyed by :func:`content_key`, the digest of the
file's content, never by its path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from pydantic import Field
from prefect.serializers import JSONSerializer, PickleSerializer

from infra.hashing import file_digest, hash_file
from tasks.io import atomic_path

_PREFIX = b"sha256:"


class CorruptResultError(ValueError):
    """A persisted task result whose bytes do not match the checksum stored with them."""


class CorruptDataError(ValueError):
    """A prepared data file that is missing, truncated or changed since it was written."""


def _task_name() -> str:
    try:
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        return f" of {ctx.task_run.name!r}" if ctx and ctx.task_run else ""
    except Exception:  # noqa: BLE001 - the name is only for the message
        return ""


def _seal(payload: bytes) -> bytes:
    return _PREFIX + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _unseal(blob: bytes) -> bytes:
    head, sep, payload = blob.partition(b"\n")
    stored = head[len(_PREFIX):].decode("ascii", "replace") if head.startswith(_PREFIX) else ""
    actual = hashlib.sha256(payload).hexdigest()
    if not sep or stored != actual:
        print(f"cached result{_task_name()} failed its checksum (stored {stored[:12] or 'none'}, content "
              f"{actual[:12]}); not using it: recomputing")
        raise CorruptResultError("persisted task result failed its checksum")
    return payload


class ChecksummedJSONSerializer(JSONSerializer):
    """JSON with the sha256 of the payload in front; loading a payload that does not match raises."""

    type: str = Field(default="attnflow-json", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return _seal(super().dumps(obj))

    def loads(self, blob: bytes) -> Any:
        return super().loads(_unseal(blob))


class ChecksummedPickleSerializer(PickleSerializer):
    """Prefect's pickle serializer with the sha256 of the payload in front (for results that are not JSON)."""

    type: str = Field(default="attnflow-pickle", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return _seal(super().dumps(obj))

    def loads(self, blob: bytes) -> Any:
        return super().loads(_unseal(blob))


CHECKED = ChecksummedJSONSerializer()
CHECKED_PICKLE = ChecksummedPickleSerializer()


# ------------------------------------------------------------------------------------------ prepared data files


def sidecar(path: str | Path) -> Path:
    return Path(f"{path}.sha256")


def seal(path: str | Path) -> str:
    """Record the sha256 of a freshly written file beside it; returns the digest."""
    digest = file_digest(path, memo=False)
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(digest + "\n")
    return digest


def problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be trusted (missing, no recorded checksum, checksum mismatch), or None when intact."""
    p = Path(path)
    if not p.is_file():
        return "is missing"
    if not sidecar(p).is_file():
        return "has no recorded checksum"
    if hash_file(p) != sidecar(p).read_text().strip():
        return "failed its checksum"
    return None


def intact(path: str | Path) -> bool:
    return problem(path) is None


def build_once(path: Path, build: Callable[[Path], Any]) -> None:
    """Inside a prepare task: (re)build ``path`` with ``build(path)`` unless it is intact, then seal it."""
    if not intact(path):
        build(path)
        seal(path)


def prepared(prepare: Any, args: tuple, path_of: Callable[[Any], str] = str) -> Any:
    """Run a cached prepare task; when the file it names is missing or fails its checksum, say so and rebuild it
    (refreshing the task's cache entry)."""
    out = prepare(*args)
    why = problem(path_of(out))
    if why:
        print(f"prepared data {path_of(out)} {why}; rebuilding")
        out = prepare.with_options(refresh_cache=True)(*args)
    return out


def check(path: str | Path) -> Path:
    """Raise CorruptDataError unless the prepared file matches its recorded checksum."""
    why = problem(path)
    if why:
        raise CorruptDataError(f"prepared data {path} {why}; re-run the flow to rebuild it")
    return Path(path)


def content_key(path: str | Path | None) -> str | None:
    """The sha256 of a file's content (memoised), for cache keys; None stays None, a missing file is named as such
    (the task then runs and reports it)."""
    if not path:
        return None
    return file_digest(path) if Path(path).is_file() else f"missing:{path}"
