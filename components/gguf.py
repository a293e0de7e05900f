"""GGUF files: read their metadata and convert them to a safetensors model directory (dequantized).

transformers reads GGUF through the ``gguf`` package (``from_pretrained(dir, gguf_file=name)``): it maps
llama.cpp's tensor names back to HF names, undoes llama.cpp's q/k rope permutation and, with
``GgufConfig(dequantize=True)``, dequantizes every block-quantized tensor (Q4_1, Q4_K, Q8_0, ...) to floats.
Without ``dequantize=True`` transformers 5 keeps the packed weights and refuses ``save_pretrained``. The
architecture check runs on the metadata alone, before any tensor is dequantized.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# llama.cpp spellings transformers renames before its mapping (modeling_gguf_pytorch_utils.load_gguf_checkpoint)
_ARCH_ALIASES = ("qwen2moe", "qwen3moe", "gpt-oss", "t5encoder", "minimax-m2")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class UnsupportedGgufError(TypeError):
    """A GGUF file whose architecture transformers cannot load."""


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's metadata says: ``architecture`` (general.architecture), ``name`` (general.name),
    ``tensor_types`` (quantization type -> number of tensors) and ``n_tensors``."""

    path: str
    architecture: str
    name: str
    tensor_types: dict[str, int]
    n_tensors: int


def read_info(path: str | Path) -> GgufInfo:
    """Read the metadata of a GGUF file (memory-mapped: no tensor data is read)."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise UnsupportedGgufError(f"{path} is not a readable GGUF file: {e}") from None

    def field(key: str) -> str:
        f = reader.fields.get(key)
        return str(f.contents()) if f is not None else ""

    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return GgufInfo(str(path), field("general.architecture"), field("general.name"), types, len(reader.tensors))


def check_loadable(info: GgufInfo) -> None:
    """Raise UnsupportedGgufError naming the architecture when transformers has no GGUF mapping for it."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # those two are metadata groups
    if info.architecture not in supported | set(_ARCH_ALIASES):
        raise UnsupportedGgufError(
            f"{info.path}: GGUF architecture {info.architecture!r} cannot be loaded by transformers "
            f"(supported: {', '.join(sorted(supported))})")


def load_config(path: str | Path) -> Any:
    """The HF config a GGUF file describes (metadata only), after the architecture check."""
    from transformers import AutoConfig

    path = Path(path)
    check_loadable(read_info(path))
    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def convert(path: str | Path, out_dir: str | Path, *, dtype: str = "float32",
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Dequantize the GGUF at ``path`` into a safetensors model directory ``out_dir`` (weights, config, tokenizer)
    in ``dtype``. The architecture is checked first. Returns the GGUF info as a dict."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    path, out_dir = Path(path), Path(out_dir)
    info = read_info(path)
    check_loadable(info)
    progress(f"dequantizing {path.name} ({info.architecture}, {info.n_tensors} tensors: "
             f"{', '.join(f'{k} x{v}' for k, v in sorted(info.tensor_types.items()))}) to {dtype} safetensors")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=_DTYPES[dtype],
                                                 quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if getattr(model.config, "quantization_config", None) is not None:  # the weights are plain floats now
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"architecture": info.architecture, "name": info.name, "tensor_types": info.tensor_types}
