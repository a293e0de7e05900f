"""Parity of an exported graph with the patched PyTorch model it came from, gated against float32's own error.

A fixed absolute threshold cannot fit every model: float32 rounding error grows with depth, width, sequence length
and the scale of the logits (measured: 1e-6 on a 2-layer toy, 1e-4 on a 30-layer 135M model). The gate therefore
compares the exported graph's error with the error PyTorch itself makes in float32 on the same inputs:

- ``err``   = max |ORT - torch32| (what users see: the graph against the patched model as they run it);
- ``floor`` = max |torch32 - torch64| (the same patched model computed in float64: the float32 rounding error of a
  correct implementation, which grows with depth, length and logit scale exactly as the export's error does);
- ``ratio`` = err / floor; the gate passes when every ratio <= ``multiple`` (``DEFAULT_MULTIPLE``).

Why a ratio is depth-independent: both implementations round each op to float32 and the rounding errors propagate
through the same network Jacobian, so both grow the same way with depth and length. If ORT were exactly as accurate
as PyTorch the ratio would be about sqrt(2) (two independent errors of the same size) and at most 2. How much
larger it gets on correct exports (fused kernels with other summation orders and fast exp/rsqrt) was measured on
models other than the ones the gate is used for (docs/onnx.md, "The parity gate"); the multiple is a stated margin
over that. A dropped head or a wrong bias gives ratios of 10^3 and more.

Compared quantities, per case (a fixed and a random input at each length, batch >= 2, the random one with a
left-padded row): ``logits`` of the prefill graph over real tokens, ``present`` (the KV cache at real positions)
and ``decode`` (one step from each side's own cache) when the directory has a decode graph. ``logit_std`` records
the scale of the reference logits and ``rel_logits`` = err / logit_std, for reading.

Token agreement (``tokens``): real text (``text_ids``, e.g. ``REAL_TEXT`` tokenized), prefilled, then ``steps``
decode steps teacher-forced on PyTorch's greedy tokens, each side from its own cache. Per step: the same argmax,
the same top-5 set; the step's logits also enter the ratio gate (``text_decode``). A differing token passes only
as a near tie: its reference logit is within 2 x the allowed error (``multiple`` x that step's float32 floor) of the
token it replaced (at the top-1 or the 5th place). Greedy agreement and top-5 agreement are reported raw as well.

The reference is the patched model as users run it (``with patched(model, patches)``: ``applied``, the dispatcher's
default fast path), not the traced form. Any NaN fails.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from components.onnx.export import DECODE_FILE, DecodeGraph, PrefillGraph, patched, text_config
from components.onnx.generate import OnnxCausalLM

DEFAULT_MULTIPLE = 12.0  # 4 x the largest ratio (2.94) on correct calibration exports: docs/onnx.md "The parity gate"
TOP_K = 5
REAL_TEXT = ("The river was quiet in the early morning, and the old fisherman pushed his boat into the water. He "
             "had fished there for forty years, and he knew every stone and every bend of the bank.")


@dataclass(frozen=True)
class ParityCase:
    name: str
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)


def parity_cases(vocab_size: int, lengths: Sequence[int], batch: int = 2, seed: int = 0,
                 fixed_ids: Sequence[int] | None = None) -> list[ParityCase]:
    """A fixed and a random case per length; the random one left-pads its last row by a quarter of the length."""
    if batch < 2:
        raise ValueError(f"parity batch={batch}: use >= 2 (a batch of 1 would not exercise the dynamic batch axis)")
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(list(fixed_ids) if fixed_ids else [(7 * i + 3) % vocab_size for i in range(64)])
    cases = []
    for length in lengths:
        if length < 2:
            raise ValueError(f"parity length {length} must be >= 2")
        reps = -(-length // len(base))
        fixed = base.repeat(reps)[:length].clamp(0, vocab_size - 1)
        ids = torch.stack([fixed.roll(-b) for b in range(batch)])  # (B, T)
        cases.append(ParityCase(f"fixed_T{length}", ids, torch.ones_like(ids)))
        ids = torch.randint(0, vocab_size, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        mask[-1, : max(1, length // 4)] = 0
        cases.append(ParityCase(f"random_T{length}_leftpad", ids, mask))
    return cases


def _max_diff(a: Any, b: Any, where: np.ndarray | None = None) -> float:
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    if where is not None:
        d = d[np.broadcast_to(where, d.shape)]
    return float(d.max()) if d.size else 0.0  # NaN propagates and fails the gate


def _worst(values: list[float]) -> float:
    return float(np.max(np.asarray(values, dtype=np.float64)))  # NaN-propagating, unlike max()


def _ratio(err: float, floor: float) -> float:
    # a floor of exactly 0 (both float32 and float64 exact) allows only an exact match
    return err / floor if floor > 0 else (0.0 if err == 0 else float("inf"))


def _float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model``. A model with an attnflow attention kernel is rebuilt and its kernel installed
    afresh: its hooks close over the original's per-layer state, which a deep copy would share."""
    kernel = getattr(model, "_attnflow_kernel", None)
    if kernel is None:
        return copy.deepcopy(model).double()
    from transformers import AutoModelForCausalLM

    from components.kernels.base import QK_NORM_KEY, install

    twin = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), attn_implementation="sdpa",
                                            dtype=torch.float64)
    install(twin, kernel, bool(getattr(model.config, QK_NORM_KEY, False)))
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.double().eval()


