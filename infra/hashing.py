"""Content hashes of files, memoised so that a re-run does not re-read gigabytes of weights.

``file_digest(path)`` is the sha256 of the whole file, read in 4 MiB blocks. Digests are remembered in a small JSON
index, ``ATTNFLOW_HOME/cache/file-hashes.json``, keyed by (resolved path, size, mtime_ns, inode): a file that was
rewritten, replaced or edited in place gets a new mtime (or inode, or size) and is hashed again. An edit that
restores the old mtime on purpose (``touch -d``, ``os.utime``) is not noticed by the memo; places where a stale
digest would be read silently (prepared data, see tasks/integrity.py) hash with ``memo=False``.

The index is written atomically (a temp file + ``os.replace``), so concurrent writers lose at most an entry, never
the file. Entries of files that no longer exist are dropped when the index is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from infra.settings import settings

BLOCK = 4 << 20  # 4 MiB reads
_LOCK = threading.Lock()


def _index_path() -> Path:
    return settings().cache_dir / "file-hashes.json"


def _load(index: Path) -> dict[str, dict]:
    try:
        data = json.loads(index.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def hash_file(path: str | Path) -> str:
    """sha256 hex digest of the whole file (no memo)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path, memo: bool = True) -> str:
    """sha256 of the file's content; with ``memo`` a digest recorded for the same (path, size, mtime_ns, inode) is
    reused instead of reading the file again. The fresh digest is always recorded."""
    real = Path(path).resolve()
    stamp = _stamp(real.stat())
    key = str(real)
    index = _index_path()
    if memo:
        entry = _load(index).get(key)
        if entry and entry.get("stamp") == stamp:
            return entry["sha256"]
    digest = hash_file(real)
    if _stamp(real.stat()) == stamp:  # unchanged while it was read: safe to remember
        with _LOCK:
            entries = _load(index)
            entries[key] = {"stamp": stamp, "sha256": digest}
            entries = {k: v for k, v in entries.items() if os.path.exists(k)}
            _write_atomic(index, json.dumps(entries, sort_keys=True))
    return digest


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, then rename it over ``path`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
