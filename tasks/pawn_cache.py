"""The PAWN feature cache: per-text backbone features in Parquet shards, content-addressed, resumable, verified.

Layout: ``<cache root>/<key>/manifest.json`` + ``shard-00000.parquet`` ... where
``key = sha256(backbone fingerprint, performer fingerprint, dataset fingerprint, extractor version, max_length,
dtype[, observer fingerprint])``. One row per text: id, label, domain, generator, split, source, group, n_tokens,
truncated, and the features flattened
into Parquet lists: ``hidden`` (T*H float16, stored once; PAWN shifts it at load time), ``metrics``
((T-1)*5 float32) and ``aux`` ((T-1)*A float32).

Each shard is written to a temp name and renamed, then the manifest (its sha256, bytes, tokens) is rewritten the
same way, so an interrupted run leaves only whole shards; the next run verifies every listed shard against its
checksum, rebuilds corrupted ones and computes the missing ones from the first gap on. A manifest built by
another backbone, performer, dataset or extractor version is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from components.detectors import _features
from components.detectors.base import METRICS, FeatureSet
from infra.settings import settings
from tasks.io import atomic_path, write_json
from tasks.models import LoadedModel
from tasks.pawn_data import dataset_fingerprint, read_prepared

FORMAT = 1


class CacheMismatchError(ValueError):
    """A feature cache built for another backbone, dataset or extractor version."""


class CorruptShardError(ValueError):
    """A shard whose checksum does not match its manifest."""


def cache_root() -> Path:
    return settings().cache_dir / "pawn-features"


def identity(loaded: LoadedModel, data_fp: str, max_length: int, performer: LoadedModel | None = None,
             data_path: str = "", observer: LoadedModel | None = None) -> dict:
    """What a cache is built from (its key hashes these, except the dataset's path)."""
    extra = {} if observer is None else {"observer": {"name": observer.name, "fingerprint": observer.fingerprint}}
    return {**extra,
        "backbone": {"name": loaded.name, "ref": loaded.ref.ref, "fingerprint": loaded.fingerprint,
                     "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
                     "hidden_size": int(loaded.model.config.hidden_size),
                     "vocab_size": _features.vocab_size(loaded.model)},
        "performer": None if performer is None else {"name": performer.name, "fingerprint": performer.fingerprint},
        "extractor": {"version": _features.EXTRACTOR_VERSION, "max_length": max_length, "metrics": list(METRICS)},
        "dataset": {"fingerprint": data_fp, "path": data_path},
    }


def cache_key(ident: dict) -> str:
    parts = [ident["backbone"]["fingerprint"], ident["backbone"]["dtype"],
             (ident["performer"] or {}).get("fingerprint"), ident["dataset"]["fingerprint"],
             ident["extractor"]["version"], ident["extractor"]["max_length"]]
    if ident.get("observer"):  # appended only when present: caches without an observer keep their keys
        parts.append(ident["observer"]["fingerprint"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{cache_dir} is not a PAWN feature cache (no manifest.json); build one with "
                                "`attnflow pawn features`")
    return json.loads(path.read_text())


def check_compatible(manifest: dict[str, Any], *, backbone_fingerprint: str | None = None,
                     extractor_version: str | None = None, dataset_fingerprint: str | None = None,
                     performer_fingerprint: str | None | bool = False, where: str = "",
                     observer_fingerprint: str | None | bool = False) -> None:
    """Refuse a cache built from other inputs (None = not checked; performer/observer False = not checked)."""
    checks = [("backbone", backbone_fingerprint, manifest["backbone"]["fingerprint"], manifest["backbone"]["name"]),
              ("extractor version", extractor_version, manifest["extractor"]["version"], ""),
              ("dataset", dataset_fingerprint, manifest["dataset"]["fingerprint"], "")]
    if performer_fingerprint is not False:
        checks.append(("performer", performer_fingerprint, (manifest.get("performer") or {}).get("fingerprint"), ""))
    if observer_fingerprint is not False:
        checks.append(("observer", observer_fingerprint, (manifest.get("observer") or {}).get("fingerprint"), ""))
    for what, want, have, name in checks:
        if want is not None and want != have:
            raise CacheMismatchError(
                f"feature cache {where or manifest.get('key')} was built by {what} {have}"
                + (f" ({name})" if name else "") + f", not {want}: refusing to mix features; rebuild it with "
                "`attnflow pawn features` for this model/data")


def verify_shard(cache_dir: Path, shard: dict[str, Any]) -> bool:
    path = cache_dir / shard["file"]
    return path.is_file() and path.stat().st_size == shard["bytes"] and sha256_file(path) == shard["sha256"]


def _shard_table(rows: list[dict[str, Any]], feats: FeatureSet, key: str) -> pa.Table:
    flat = lambda xs, dtype: pa.array([x.reshape(-1) for x in xs], type=pa.list_(dtype))  # noqa: E731
    table = pa.table({
        "id": [r["id"] for r in rows], "label": pa.array([r["label"] for r in rows], pa.int8()),
        "domain": [r["domain"] for r in rows], "generator": [r["generator"] for r in rows],
        "split": [r["split"] for r in rows], "source": [r["source"] for r in rows], "group": [r["group"] for r in rows],
        "n_tokens": pa.array(feats.n_tokens, pa.int32()),
        "truncated": feats.extra["truncated"],
        "hidden": flat(feats.hidden, pa.float16()), "metrics": flat(feats.metrics, pa.float32()),
        "aux": flat(feats.aux, pa.float32()),
    })
    return table.replace_schema_metadata({"attnflow.pawn_cache_key": key, "aux": ",".join(feats.aux_names)})


def build(loaded: LoadedModel, data_path: str, *, max_length: int = 512, batch_size: int = 16,
          shard_size: int = 256, performer: LoadedModel | None = None, cache_dir: str | None = None,
          progress: bool = True, observer: LoadedModel | None = None) -> dict[str, Any]:
    """Build or complete the cache of a prepared dataset; returns the manifest (plus this run's counts)."""
    rows = read_prepared(data_path)
    ident = identity(loaded, dataset_fingerprint(data_path), max_length, performer, str(data_path), observer)
    key = cache_key(ident)
    out = Path(cache_dir) if cache_dir else cache_root() / key
    manifest = {"format": FORMAT, "key": key, **ident, "shard_size": shard_size, "n_rows": len(rows),
                "n_shards": (len(rows) + shard_size - 1) // shard_size, "shards": [], "complete": False}
    if (out / "manifest.json").is_file():
        old = read_manifest(out)
        check_compatible(old, backbone_fingerprint=loaded.fingerprint, extractor_version=_features.EXTRACTOR_VERSION,
                         dataset_fingerprint=ident["dataset"]["fingerprint"],
                         performer_fingerprint=performer.fingerprint if performer else None, where=str(out),
                         observer_fingerprint=observer.fingerprint if observer else None)
        if old.get("key") != key or old.get("shard_size") != shard_size:
            raise CacheMismatchError(f"feature cache {out} has key {old.get('key')} / shard size "
                                     f"{old.get('shard_size')}, expected {key} / {shard_size}; use another directory")
        manifest["shards"] = old["shards"]
    good = {s["index"]: s for s in manifest["shards"] if verify_shard(out, s)}
    corrupt = sorted({s["index"] for s in manifest["shards"]} - set(good))
    if corrupt:
        print(f"feature cache {key}: shard(s) {corrupt} failed the checksum or are missing: rebuilding them")
    todo = [i for i in range(manifest["n_shards"]) if i not in good]
    if todo and todo[0] > 0:
        print(f"feature cache {key}: resuming at shard {todo[0]} of {manifest['n_shards']}")
    n_todo_texts = sum(len(rows[i * shard_size : (i + 1) * shard_size]) for i in todo)
    bar = tqdm(total=n_todo_texts, desc=f"features {loaded.name}", unit="text", disable=not progress or not todo,
               dynamic_ncols=True)
    start, done_tokens, base = time.perf_counter(), 0, 0
    for i in todo:
        chunk = rows[i * shard_size : (i + 1) * shard_size]

        def tick(texts: int, tokens: int, _base: int = base) -> None:
            bar.n = _base + texts
            bar.set_postfix_str(f"{(done_tokens + tokens) / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")
            bar.refresh()

        t0 = time.perf_counter()
        feats = _features.extract(loaded.model, loaded.tokenizer, [r["text"] for r in chunk], max_length=max_length,
                                  batch_size=batch_size, performer=performer.model if performer else None,
                                  observer=observer.model if observer else None,
                                  names=[r["id"] for r in chunk], progress=tick)
        path = out / f"shard-{i:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(_shard_table(chunk, feats, key), tmp, compression="zstd")
        tokens = int(feats.n_tokens.sum())
        done_tokens += tokens
        base += len(chunk)
        good[i] = {"index": i, "file": path.name, "start": i * shard_size, "stop": i * shard_size + len(chunk),
                   "sha256": sha256_file(path), "bytes": path.stat().st_size, "n_tokens": tokens,
                   "n_truncated": int(sum(feats.extra["truncated"])), "seconds": time.perf_counter() - t0}
        manifest["shards"] = [good[k] for k in sorted(good)]
        write_json(manifest, out / "manifest.json")
    bar.close()
    manifest["complete"] = len(good) == manifest["n_shards"]
    manifest["n_tokens"] = sum(s["n_tokens"] for s in manifest["shards"])
    manifest["bytes"] = sum(s["bytes"] for s in manifest["shards"])
    manifest["n_truncated"] = sum(s["n_truncated"] for s in manifest["shards"])
    write_json(manifest, out / "manifest.json")
    seconds = time.perf_counter() - start
    if todo:
        print(f"feature cache {key}: computed {len(todo)} shard(s), {done_tokens:,} tokens in {seconds:.1f}s "
              f"({done_tokens / max(seconds, 1e-9):,.0f} tok/s); "
              f"{manifest['bytes'] / max(manifest['n_tokens'], 1):.0f} bytes/token")
    else:
        print(f"feature cache {key}: all {manifest['n_shards']} shard(s) reused from {out}")
    return {**manifest, "dir": str(out), "computed_shards": todo, "rebuilt_shards": corrupt}


def load(cache_dir: str | Path, *, splits: tuple[str, ...] | None = None, hidden: bool = True,
         verify: bool = True) -> FeatureSet:
    """Features of the given splits (all when None); verifies shard checksums and finiteness."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    if not manifest.get("complete"):
        raise CacheMismatchError(f"feature cache {cache_dir} is incomplete ({len(manifest['shards'])} of "
                                 f"{manifest['n_shards']} shards); run `attnflow pawn features` again to resume")
    H, A = manifest["backbone"]["hidden_size"], None
    cols = ["id", "label", "domain", "generator", "split", "n_tokens", "truncated", "metrics", "aux"]
    cols += ["hidden"] if hidden else []
    parts: dict[str, list[Any]] = {c: [] for c in cols + ["source", "group"]}
    aux_names: tuple[str, ...] = ()
    for shard in manifest["shards"]:
        if verify and not verify_shard(cache_dir, shard):
            raise CorruptShardError(f"feature cache {cache_dir}: {shard['file']} does not match its checksum; run "
                                    "`attnflow pawn features` (or the flow) again to rebuild it")
        present = set(pq.read_schema(cache_dir / shard["file"]).names)
        table = pq.read_table(cache_dir / shard["file"],
                              columns=cols + [c for c in ("source", "group") if c in present])
        aux_names = tuple(filter(None, (table.schema.metadata or {}).get(b"aux", b"").decode().split(",")))
        A = len(aux_names)
        if splits is not None:
            table = table.filter(pc.is_in(table["split"], pa.array(list(splits))))
        n_tok = table["n_tokens"].to_numpy()
        for c in ("id", "label", "domain", "generator", "split", "truncated"):
            parts[c] += table[c].to_pylist()
        # caches written before the source / group columns existed: the domain stands in for the source
        parts["source"] += table["source"].to_pylist() if "source" in present else table["domain"].to_pylist()
        parts["group"] += table["group"].to_pylist() if "group" in present else [""] * table.num_rows
        parts["n_tokens"].append(n_tok)
        for c, width, shift in (("metrics", len(METRICS), 1), ("aux", A, 1), ("hidden", H, 0)):
            if c in cols:
                flat = table[c].combine_chunks()
                values = flat.values.to_numpy(zero_copy_only=False).copy()  # writable, owned by numpy
                offsets = flat.offsets.to_numpy()
                parts[c] += [values[offsets[j] : offsets[j + 1]].reshape(int(n_tok[j]) - shift, width)
                             for j in range(len(n_tok))]
    feats = FeatureSet(
        ids=parts["id"], n_tokens=np.concatenate(parts["n_tokens"]) if parts["n_tokens"] else np.zeros(0, np.int32),
        metrics=parts["metrics"], aux=parts["aux"], aux_names=aux_names,
        vocab_size=manifest["backbone"]["vocab_size"], hidden=parts["hidden"] if hidden else None,
        labels=np.asarray(parts["label"], dtype=np.int64),
        extra={k: parts[k] for k in ("domain", "generator", "split", "source", "group", "truncated")},
    )
    feats.check_finite()
    return feats


@task(cache_policy=NO_CACHE, retries=0, task_run_name="feature cache {data_path}")
def build_feature_cache(loaded: LoadedModel, data_path: str, max_length: int = 512, batch_size: int = 16,
                        shard_size: int = 256, performer: LoadedModel | None = None, cache_dir: str | None = None,
                        progress: bool = True, observer: LoadedModel | None = None) -> dict[str, Any]:
    """Run the backbone once over a prepared dataset (only the shards that are missing or corrupted)."""
    return build(loaded, data_path, max_length=max_length, batch_size=batch_size, shard_size=shard_size,
                 performer=performer, cache_dir=cache_dir, progress=progress, observer=observer)
