"""Loading models and tokenizers: hub ids, local directories, the bundled demo model, local ``.gguf`` files and
catalogue names (``smollm2-135m``, ``gemma3-270m``; see components/model_sources.py and docs/models.md).

Safe defaults: ``trust_remote_code`` stays off unless the caller passes it; weights load from safetensors when the
checkpoint has them and otherwise through transformers' ``torch.load(weights_only=True)``; nothing else is
unpickled. Checks that need only the config (does the path exist, is the architecture patchable) run before any
weights are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEMO = "demo"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class ModelNotFoundError(FileNotFoundError):
    """A model reference that is neither a local directory nor loadable from the hub."""


class UnsupportedArchitectureError(TypeError):
    """A model class whose attention attnflow cannot patch."""


class ModelFileError(ValueError):
    """A weight file that cannot be read (truncated or corrupt): a retry reads the same bytes."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: ``kind`` is ``local`` (a directory), ``hub`` (a hub id), ``gguf`` (a local .gguf
    file, converted on load) or ``catalogue`` (a catalogue model not pulled yet, pulled on load)."""

    ref: str
    kind: str
    location: str

    @property
    def name(self) -> str:
        """Short name for run names and registered-model names."""
        if self.ref == DEMO:
            return "demo-lm"
        if self.ref.lower().endswith(".gguf"):
            return re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(self.ref).stem)
        if self.kind == "catalogue":
            return self.ref
        return re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(self.location).name if self.kind == "local" else self.location)


def demo_model_dirs() -> list[Path]:
    """Where the demo model may live: a user-trained copy under ATTNFLOW_HOME, then the one shipped in the repo."""
    home = Path(os.environ.get("ATTNFLOW_HOME", Path.home() / ".attnflow")).expanduser()
    return [home / "models" / "demo-lm", Path(__file__).resolve().parents[1] / "assets" / "demo-lm"]


def resolve(ref: str) -> ModelRef:
    """Resolve ``demo``, a local directory, a ``.gguf`` file, a catalogue name or a hub id; raise
    ModelNotFoundError with what was tried. Side-effect free: nothing is downloaded or converted here."""
    ref = str(ref).strip()
    if not ref:
        raise ModelNotFoundError("empty model reference: pass a hub id, a local directory, or 'demo'")
    if ref == DEMO:
        for d in demo_model_dirs():
            if (d / "config.json").is_file():
                return ModelRef(ref, "local", str(d))
        tried = ", ".join(str(d) for d in demo_model_dirs())
        raise ModelNotFoundError(f"the demo model was not found (looked in {tried}); run `attnflow train-lm`")
    if ref.lower().endswith(".gguf"):
        from components import model_sources

        return model_sources.resolve_gguf(ref)
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{ref!r} exists but is not a model directory (no config.json in it)")
        return ModelRef(ref, "local", str(path.resolve()))
    from infra import model_store

    if ref in model_store.CATALOGUE:  # pulled: a plain local directory; else pulled when loaded
        pulled = model_store.is_pulled(ref)
        return ModelRef(ref, "local" if pulled else "catalogue", str(model_store.model_dir(ref)))
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if looks_like_path or not _HUB_ID.match(ref):
        raise ModelNotFoundError(f"model path {ref!r} does not exist")
    return ModelRef(ref, "hub", ref)


def load_config(ref: ModelRef | str, *, trust_remote_code: bool = False) -> Any:
    """The model's config (cheap: no weights). Hub ids need network access or a warm HF cache."""
    from transformers import AutoConfig

    mref = resolve(ref) if isinstance(ref, str) else ref
    if mref.kind in ("gguf", "catalogue"):
        from components import model_sources

        return model_sources.load_config(mref)
    if mref.kind == "hub":
        check_hub_reachable(mref.location)
    try:
        return AutoConfig.from_pretrained(mref.location, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelNotFoundError(
            f"{mref.ref!r} is not a local model directory and could not be loaded from the Hugging Face hub "
            f"(offline, or no such repository): {str(e).splitlines()[0]}"
        ) from None


def check_hub_reachable(repo_id: str) -> None:
    """Fail at once when a hub model is not in the local cache and the hub does not answer.

    huggingface_hub retries a network error 5 times with backoff (~25 s, "Retrying in 8s [Retry 5/5]") before it
    gives up on a file that is not cached, and offers no setting to turn that off; one HEAD request without retries
    (its ``retry_on_errors=False`` path) tells the same thing in one try. With HF_HUB_OFFLINE set, or the config
    cached, nothing is requested here (transformers then reads the cache, or fails at once)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), retry_on_errors=False)
    except HfHubHTTPError:
        return  # the hub answered (no such repository, gated, ...): transformers reports it without retrying
    except Exception as e:  # noqa: BLE001 - a network error: DNS, refused connection, timeout
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local model directory, not in the Hugging Face cache, and the hub "
            f"({constants.ENDPOINT}) did not answer: {type(e).__name__}: {e}. Check the network, or pass a local "
            "directory (HF_HUB_OFFLINE=1 reads only the cache)"
        ) from None


def check_supported(config: Any) -> type:
    """The causal-LM class for ``config``; raise UnsupportedArchitectureError if its attention is not patchable."""
    from transformers import AutoModelForCausalLM

    try:
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        from components.attention import vision

        hint = " (a vision model: load it with components.modeling.load_vision_model)" \
            if vision.is_multimodal(config) else ""
        raise UnsupportedArchitectureError(
            f"{type(config).__name__} (model_type={getattr(config, 'model_type', '?')!r}) has no causal-LM class "
            f"in transformers{hint}"
        ) from None
    if not getattr(cls, "_supports_attention_backend", False):
        raise UnsupportedArchitectureError(
            f"{cls.__name__} cannot be patched by attnflow: its attention does not dispatch through transformers' "
            "AttentionInterface (supported: Llama, Qwen2/3, Mistral, Gemma, Phi, GPT-2 and other models that do)"
        )
    return cls


def load_model(
    ref: ModelRef | str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    check: bool = True,
) -> tuple[torch.nn.Module, Any]:
    """Load a causal LM and its tokenizer in eval mode with SDPA attention (or the attention kernel it was trained
    with, recorded as ``attnflow_kernel`` in its config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    mref = resolve(ref) if isinstance(ref, str) else ref
    if mref.kind in ("gguf", "catalogue"):  # convert the GGUF once / pull the catalogue model
        from components import model_sources

        mref = model_sources.materialize(mref)
    config = load_config(mref, trust_remote_code=trust_remote_code)
    if check:
        check_supported(config)
    from safetensors import SafetensorError

    try:
        if getattr(config, "attnflow_kernel", None) and mref.kind == "local":  # trained with an attention kernel
            from components.kernels.base import load_kernel_model

            model = load_kernel_model(mref.location, dtype=_DTYPES[dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(  # the config read above, not a second read
                mref.location, config=config, dtype=_DTYPES[dtype], attn_implementation="sdpa",
                trust_remote_code=trust_remote_code
            )
    except SafetensorError as e:  # safetensors' message names no file
        raise ModelFileError(f"model {mref.ref!r}: cannot read {_unreadable_weights(mref)}: {e} (the file is "
                             "truncated or corrupt: download, convert or save it again)") from None
    tokenizer = AutoTokenizer.from_pretrained(mref.location, config=config, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model.to(device).eval(), tokenizer


def load_vision_model(ref: ModelRef | str, *, dtype: str = "float32", device: str = "cpu") -> torch.nn.Module:
    """Load a supported vision-language decoder or vision encoder (components/attention/vision.py) in eval mode with
    SDPA attention. The family is checked on the config, before any weights are read (UnsupportedVisionModelError
    names the configuration otherwise). Local directories and hub ids; no remote code."""
    from components.attention import vision

    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    mref = resolve(ref) if isinstance(ref, str) else ref
    if mref.kind in ("gguf", "catalogue"):
        raise vision.UnsupportedVisionModelError(f"{mref.ref!r}: GGUF files and catalogue models are language models")
    config = load_config(mref)
    cls = vision.model_class(config)
    model = cls.from_pretrained(mref.location, config=config, dtype=_DTYPES[dtype], attn_implementation="sdpa")
    return model.to(device).eval()


def _unreadable_weights(mref: ModelRef) -> str:
    """The first ``.safetensors`` file of a local model that safetensors cannot open (else the model directory)."""
    from safetensors import SafetensorError, safe_open

    root = Path(mref.location)
    for f in sorted(root.glob("*.safetensors")) if root.is_dir() else []:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return str(f)
    return f"the weights in {mref.location}"


#: files that decide what a model computes: weights (every byte), the config and the tokenizer
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")


def model_fingerprint(ref: ModelRef | str) -> str:
    """Identify the exact weights: sha256 over config.json and the full content of every weight and tokenizer file
    (file digests are memoised by path, size, mtime and inode; see infra/hashing.py). A hub id is identified by its
    resolved commit in the local Hugging Face cache plus the digests of the cached files."""
    mref = resolve(ref) if isinstance(ref, str) else ref
    if mref.kind in ("gguf", "catalogue"):  # the weights are those of the converted directory
        from components import model_sources

        mref = model_sources.materialize(mref)
    h = hashlib.sha256(mref.kind.encode())
    if mref.kind == "hub":
        h.update(mref.location.encode())
        snapshot = _hub_snapshot(mref.location)
        if snapshot is None:  # not in the local cache: nothing to hash (the load that follows downloads it)
            print(f"warning: {mref.location} is not in the local Hugging Face cache; its fingerprint is the hub id "
                  "only (revision and weights unknown)")
            return h.hexdigest()[:16]
        h.update(f"revision={snapshot.name}".encode())  # snapshots/<commit hash>
        _hash_files(h, snapshot)
        return h.hexdigest()[:16]
    root = Path(mref.location)
    h.update((root / "config.json").read_bytes())
    _hash_files(h, root)
    return h.hexdigest()[:16]


def _hash_files(h: Any, root: Path) -> None:
    from infra.hashing import file_digest

    for f in sorted(root.iterdir()):
        if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in _TOKENIZER_FILES or f.name == "config.json"):
            h.update(f"{f.name}:{file_digest(f)}".encode())


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub repository (its name is the resolved commit hash), without network."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or no huggingface_hub): unknown
        return None
    return path if path.is_dir() else None


def describe(model: torch.nn.Module) -> dict[str, Any]:
    """A few facts about a loaded model for logging."""
    cfg = model.config
    return {
        "model_class": type(model).__name__,
        "model_type": getattr(cfg, "model_type", "?"),
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_layers": getattr(cfg, "num_hidden_layers", None),
        "n_heads": getattr(cfg, "num_attention_heads", None),
        "n_kv_heads": getattr(cfg, "num_key_value_heads", getattr(cfg, "num_attention_heads", None)),
        "config": json.loads(cfg.to_json_string()) if hasattr(cfg, "to_json_string") else {},
    }
