"""Export a causal LM, with attention patches applied, to ONNX graphs with a KV cache.

Two graphs, both traced by ``torch.onnx.export(..., dynamo=True)`` (the TorchScript exporter fails on transformers
5.x models) with dynamic batch and sequence axes:

- ``model.onnx`` (prefill): ``input_ids``, ``attention_mask`` (B, T) -> ``logits`` (B, T, V) and
  ``present.{i}.key`` / ``present.{i}.value`` (B, Hkv, T, D), the prompt's KV cache.
- ``decode.onnx`` (one step): ``input_ids`` (B, 1), ``attention_mask`` (B, past + 1), ``past.{i}.key/value``
  (B, Hkv, past, D) -> ``logits`` (B, 1, V) and the updated ``present.*``.

Positions follow ``generate``'s convention (``cumsum(attention_mask) - 1``, pads at 1), computed inside the graph,
so left-padded batches decode exactly as ``model.generate`` does. The patches run inside the trace
(``with applied(model, *patches, force=form)``): the dispatcher sees ``exporting()`` and keeps to standard ops;
``form="bias"`` folds key biases into an additive attention mask, which ONNX Runtime fuses into
``GroupQueryAttention`` (the extra-channel form does not fuse). The 2-D ``attention_mask`` is an explicit graph
input, so patches that read it (ZeroTuning's first real token) follow the padding at run time.

Models trained with a non-softmax attention kernel (``components/kernels``: sigmoid, lightning, moh) export with
the ``baseline`` component only: ``patched`` then leaves the model as it is (its kernel is traced as written) instead
of entering ``applied``, which refuses such models; any other component is refused, naming the kernel.

The example batch is 2: exporting with a batch of 1 specialises the batch axis to 1 (STACK.md 6.1).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from components.attention.session import UnsupportedModelError, applied
from components.patches.baseline import Baseline

Form = Literal["bias", "channels"]
FORMS: tuple[str, ...] = ("bias", "channels")
PREFILL_FILE = "model.onnx"
DECODE_FILE = "decode.onnx"
EXAMPLE_BATCH = 2
EXAMPLE_LEN = 11  # prime, unlike every static dimension of a model, so no axis is mistaken for another
EXAMPLE_PAST = 13


class NotExportableError(ValueError):
    """A component that declares ``onnx_exportable = False``; the message says why."""


def check_exportable(patches: Sequence[Any]) -> None:
    """Refuse components that cannot be exported, before any work, naming the component and the reason: those
    declaring ``onnx_exportable = False``, those that must be fitted first (``needs_fit``) and those that read
    per-batch inputs (``needs_inputs``). Capability attributes only, never component names."""
    for p in patches:
        cls = type(p)
        if not getattr(cls, "onnx_exportable", False):
            reason = getattr(cls, "onnx_reason", "") or (
                "it declares onnx_exportable = False (its attention edit has no form in standard ONNX ops)"
            )
            raise NotExportableError(f"component {p.ref} cannot be exported to ONNX: {reason}")
        if getattr(cls, "needs_fit", False):
            raise NotExportableError(
                f"component {p.ref} cannot be exported to ONNX: it must be fitted on a benchmark's train split "
                "(needs_fit) and its fitted state is not a parameter of the spec, so an export could neither "
                "fit it nor reproduce it; export a component whose parameters define it (e.g. zerotuning, head_mask)")
        if getattr(cls, "needs_inputs", False):
            raise NotExportableError(
                f"component {p.ref} cannot be exported to ONNX: it reads per-batch inputs (session.set_inputs: "
                "texts, spans) that the exported graph has no input for; the trace would bake in one example's"
            )


def patched(model: torch.nn.Module, patches: Sequence[Any], force: Form | None = None) -> AbstractContextManager:
    """``applied(model, *patches, force=force)``; for a model with a non-softmax attention kernel (which patches
    cannot edit) the model as it is when every patch is the no-op ``baseline``, else UnsupportedModelError."""
    kernel = getattr(model, "attnflow_unpatchable", None)  # set by components.kernels.base.install
    if not kernel:
        return applied(model, *patches, force=force)
    edits = [p.ref for p in patches if not isinstance(p, Baseline)]
    if edits:
        raise UnsupportedModelError(
            f"{type(model).__name__} uses the attention kernel {kernel}: attnflow patches edit softmax attention and "
            f"cannot apply {', '.join(edits)} to it; export it with the component 'baseline' (the default)")
    return nullcontext()


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def n_layers(config: Any) -> int:
    cfg = text_config(config)
    return int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))


def max_positions(config: Any) -> int:
    cfg = text_config(config)
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 4096)


def past_names(layers: int) -> list[str]:
    return [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def position_ids(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Positions of the last ``q_len`` tokens as ``generate`` computes them: cumsum of the mask - 1, pads at 1."""
    pos = attention_mask.long().cumsum(-1) - 1  # (B, S)
    return pos.masked_fill(attention_mask == 0, 1)[:, -q_len:]  # (B, q)


