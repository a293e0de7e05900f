"""The similarity cache beside a generations cache, and reading both back as the methods' inputs.

``<generations dir>/similarity-<key>/`` holds, per question, the token relevance of each sampled answer and the
(K, K) sentence-similarity and entailment matrices of one (similarity, entailment) backend pair
(:mod:`components.uncertainty._similarity`); ``key`` hashes the generations key, both backends (a model backend
with its weights' fingerprint) and the code computing them. Same shard scheme as :mod:`tasks.generations`:
resumable, verified, refusing a directory built from other inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from components import modeling
from components.uncertainty import _generate, _similarity
from components.uncertainty.base import QuestionSamples
from tasks.generations import FORMAT, _key, _list, _open, _shards, code_fingerprint, load_table, read_manifest
from tasks.models import LoadedModel
from tasks.pawn_cache import CacheMismatchError

_F32 = pa.float32()


def backend(ref: str, kind: str, generator_fingerprint: str) -> dict[str, Any]:
    """A backend's identity; raises before compute for a model reference that does not resolve."""
    ref = str(ref).strip()
    if kind == "similarity" and ref in ("hidden", "embedding"):
        return {"kind": ref, "fingerprint": generator_fingerprint}
    if kind == "entailment" and ref in (_similarity.OFFLINE_ENTAILMENT, "hidden"):
        return {"kind": ref, "fingerprint": generator_fingerprint if ref == "hidden" else None}
    try:
        mref = modeling.resolve(ref)
    except modeling.ModelNotFoundError as e:
        offline = "'hidden', 'embedding'" if kind == "similarity" else "'rouge' or 'hidden'"
        raise ValueError(f"{kind} backend {ref!r}: {e}; give {offline}, a hub id or a local model directory"
                         ) from None
    return {"kind": "model", "ref": ref, "location": mref.location, "fingerprint": modeling.model_fingerprint(mref)}


