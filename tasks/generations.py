"""The generations cache: K sampled answers + the greedy answer per question, in Parquet shards, content-addressed,
resumable, verified; and the similarity cache derived from it.

Layout: ``<ATTNFLOW_HOME>/cache/generations/<key>/manifest.json`` + ``shard-00000.parquet`` ... where ``key`` hashes
the model fingerprint and dtype, the prepared data's content hash, the sampling config (K, temperature, top-p,
top-k, max new tokens, seed, stop strings, batch and shard size: both fix the seeds and the padding), the prompt
template (and the tokenizer's chat template when used) and the generator's code fingerprint. One row per question:
id, question, references, prompt ids; per sample (K): token ids, text, -log p per token (temperature 1), the
answer embedding (mean last hidden state, float16); the greedy answer's ids, text and -log p.

Similarity: ``<generations dir>/similarity-<key2>/`` (same shard scheme), ``key2`` = generations key + similarity
backend + entailment backend (each with its model fingerprint); per question: the token relevance of every
sample, the (K, K) similarity and entailment matrices. Scoring a method reads both and never generates.

Shards are written to a temp name and renamed, then the manifest (sha256 and bytes of each shard) rewritten the
same way, so an interrupted run leaves only whole shards; the next run verifies the listed shards and computes the
missing ones. A directory built from another model, data or sampling config is refused (:class:`CacheMismatchError`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from components.base import unescape
from components.uncertainty import _generate
from infra.settings import settings
from registry import sources
from tasks.integrity import content_key
from tasks.io import atomic_path, write_json
from tasks.models import LoadedModel
from tasks.pawn_cache import CacheMismatchError, sha256_file, verify_shard
from tasks.uncertainty_data import load_qa

FORMAT = 1
_F32, _F16, _I32 = pa.float32(), pa.float16(), pa.int32()


def code_fingerprint(module: str) -> str:
    """Hash of a module's code and every in-project module it imports (comments and docstrings excluded)."""
    h = hashlib.sha256()
    for m in sources.closure([module]):
        h.update(m.encode() + sources.normalized_source(m).encode())
    return h.hexdigest()[:16]


def sampling_config(n_samples: int = 5, temperature: float = 0.5, top_p: float = 1.0, top_k: int = 0,
                    max_new_tokens: int = 32, seed: int = 0, stop: list[str] | None = None, batch_size: int = 4,
                    shard_size: int = 32, template: str = "{question}", chat: bool = True) -> dict[str, Any]:
    """The sampling and prompt settings as the manifest records them; raises on bad values before compute.
    ``template`` and ``stop`` may be written with backslash escapes (``\\n``), as on a command line."""
    template, stop = unescape(template), [unescape(s) for s in (stop or [])]
    if n_samples < 1 or max_new_tokens < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError("n_samples, max_new_tokens, batch_size and shard_size must be >= 1")
    if not temperature > 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature > 0, 0 < top_p <= 1 and top_k >= 0 (got {temperature}, {top_p}, {top_k})")
    if "{question}" not in template:
        raise ValueError(f"prompt template must contain {{question}}, got {template!r}")
    return {"n_samples": n_samples, "temperature": temperature, "top_p": top_p, "top_k": top_k,
            "max_new_tokens": max_new_tokens, "seed": seed, "stop": stop, "batch_size": batch_size,
            "shard_size": shard_size, "template": template, "chat": chat}


def identity(loaded: LoadedModel, data_path: str, config: dict[str, Any]) -> dict[str, Any]:
    """What a generations cache is built from (its key hashes all of it except the data's path)."""
    chat_template = getattr(loaded.tokenizer, "chat_template", None) if config["chat"] else None
    return {"model": {"name": loaded.name, "ref": loaded.ref.ref, "fingerprint": loaded.fingerprint,
                      "dtype": loaded.dtype},
            "data": {"fingerprint": content_key(data_path), "path": str(data_path)},
            "sampling": config,
            "prompt": {"chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest()[:16]
                       if chat_template else None},
            "generator": {"format": FORMAT, "code": code_fingerprint("components.uncertainty._generate")}}


