"""Wheels built by tests (a real, minimal wheel that pip downloads from a --find-links dir or an index)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def build_wheel(out_dir: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (``py3-none-any``: METADATA, WHEEL, RECORD) holding ``files`` (path -> bytes), as
    ``pip download`` finds on an index or in a --find-links directory."""
    dist = f"{project.replace('-', '_')}-{version}"
    meta = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
            f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: attnflow-tests\nRoot-Is-Purelib: true\n"
                                       b"Tag: py3-none-any\n"}
    entries = {**files, **meta}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
              for n, b in entries.items()] + [f"{dist}.dist-info/RECORD,,"]
    out = Path(out_dir) / f"{dist}-py3-none-any.whl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return out