class _Reference:
    """The patched model in float32 (as users run it) and a float64 copy of it (the floor)."""

    def __init__(self, model: torch.nn.Module, patches: Sequence[Any]):
        self.model, self.patches = model, patches
        self.model64 = _float64_copy(model)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[tuple, tuple]:
        out = []
        for m in (self.model, self.model64):
            with patched(m, self.patches):
                out.append(PrefillGraph(m)(ids, mask))
        return out[0], out[1]

    def decode(self, ids: torch.Tensor, mask: torch.Tensor, past32: list, past64: list) -> tuple[tuple, tuple]:
        out = []
        for m, past in ((self.model, past32), (self.model64, past64)):
            with patched(m, self.patches):
                out.append(DecodeGraph(m)(ids, mask, past))
        return out[0], out[1]


def _entry(err: float, floor: float) -> dict[str, float]:
    return {"err": err, "floor": floor, "ratio": _ratio(err, floor)}


def _top(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits.astype(np.float64), kind="stable")[:k]


def token_agreement(runner: OnnxCausalLM, ref: _Reference, text_ids: Sequence[int], steps: int,
                    multiple: float) -> dict[str, Any]:
    """Teacher-forced greedy decoding of ``steps`` tokens after ``text_ids``: argmax and top-5 per step."""
    ids = torch.tensor([list(text_ids)])  # (1, T)
    mask = torch.ones_like(ids)
    r32, r64 = ref.prefill(ids, mask)
    got, got_past = runner.prefill(ids.numpy(), mask.numpy())
    past32, past64 = list(r32[1:]), list(r64[1:])
    want, want64, have = r32[0][0, -1].numpy(), r64[0][0, -1].numpy(), got[0, -1]  # (V,)
    k = min(TOP_K, want.shape[-1])
    steps_out, errs, floors = [], [], []
    for step in range(steps + 1):
        err, floor = _max_diff(have, want), _max_diff(want, want64)
        allowed = 2 * multiple * floor  # two logits, each within multiple x floor of the reference
        top_ref, top_got = _top(want, k), _top(have, k)
        same1 = bool(top_got[0] == top_ref[0])
        same5 = set(top_ref.tolist()) == set(top_got.tolist())
        tie1 = same1 or float(want[top_ref[0]] - want[top_got[0]]) <= allowed
        tie5 = same5 or float(want[top_ref[-1]] - want[top_got].min()) <= allowed
        steps_out.append({"top1": same1, "top5": same5, "top1_ok": tie1, "top5_ok": tie5})
        if step > 0:  # the prefill's last position is the first prediction; later ones come from decode steps
            errs.append(err)
            floors.append(floor)
        if step == steps:
            break
        token = torch.tensor([[int(top_ref[0])]])  # PyTorch's greedy token, fed to both sides
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        (s32, s64) = ref.decode(token, mask, past32, past64)
        got, got_past = runner.decode(token.numpy(), mask.numpy(), got_past)
        past32, past64 = list(s32[1:]), list(s64[1:])
        want, want64, have = s32[0][0, -1].numpy(), s64[0][0, -1].numpy(), got[0, -1]
    n = len(steps_out)
    ratios = [_ratio(e, f) for e, f in zip(errs, floors)]
    return {"text_tokens": len(text_ids), "steps": steps, "predictions": n,
            "greedy_agreement": sum(s["top1"] for s in steps_out) / n,
            "top5_agreement": sum(s["top5"] for s in steps_out) / n,
            "agreement_ok": all(s["top1_ok"] and s["top5_ok"] for s in steps_out),
            "text_decode": {"err": _worst(errs) if errs else 0.0, "floor": _worst(floors) if floors else 0.0,
                            "ratio": _worst(ratios) if ratios else 0.0}}