def _key(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def generations_key(ident: dict[str, Any]) -> str:
    return _key([ident["model"]["fingerprint"], ident["model"]["dtype"], ident["data"]["fingerprint"],
                 ident["sampling"], ident["prompt"], ident["generator"]])


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{cache_dir} is not a generations/similarity cache (no manifest.json)")
    return json.loads(path.read_text())


def _shards(out: Path, manifest: dict[str, Any], compute: Callable[[int, int], pa.Table], label: str,
            progress: bool) -> dict[str, Any]:
    """Complete ``manifest``'s shards in ``out``: verify the listed ones, compute the missing (resumable)."""
    n, size = manifest["n_rows"], manifest["shard_size"]
    good = {s["index"]: s for s in manifest["shards"] if verify_shard(out, s)}
    corrupt = sorted({s["index"] for s in manifest["shards"]} - set(good))
    if corrupt:
        print(f"{label} cache {manifest['key']}: shard(s) {corrupt} failed the checksum or are missing: rebuilding")
    todo = [i for i in range(manifest["n_shards"]) if i not in good]
    if todo and todo[0] > 0:
        print(f"{label} cache {manifest['key']}: resuming at shard {todo[0]} of {manifest['n_shards']}")
    bar = tqdm(total=len(todo), desc=label, unit="shard", disable=not progress or not todo, dynamic_ncols=True)
    start = time.perf_counter()
    for i in todo:
        t0 = time.perf_counter()
        table = compute(i * size, min(n, (i + 1) * size))
        path = out / f"shard-{i:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table.replace_schema_metadata({"attnflow.cache_key": manifest["key"]}), tmp,
                           compression="zstd")
        good[i] = {"index": i, "file": path.name, "start": i * size, "stop": min(n, (i + 1) * size),
                   "sha256": sha256_file(path), "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}
        manifest["shards"] = [good[k] for k in sorted(good)]
        write_json(manifest, out / "manifest.json")
        bar.update(1)
    bar.close()
    manifest["complete"] = len(good) == manifest["n_shards"]
    write_json(manifest, out / "manifest.json")
    seconds = time.perf_counter() - start
    print(f"{label} cache {manifest['key']}: " + (f"computed {len(todo)} shard(s) in {seconds:.1f}s" if todo
                                                  else f"all {manifest['n_shards']} shard(s) reused from {out}"))
    return {**manifest, "dir": str(out), "computed_shards": todo, "rebuilt_shards": corrupt, "seconds": seconds}


def _open(out: Path, manifest: dict[str, Any], label: str, checks: list[tuple[str, Any, Any]]) -> dict[str, Any]:
    """The manifest to continue: the one on disk when it was built from the same inputs; refuse any other."""
    if (out / "manifest.json").is_file():
        old = read_manifest(out)
        for what, want, have in checks + [("key", manifest["key"], old.get("key"))]:
            if want != have(old) if callable(have) else want != have:
                got = have(old) if callable(have) else have
                raise CacheMismatchError(f"{label} cache {out} was built from {what} {got}, not {want}: refusing to "
                                         "mix; use another directory (or the default, keyed by the inputs)")
        manifest["shards"] = old["shards"]
    return manifest


def _list(values: list[np.ndarray], dtype: pa.DataType) -> pa.Array:
    return pa.array([np.asarray(v).reshape(-1) for v in values], type=pa.list_(dtype))


def build(loaded: LoadedModel, data_path: str, config: dict[str, Any], *, cache_dir: str | None = None,
          progress: bool = False) -> dict[str, Any]:
    """Build or complete the generations cache of a prepared QA file; returns the manifest (plus this run's
    counts)."""
    rows = load_qa(data_path)
    ident = identity(loaded, data_path, config)
    key = generations_key(ident)
    out = Path(cache_dir) if cache_dir else settings().cache_dir / "generations" / key
    size = config["shard_size"]
    manifest = {"format": FORMAT, "kind": "generations", "key": key, **ident, "n_rows": len(rows),
                "shard_size": size, "n_shards": (len(rows) + size - 1) // size, "shards": [], "complete": False,
                "hidden_size": int(loaded.model.config.hidden_size)}
    manifest = _open(out, manifest, "generations", [
        ("model", loaded.fingerprint, lambda m: m["model"]["fingerprint"]),
        ("data", ident["data"]["fingerprint"], lambda m: m["data"]["fingerprint"]),
        ("sampling config", config, lambda m: m["sampling"])])
    tok, model = loaded.tokenizer, loaded.model

    def compute(lo: int, hi: int) -> pa.Table:
        chunk = rows[lo:hi]
        prompts = [_generate.build_prompt(tok, r["question"], config["template"], config["chat"]) for r in chunk]
        gens = _generate.generate(model, tok, prompts, n_samples=config["n_samples"],
                                  temperature=config["temperature"], top_p=config["top_p"], top_k=config["top_k"],
                                  max_new_tokens=config["max_new_tokens"], stop=config["stop"],
                                  seed=config["seed"] * 1_000_003 + lo, batch_size=config["batch_size"])
        cols: dict[str, list[Any]] = {c: [] for c in ("ids", "nll", "emb", "texts", "g_ids", "g_nll", "g_text")}
        for p, g in zip(prompts, gens):
            nll, emb = _generate.rescore(model, tok, p, g["samples"] + [g["greedy"]], batch_size=config["batch_size"])
            cols["ids"].append(pa.array([list(s) for s in g["samples"]], type=pa.list_(_I32)))
            cols["nll"].append(_list(nll[:-1], _F32))
            cols["emb"].append(emb[:-1].astype(np.float16).reshape(-1))
            cols["texts"].append([tok.decode(s, skip_special_tokens=True).strip() for s in g["samples"]])
            cols["g_ids"].append(g["greedy"])
            cols["g_nll"].append(nll[-1])
            cols["g_text"].append(tok.decode(g["greedy"], skip_special_tokens=True).strip())
        return pa.table({
            "id": [r["id"] for r in chunk], "question": [r["question"] for r in chunk],
            "references": pa.array([r["references"] for r in chunk], type=pa.list_(pa.string())),
            "prompt_ids": pa.array(prompts, type=pa.list_(_I32)),
            "sample_ids": pa.array([a.to_pylist() for a in cols["ids"]], type=pa.list_(pa.list_(_I32))),
            "sample_nll": pa.array([a.to_pylist() for a in cols["nll"]], type=pa.list_(pa.list_(_F32))),
            "sample_emb": _list(cols["emb"], _F16), "sample_text": cols["texts"],
            "greedy_ids": pa.array(cols["g_ids"], type=pa.list_(_I32)), "greedy_nll": _list(cols["g_nll"], _F32),
            "greedy_text": cols["g_text"],
        })

    return _shards(out, manifest, compute, "generations", progress)


def load_table(cache_dir: str | Path, verify: bool = True) -> tuple[dict[str, Any], pa.Table]:
    """A complete cache's manifest and all its rows (shards checked against their checksums)."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    if not manifest.get("complete"):
        raise CacheMismatchError(f"cache {cache_dir} is incomplete ({len(manifest['shards'])} of "
                                 f"{manifest['n_shards']} shards); run the flow again to resume it")
    tables = []
    for s in manifest["shards"]:
        if verify and not verify_shard(cache_dir, s):
            raise CacheMismatchError(f"cache {cache_dir}: {s['file']} does not match its checksum; run the flow "
                                     "again to rebuild it")
        tables.append(pq.read_table(cache_dir / s["file"]))
    return manifest, pa.concat_tables(tables)


@task(cache_policy=NO_CACHE, retries=0, task_run_name="generations {data_path}")
def build_generations(loaded: LoadedModel, data_path: str, config: dict[str, Any], cache_dir: str | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """Sample K answers + the greedy answer per question (only the shards that are missing or corrupted)."""
    return build(loaded, data_path, config, cache_dir=cache_dir, progress=progress)
