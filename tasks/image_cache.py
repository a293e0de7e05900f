"""The on-disk cache of generated images: one PNG + one JSON (+ an .npz of cross-attention maps) per image, under a
content key of everything that determines the image.

Key inputs (a JSON object; the key is its sha256): the model digest (``T2IModel.fingerprint_parts``: configs and a
digest of every weight), the prompt, each component's pinned spec, version, fingerprint and code fingerprint, the
seed, steps, CFG scale, the recorded map words, and for inpainting the digests of the source and mask pixels and
the resampling count. Layout::

    <cache_dir>/images/<key[:2]>/<key>.png     the image
    <cache_dir>/images/<key[:2]>/<key>.npz     word -> (h, w) float32 maps (only when maps were recorded)
    <cache_dir>/images/<key[:2]>/<key>.json    {"inputs": ..., "png_sha256": ..., "maps_sha256": ..., "seconds": ...}

Each file is written atomically (a temporary sibling renamed into place), the JSON last: an entry without its JSON
does not exist. A hit requires the JSON's stored inputs to equal the requested ones exactly (so even a key collision
cannot serve another image) and the PNG / npz bytes to match their stored sha256; anything else is a miss (a
damaged entry is reported and overwritten by the recomputation).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import atomic_path


def image_digest(image: Any) -> str:
    """sha256 of an image's mode, size and pixels (not of its file: renaming or re-encoding does not change it)."""
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _paths(root: Path, key: str) -> tuple[Path, Path, Path]:
    d = Path(root) / "images" / key[:2]
    return d / f"{key}.png", d / f"{key}.npz", d / f"{key}.json"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lookup(root: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The cached entry for ``inputs`` ({"png": path, "maps": path or None, "seconds": float, "key": key}) or None."""
    key = cache_key(inputs)
    png, npz, meta_path = _paths(root, key)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        print(f"image cache entry {key[:12]}: unreadable JSON; recomputing")
        return None
    if meta.get("inputs") != json.loads(json.dumps(inputs, sort_keys=True, default=str)):
        print(f"image cache entry {key[:12]}: stored inputs differ from the request; recomputing")
        return None
    if not png.is_file() or _sha(png) != meta.get("png_sha256"):
        print(f"image cache entry {key[:12]}: PNG missing or changed since it was written; recomputing")
        return None
    maps = None
    if meta.get("maps_sha256"):
        if not npz.is_file() or _sha(npz) != meta["maps_sha256"]:
            print(f"image cache entry {key[:12]}: maps missing or changed since they were written; recomputing")
            return None
        maps = npz
    return {"key": key, "png": png, "maps": maps, "seconds": float(meta["seconds"])}


def store(root: Path, inputs: dict[str, Any], image: Any, maps: dict[str, np.ndarray], seconds: float) -> dict:
    """Write one entry (PNG, maps, then the JSON) and return it as ``lookup`` would."""
    key = cache_key(inputs)
    png, npz, meta_path = _paths(root, key)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with atomic_path(png) as tmp:
        tmp.write_bytes(buf.getvalue())
    maps_sha = None
    if maps:
        buf = io.BytesIO()
        np.savez(buf, **{w: np.asarray(m, dtype=np.float32) for w, m in maps.items()})
        with atomic_path(npz) as tmp:
            tmp.write_bytes(buf.getvalue())
        maps_sha = _sha(npz)
    meta = {"inputs": inputs, "png_sha256": _sha(png), "maps_sha256": maps_sha, "seconds": float(seconds)}
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    return {"key": key, "png": png, "maps": npz if maps else None, "seconds": float(seconds)}


def read_maps(path: Path | None) -> dict[str, np.ndarray]:
    if path is None:
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