@torch.no_grad()
def check_parity(model: torch.nn.Module, patches: Sequence[Any], onnx_dir: str | Path, *,
                 lengths: Sequence[int] = (16, 48), batch: int = 2, multiple: float = DEFAULT_MULTIPLE,
                 seed: int = 0, fixed_ids: Sequence[int] | None = None, text_ids: Sequence[int] | None = None,
                 steps: int = 16) -> dict[str, Any]:
    """Compare the ONNX graphs in ``onnx_dir`` (CPU provider) with ``model`` under ``patches``.

    ``text_ids``: real text for the token-agreement check (default ``fixed_ids``, else the fixed pattern), decoded
    ``steps`` steps when the directory has a decode graph."""
    if not multiple > 0:
        raise ValueError(f"parity multiple {multiple!r} must be > 0")
    runner = OnnxCausalLM(onnx_dir, provider="cpu")
    decode = (Path(onnx_dir) / DECODE_FILE).is_file()
    vocab = int(text_config(model.config).vocab_size)
    ref = _Reference(model, patches)
    results = []
    for case in parity_cases(vocab, lengths, batch, seed, fixed_ids):
        ids, mask = case.input_ids, case.attention_mask
        real = mask.bool().numpy()  # (B, T)
        r32, r64 = ref.prefill(ids, mask)
        got_logits, got_past = runner.prefill(ids.numpy(), mask.numpy())
        logits32 = r32[0].numpy()
        kv = real[:, None, :, None]
        row = {"case": case.name, "batch": int(ids.shape[0]), "length": int(ids.shape[1]),
               "padded": bool((~real).any()),
               "logits": _entry(_max_diff(got_logits, logits32, real[:, :, None]),
                                _max_diff(logits32, r64[0].numpy(), real[:, :, None])),
               "present": _entry(_worst([_max_diff(g, r.numpy(), kv) for g, r in zip(got_past, r32[1:])]),
                                 _worst([_max_diff(a.numpy(), b.numpy(), kv) for a, b in zip(r32[1:], r64[1:])]))}
        row["logit_std"] = float(logits32[real].std())
        row["rel_logits"] = row["logits"]["err"] / row["logit_std"] if row["logit_std"] > 0 else float("inf")
        if decode:
            step = torch.randint(0, vocab, (ids.shape[0], 1), generator=torch.Generator().manual_seed(seed + 1))
            step_mask = torch.cat([mask, torch.ones_like(step)], dim=1)  # (B, T + 1)
            s32, s64 = ref.decode(step, step_mask, list(r32[1:]), list(r64[1:]))
            got_step, _ = runner.decode(step.numpy(), step_mask.numpy(), got_past)
            row["decode"] = _entry(_max_diff(got_step, s32[0].numpy()), _max_diff(s32[0].numpy(), s64[0].numpy()))
        results.append(row)
    keys = ["logits", "present"] + (["decode"] if decode else [])
    worst = {k: {f: _worst([r[k][f] for r in results]) for f in ("err", "floor", "ratio")} for k in keys}
    tokens = None
    if decode:
        text = list(text_ids or fixed_ids or [(7 * i + 3) % vocab for i in range(32)])
        tokens = token_agreement(runner, ref, text, steps, multiple)
        worst["text_decode"] = tokens["text_decode"]
    ratio = _worst([w["ratio"] for w in worst.values()])
    passed = bool(np.isfinite(ratio) and ratio <= multiple and (tokens is None or tokens["agreement_ok"]))
    return {"passed": passed, "gate": "err / float32 floor <= multiple, tokens agree (near ties excepted)",
            "multiple": multiple, "max_ratio": ratio, "max_abs_diff": _worst([w["err"] for w in worst.values()]),
            "max_rel_logits": _worst([r["rel_logits"] for r in results]), "worst": worst, "tokens": tokens,
            "cases": results, "provider": runner.provider.active[0], "lengths": list(lengths), "batch": batch}
