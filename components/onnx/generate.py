"""Run an exported model with ONNX Runtime: sessions with an honest provider report, and text generation.

``OnnxCausalLM(dir)`` opens ``model.onnx`` (prefill) and, when present, ``decode.onnx`` (one step against the KV
cache). ``generate`` decodes greedily or by sampling (temperature, top-k) with the cache; without a decode graph
it re-runs the prefill graph on the growing sequence (same tokens, slower). Greedy decoding gives the same tokens
as ``model.generate(do_sample=False)`` on the patched PyTorch model (positions follow the same convention).

Providers: ``cpu`` or ``cuda``. The CUDA provider of onnxruntime-gpu needs the CUDA 13 / cuDNN 9 runtime; when it
cannot load, ONNX Runtime silently runs on the CPU. What runs is read from ``session.get_providers()`` (never from
``get_available_providers()``, which lists what was compiled in) and reported in ``ProviderReport.message``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@dataclass(frozen=True)
class ProviderReport:
    """Which execution provider was asked for and which one actually runs the graph."""

    requested: str
    active: tuple[str, ...]

    @property
    def fell_back(self) -> bool:
        return PROVIDERS[self.requested][0] not in self.active

    @property
    def message(self) -> str:
        if not self.fell_back:
            return f"ONNX Runtime is running on {self.active[0]}"
        return (f"{PROVIDERS[self.requested][0]} was requested but is not active: ONNX Runtime fell back to "
                f"{', '.join(self.active)} (onnxruntime-gpu needs an NVIDIA GPU with the CUDA 13 and cuDNN 9 "
                "runtime libraries)")


def open_session(path: str | Path, provider: str = "cpu", threads: int | None = None) -> tuple[Any, ProviderReport]:
    """An ``InferenceSession`` on ``provider`` ("cpu" or "cuda") and the report of what actually runs."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ValueError(f"provider {provider!r} is not one of {', '.join(PROVIDERS)}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    wanted = [p for p in PROVIDERS[provider] if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=wanted)
    return session, ProviderReport(provider, tuple(session.get_providers()))


class OnnxCausalLM:
    """An exported attnflow model directory run by ONNX Runtime."""

    def __init__(self, onnx_dir: str | Path, provider: str = "cpu", threads: int | None = None):
        from components.onnx.export import DECODE_FILE, PREFILL_FILE

        self.dir = Path(onnx_dir)
        if not (self.dir / PREFILL_FILE).is_file():
            raise FileNotFoundError(f"{str(self.dir)!r} holds no {PREFILL_FILE}: not an `attnflow export-onnx` "
                                    "directory")
        manifest = self.dir / "manifest.json"
        self.manifest: dict[str, Any] = json.loads(manifest.read_text()) if manifest.is_file() else {}
        self.prefill_session, self.provider = open_session(self.dir / PREFILL_FILE, provider, threads)
        self.decode_session = None
        if (self.dir / DECODE_FILE).is_file():
            self.decode_session, _ = open_session(self.dir / DECODE_FILE, provider, threads)
        self.present = [o.name for o in self.prefill_session.get_outputs()][1:]

    @property
    def has_kv_cache(self) -> bool:
        return self.decode_session is not None

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (B, T, V) and the KV cache of the prompt."""
        out = self.prefill_session.run(None, {"input_ids": input_ids.astype(np.int64),
                                              "attention_mask": attention_mask.astype(np.int64)})
        return out[0], out[1:]

    def decode(self, input_ids: np.ndarray, attention_mask: np.ndarray,
               past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (B, 1, V) of the new tokens and the grown cache; ``attention_mask`` covers past + new."""
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        feed.update({name.replace("present", "past"): t for name, t in zip(self.present, past)})
        out = self.decode_session.run(None, feed)
        return out[0], out[1:]

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, *,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None) -> np.ndarray:
        """Prompt + generated tokens (B, T + n); finished rows are padded with ``pad_token_id`` like ``generate``."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or [])
        pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
        rng = np.random.default_rng(seed)
        done = np.zeros(ids.shape[0], dtype=bool)
        logits, past = self.prefill(ids, mask)
        for step in range(max_new_tokens):
            token = pick(logits[:, -1], do_sample, temperature, top_k, rng)  # (B,)
            token = np.where(done, pad, token)
            ids = np.concatenate([ids, token[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones_like(token)[:, None]], axis=1)
            done |= np.isin(token, list(eos))
            if done.all() or step == max_new_tokens - 1:
                break
            if self.has_kv_cache:
                logits, past = self.decode(token[:, None], mask, past)
            else:
                logits, _ = self.prefill(ids, mask)
        return ids


def pick(logits: np.ndarray, do_sample: bool, temperature: float, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """Next token per row from (B, V) logits: argmax, or a sample at ``temperature`` among the ``top_k`` best."""
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 when sampling")
    scores = logits.astype(np.float64) / temperature  # (B, V)
    if 0 < top_k < scores.shape[-1]:
        kth = np.partition(scores, -top_k, axis=-1)[:, -top_k][:, None]  # (B, 1)
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[0], p=p) for p in probs], dtype=np.int64)