def build_similarity(loaded: LoadedModel, generations_dir: str | Path, similarity: str = "hidden",
                     entailment: str = "rouge", *, batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """Build or complete the similarity cache of a generations cache; returns its manifest."""
    gen_manifest, table = load_table(generations_dir)
    if loaded.fingerprint != gen_manifest["model"]["fingerprint"]:
        raise CacheMismatchError(f"generations cache {generations_dir} was sampled from model "
                                 f"{gen_manifest['model']['fingerprint']} ({gen_manifest['model']['name']}), not "
                                 f"{loaded.fingerprint} ({loaded.name}); load that model to compute its relevance")
    sim = backend(similarity, "similarity", loaded.fingerprint)
    ent = backend(entailment, "entailment", loaded.fingerprint)
    code = code_fingerprint("components.uncertainty._similarity") + code_fingerprint("tasks.similarity_cache")
    key = _key([gen_manifest["key"], sim, ent, code])
    out = Path(generations_dir) / f"similarity-{key}"
    size = gen_manifest["shard_size"]
    manifest = {"format": FORMAT, "kind": "similarity", "key": key, "generations_key": gen_manifest["key"],
                "similarity": sim, "entailment": ent, "code": code, "n_rows": table.num_rows, "shard_size": size,
                "n_shards": (table.num_rows + size - 1) // size, "shards": [], "complete": False}
    manifest = _open(out, manifest, "similarity", [("generations", gen_manifest["key"],
                                                    lambda m: m["generations_key"])])
    sim_model = _similarity.load_pair_model(sim["location"], "similarity") if sim["kind"] == "model" else None
    ent_model = _similarity.load_pair_model(ent["location"], "entailment") if ent["kind"] == "model" else None
    k, hidden = gen_manifest["sampling"]["n_samples"], gen_manifest["hidden_size"]
    rows = table.select(["question", "prompt_ids", "sample_ids", "sample_emb", "sample_text"]).to_pylist()

    def compute(lo: int, hi: int) -> pa.Table:
        rel, sims, ents = [], [], []
        for r in rows[lo:hi]:
            emb = np.asarray(r["sample_emb"], dtype=np.float32).reshape(k, hidden)  # (K, H)
            if sim["kind"] == "embedding":
                rel.append(_similarity.embedding_relevance(loaded.model, r["sample_ids"]))
                sims.append(_similarity.hidden_matrix(emb))
            elif sim_model is None:
                rel.append(_generate.hidden_relevance(loaded.model, loaded.tokenizer, r["prompt_ids"],
                                                      r["sample_ids"], emb, batch_size=batch_size))
                sims.append(_similarity.hidden_matrix(emb))
            else:
                rel.append(_similarity.pair_relevance(sim_model, loaded.tokenizer, r["question"], r["sample_ids"]))
                sims.append(_similarity.pair_matrix(sim_model, r["question"], r["sample_text"], symmetric=True))
            if ent["kind"] == "rouge":
                ents.append(_similarity.rouge_matrix(r["sample_text"]))
            elif ent["kind"] == "hidden":
                ents.append(_similarity.hidden_matrix(emb))
            else:
                ents.append(_similarity.pair_matrix(ent_model, r["question"], r["sample_text"], symmetric=False))
        return pa.table({
            "relevance": pa.array([[list(map(float, x)) for x in q] for q in rel], type=pa.list_(pa.list_(_F32))),
            "similarity": _list(sims, _F32), "entailment": _list(ents, _F32)})

    return _shards(out, manifest, compute, "similarity", progress)


def load_samples(generations_dir: str | Path, similarity_dir: str | Path | None = None) -> dict[str, Any]:
    """Everything the methods and the evaluation read: ``questions`` (list of QuestionSamples) plus ids, question
    texts, references and greedy answers; relevance / similarity / entailment only with a similarity cache."""
    manifest, table = load_table(generations_dir)
    k = manifest["sampling"]["n_samples"]
    cols = table.select(["id", "question", "references", "sample_text", "sample_nll", "greedy_text"]).to_pydict()
    extra: dict[str, list[Any]] = {"relevance": [None] * table.num_rows, "similarity": [None] * table.num_rows,
                                   "entailment": [None] * table.num_rows}
    if similarity_dir is not None:
        sim_manifest, sim_table = load_table(similarity_dir)
        if sim_manifest["generations_key"] != manifest["key"]:
            raise CacheMismatchError(f"similarity cache {similarity_dir} belongs to generations "
                                     f"{sim_manifest['generations_key']}, not {manifest['key']}")
        s = sim_table.to_pydict()
        extra["relevance"] = [[np.asarray(x, dtype=np.float32) for x in q] for q in s["relevance"]]
        extra["similarity"] = [np.asarray(m, dtype=np.float64).reshape(k, k) for m in s["similarity"]]
        extra["entailment"] = [np.asarray(m, dtype=np.float64).reshape(k, k) for m in s["entailment"]]
    questions = [QuestionSamples(texts=cols["sample_text"][i],
                                 nll=[np.asarray(x, dtype=np.float32) for x in cols["sample_nll"][i]],
                                 relevance=extra["relevance"][i], similarity=extra["similarity"][i],
                                 entailment=extra["entailment"][i], question=cols["question"][i])
                 for i in range(table.num_rows)]
    return {"manifest": manifest, "questions": questions, "ids": cols["id"], "question": cols["question"],
            "references": cols["references"], "greedy": cols["greedy_text"]}


def similarity_dirs(generations_dir: str | Path) -> list[str]:
    """The complete similarity caches beside a generations cache."""
    return [str(p) for p in sorted(Path(generations_dir).glob("similarity-*"))
            if (p / "manifest.json").is_file() and read_manifest(p).get("complete")]


@task(cache_policy=NO_CACHE, retries=0, task_run_name="similarity {similarity}/{entailment}")
def build_similarities(loaded: LoadedModel, generations_dir: str, similarity: str = "hidden",
                       entailment: str = "rouge", progress: bool = False) -> dict[str, Any]:
    """Token relevance, sentence similarity and entailment for a generations cache (missing shards only)."""
    return build_similarity(loaded, generations_dir, similarity, entailment, progress=progress)
