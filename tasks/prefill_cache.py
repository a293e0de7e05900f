"""The reusable compressed-prefill cache: a context's compressed KV cache computed once, stored, loaded by key.

Layout: ``<ATTNFLOW_HOME>/cache/compressed-prefill/<key[:2]>/<key>.safetensors``, one safetensors file per
(model, context, press, budget, dtype), never pickle. ``key = sha256`` of: the model's weight fingerprint, its
dtype and device type, the sha256 of the context's token ids, the press's fingerprint (its code and every parameter:
ratio, budget, window, ``evict_every``...) and code fingerprint, the snapshot code's fingerprint and format
(components/presses/_reuse.py) and the torch / transformers versions (another kernel may round differently). A
change of any of them is another key, so a file is never served for other inputs.

The file holds the tensors of :class:`components.presses._reuse.CompressedPrefill` (kept keys/values and the press
bookkeeping) and, in the safetensors metadata, the key, the identity, the snapshot's metadata and a sha256 over
all of these and every tensor's name, dtype, shape and bytes. Loading recomputes that checksum; a truncated,
unreadable or altered file (or one whose stored key differs) is reported, recomputed and overwritten, never used.
Files are written to a temp name beside the target and renamed (atomic), so a crash leaves no half file under a key.
Nothing is evicted automatically: ``rm -r`` the folder to reclaim space (a 2k-token context of SmolLM2-135M at
ratio 0 in float32 is about 94 MB).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import registry
from components.presses import _reuse
from infra.settings import settings
from registry.specs import ResolvedSpec
from tasks.io import atomic_path
from tasks.models import LoadedModel

STORE_FORMAT = 1


def cache_root() -> Path:
    return settings().cache_dir / "compressed-prefill"


def model_dtype(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def context_digest(ids: torch.Tensor) -> str:
    """sha256 of the token ids (shape included)."""
    h = hashlib.sha256(json.dumps(list(ids.shape)).encode())
    h.update(ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def identity(loaded: LoadedModel, press: ResolvedSpec, ids: torch.Tensor) -> dict[str, Any]:
    """What a compressed prefill is computed from (the key hashes all of it)."""
    p = press.component
    return {"store_format": STORE_FORMAT, "snapshot_format": _reuse.FORMAT,
            "snapshot_code": registry.code_fingerprint(_reuse.CompressedPrefill),
            "model": {"name": loaded.name, "fingerprint": loaded.fingerprint, "dtype": model_dtype(loaded.model),
                      "device": next(loaded.model.parameters()).device.type},
            "context": {"sha256": context_digest(ids), "tokens": int(ids.shape[-1]), "rows": int(ids.shape[0])},
            "press": {"spec": press.text, "fingerprint": press.fingerprint, "code": press.code_fingerprint,
                      "ratio": float(p.ratio), "budget": int(p.budget)},
            "torch": torch.__version__, "transformers": transformers.__version__}


def cache_key(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def path_for(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / key[:2] / f"{key}.safetensors"


class CorruptPrefillError(ValueError):
    """A stored compressed prefill that cannot be read, fails its checksum or belongs to another key."""


def _checksum(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(prefill: _reuse.CompressedPrefill, key: str, ident: dict[str, Any], path: Path) -> Path:
    """Write ``prefill`` under ``path`` atomically, with its checksum in the metadata."""
    from safetensors.torch import save_file

    tensors = {n: t.detach().to("cpu").contiguous() for n, t in prefill.tensors.items()}
    header = {"attnflow.key": key, "attnflow.identity": json.dumps(ident, sort_keys=True),
              "attnflow.meta": json.dumps(prefill.meta, sort_keys=True),
              "attnflow.prefill_seconds": repr(float(prefill.seconds))}
    header["attnflow.sha256"] = _checksum(tensors, header)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def load(path: Path, key: str, device: Any = "cpu") -> _reuse.CompressedPrefill:
    """Read and verify a stored prefill; raises :class:`CorruptPrefillError` for anything but an intact file of
    ``key``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = dict(fh.metadata() or {})
            tensors = {n: fh.get_tensor(n) for n in fh.keys()}
    except Exception as e:  # noqa: BLE001 - a truncated/garbled file raises from the parser; all mean "not usable"
        raise CorruptPrefillError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    stored = header.pop("attnflow.sha256", "")
    if header.get("attnflow.key") != key:
        raise CorruptPrefillError(f"{path}: holds key {header.get('attnflow.key')!r}, not {key!r}")
    actual = _checksum(tensors, header)
    if stored != actual:
        raise CorruptPrefillError(f"{path}: checksum mismatch (stored {stored[:12] or 'none'}, content {actual[:12]})")
    meta = json.loads(header["attnflow.meta"])
    prefill = _reuse.CompressedPrefill({n: t.to(device) for n, t in tensors.items()}, meta)
    prefill.info["prefill_seconds"] = float(header.get("attnflow.prefill_seconds", "nan"))
    return prefill


def compressed_prefill(loaded: LoadedModel, press: ResolvedSpec, ids: torch.Tensor,
                       root: Path | None = None) -> _reuse.CompressedPrefill:
    """The compressed prefill of context ``ids`` (B, Tc) under ``press``: loaded when stored and intact, else
    computed (one forward over the context) and stored. ``info`` says which: ``hit``, ``rebuilt`` (a corrupted file
    was replaced), ``load_seconds``, ``prefill_seconds`` (of the computation, also when it was loaded), ``path``."""
    ident = identity(loaded, press, ids)
    key = cache_key(ident)
    path = path_for(key, root)
    rebuilt = False
    if path.is_file():
        start = time.perf_counter()
        try:
            prefill = load(path, key, ids.device)
            prefill.info.update(hit=True, rebuilt=False, key=key, path=str(path),
                                load_seconds=time.perf_counter() - start)
            return prefill
        except CorruptPrefillError as e:
            print(f"compressed prefill {key[:12]}: {e}; recomputing it")
            rebuilt = True
    prefill = _reuse.compress_context(loaded.model, press.component, ids)
    save(prefill, key, ident, path)
    prefill.info.update(hit=False, rebuilt=rebuilt, key=key, path=str(path), load_seconds=0.0,
                        prefill_seconds=prefill.seconds)
    return prefill