def _flat_cache(cache: Any) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]  # 2L x (B, Hkv, S, D)


class PrefillGraph(torch.nn.Module):
    """(input_ids, attention_mask) -> (logits, *present): the prompt forward with its KV cache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids(attention_mask, input_ids.shape[1]), use_cache=True)
        return (out.logits, *_flat_cache(out.cache))  # (B, T, V), 2L x (B, Hkv, T, D)


class DecodeGraph(torch.nn.Module):
    """(input_ids, attention_mask, past) -> (logits, *present): new tokens against a KV cache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.layers = n_layers(model.config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                past: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                         position_ids=position_ids(attention_mask, input_ids.shape[1]), use_cache=True)
        return (out.logits, *_flat_cache(out.cache))  # (B, q, V), 2L x (B, Hkv, past + q, D)


@dataclass
class GraphInfo:
    """What one export produced."""

    kind: str  # "prefill" | "decode"
    file: str
    seconds: float
    opset: int


def _example(model: torch.nn.Module, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = int(text_config(model.config).vocab_size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, :2] = 0  # a left-padded row, so the mask is traced as data, not assumed all ones
    return ids, mask


def export_graphs(model: torch.nn.Module, patches: Sequence[Any], out_dir: str | Path, *, kv_cache: bool = True,
                  form: Form = "bias", opset: int | None = None) -> list[GraphInfo]:
    """Export the prefill graph (and the decode graph with ``kv_cache``) of ``model`` with ``patches`` applied."""
    check_exportable(patches)
    if form not in FORMS:
        raise ValueError(f"attention form {form!r} is not one of {', '.join(FORMS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = n_layers(model.config)
    limit = max_positions(model.config)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=limit)
    ids, mask = _example(model, EXAMPLE_BATCH, EXAMPLE_LEN)
    infos = []
    with torch.no_grad(), patched(model, patches, force=form):
        start = time.perf_counter()
        program = torch.onnx.export(
            PrefillGraph(model).eval(), (ids, mask), dynamo=True, opset_version=opset,
            input_names=["input_ids", "attention_mask"], output_names=["logits", *present_names(layers)],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
        )
        save_model(program.model, out_dir / PREFILL_FILE)
        infos.append(GraphInfo("prefill", PREFILL_FILE, time.perf_counter() - start, _opset(program.model)))
        if kv_cache:
            start = time.perf_counter()
            past = list(PrefillGraph(model)(*_example(model, EXAMPLE_BATCH, EXAMPLE_PAST, seed=1))[1:])
            step_ids, _ = _example(model, EXAMPLE_BATCH, 1, seed=2)
            step_mask = torch.ones(EXAMPLE_BATCH, EXAMPLE_PAST + 1, dtype=torch.long)
            step_mask[-1, :2] = 0
            total = torch.export.Dim("total", min=2, max=limit)
            past_len = torch.export.Dim("past", min=1, max=limit)
            program = torch.onnx.export(
                DecodeGraph(model).eval(), (step_ids, step_mask, past), dynamo=True, opset_version=opset,
                input_names=["input_ids", "attention_mask", *past_names(layers)],
                output_names=["logits", *present_names(layers)],
                dynamic_shapes=({0: batch}, {0: batch, 1: total}, [{0: batch, 2: past_len} for _ in past]),
            )
            save_model(program.model, out_dir / DECODE_FILE)
            infos.append(GraphInfo("decode", DECODE_FILE, time.perf_counter() - start, _opset(program.model)))
    return infos


def _opset(model: Any) -> int:
    return int(model.opset_imports.get("", 0))


def save_model(model: Any, path: str | Path) -> None:
    """Save an ``onnx_ir`` model with its weights in ``<file>.data`` beside it (no 2 GB protobuf limit)."""
    import onnx_ir as ir

    path = Path(path)
    ir.save(model, str(path), external_data=f"{path.name}.data")
