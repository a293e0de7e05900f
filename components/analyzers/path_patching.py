"""Path patching: how much of a task's logit difference flows from each sender head into chosen receivers.

Clean prompts x and corrupted prompts x' (same task, the information the model needs removed), metric
F = mean over prompts of logit(answer) - logit(distractor) at the final position. For each sender head s:

1. cache every head's output z (before the output projection) at the final position on x and on x';
2. run x with s's z replaced by its x' value and every other head frozen to its x value (MLPs recompute, or are
   frozen too with ``freeze_mlps``); record the receivers' fresh outputs (equivalently their q/k/v inputs);
3. run x again with only the receivers' outputs replaced by those recorded values and read F.

With no receivers (``receivers=none``) the receiver is the logits: F is read from step 2 (the sender's direct
path). The effect is normalised so 0 = no effect and 1 = the full corruption effect:

    effect_s = (F_patched - F_clean) / (F_corrupt - F_clean)

returned as a (layer, head) matrix (NaN for heads that cannot send to the receivers: the receivers themselves and
heads in their layer or later). Prompt sets: ``ioi`` (indirect object identification) and ``colored_objects``
generated from templates, or a JSONL/CSV/Parquet file of clean/corrupt/answer/distractor records.

Based on Merullo, Eickhoff, Pavlick, "Circuit Component Reuse Across Tasks in Transformer Language Models"
(ICLR 2024, arXiv 2310.08744), after Wang et al.'s path patching (arXiv 2211.00593). Reference code:
https://github.com/jmerullo/circuit_reuse (``patching_utils.py::path_patching``, ``patching_ioi.py``,
``patching_cobjs.py``), on TransformerLens hooks.

Deviations from the reference code: receivers are patched through their whole output at the final position (q, k
and v together; the reference can patch q, k or v alone); receiver outputs are recorded before the freeze
overwrites them (the reference's in-place z cache records the frozen value when component='z'); prompts come from
our templates over the story vocabulary instead of the paper's GPT-2 datasets, and answer and distractor are
compared at their first differing token (a shared token prefix, e.g. a lone space, is appended to the prompts);
senders in the receivers' layers or later are NaN instead of 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from components import data as data_sources
from components.analyzers import _prompts
from components.analyzers._probe import OutputProbe, mlp_hooks
from components.analyzers.base import AnalysisResult, Analyzer, layer_head_rows, ranked, top_heads
from components.attention.session import applied
from components.base import ParamError, check_range
from components.benchmarks import _scoring
from components.heads import HeadSet
from components.patches.base import model_shape
from registry import register

FIELDS = ("clean", "corrupt", "answer", "distractor")


def normalised_effect(patched: float, clean: float, corrupt: float) -> float:
    """(patched - clean) / (corrupt - clean): 0 = no effect, 1 = the whole corruption effect."""
    return (patched - clean) / (corrupt - clean)


def answer_tokens(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], int, int] | None:
    """(shared prefix, answer token, distractor token): the two continuations compared at their first differing
    token (a shared prefix such as a lone space token is appended to both prompts); None if one is a prefix of
    the other."""
    a = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
    d = tokenizer(row["distractor"], add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(a), len(d)) and a[k] == d[k]:
        k += 1
    return None if k == min(len(a), len(d)) else (a[:k], a[k], d[k])


def _left_padded(seqs: list[list[int]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)  # (B, T)
    return {"input_ids": ids, "attention_mask": mask}


class _Batch:
    """One chunk of prompts: left-padded encodings (the final position is the last column of every row), answer
    ids, and the cached final-position outputs of the clean and corrupted runs."""

    def __init__(self, tokenizer: Any, rows: list[dict[str, Any]], device: torch.device):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        plans = [answer_tokens(tokenizer, r) for r in rows]
        self.clean = _left_padded([tokenizer(r["clean"])["input_ids"] + p[0] for r, p in zip(rows, plans)], pad, device)
        self.corrupt = _left_padded([tokenizer(r["corrupt"])["input_ids"] + p[0] for r, p in zip(rows, plans)], pad,
                                    device)
        self.answers = torch.tensor([[p[1], p[2]] for p in plans], device=device)  # (B, 2)
        self.z: dict[str, dict[int, torch.Tensor]] = {"clean": {}, "corrupt": {}}  # run -> layer -> (B, H, D)
        self.mlp: dict[int, torch.Tensor] = {}  # layer -> (B, d) clean MLP output at the final position

    def logit_diff(self, logits: torch.Tensor) -> float:
        last = logits[:, -1].float()  # (B, V)
        return float((last.gather(1, self.answers[:, :1]) - last.gather(1, self.answers[:, 1:])).sum())


@register("path_patching", version="1.0.0", family="analyzer", paper="arXiv:2310.08744",
          summary="Path patching: normalised effect of each sender head on receivers (or logits), IOI / colors.")
@dataclass(frozen=True)
class PathPatching(Analyzer):
    """Path patching from every sender head to receiver heads (or the logits).

    Parameters
    ----------
    prompts : str
        ``ioi``, ``colored_objects``, or a file of clean/corrupt/answer/distractor records. Default ``ioi``.
    n_prompts : int
        Prompt pairs generated (or read). Default 25.
    receivers : HeadSet
        Receiver heads; ``none`` = the logits (direct effect). Default ``none``.
    freeze_mlps : bool
        Freeze MLP outputs at the final position to the clean run too. Default False.
    batch_size : int
        Prompts per forward. Default 25.
    seed : int
        Seed of the generated prompts. Default 0.
    """

    prompts: str = "ioi"
    n_prompts: int = 25
    receivers: HeadSet = HeadSet.none()
    freeze_mlps: bool = False
    batch_size: int = 25
    seed: int = 0

    primary_array: ClassVar[str] = "effect"
    example: ClassVar[dict[str, str]] = {"n_prompts": "4", "receivers": "1:0"}

    def __post_init__(self) -> None:
        check_range("path_patching.n_prompts", self.n_prompts, 1)
        check_range("path_patching.batch_size", self.batch_size, 1)
        if not self.prompts.strip():
            raise ParamError("path_patching.prompts: give ioi, colored_objects or a file")

    def build(self) -> list[dict[str, Any]]:
        if self.prompts in _prompts.PROMPT_SETS:
            return _prompts.prompt_pairs(self.prompts, self.n_prompts, self.seed)
        rows = data_sources.read_records(self.prompts, limit=self.n_prompts)
        for i, r in enumerate(rows):
            missing = [k for k in FIELDS if not r.get(k)]
            if missing:
                raise data_sources.DataSourceError(f"path_patching: {self.prompts!r} record {i} lacks "
                                                   f"{', '.join(missing)}")
        return [{k: str(r[k]) for k in FIELDS} for r in rows]

    def data_fingerprint(self) -> str:
        return "" if self.prompts in _prompts.PROMPT_SETS else data_sources.fingerprint(self.prompts)

    def check_model(self, config: Any) -> None:
        super().check_model(config)
        n_layers, n_heads = model_shape(config)
        if self.receivers and min(layer for layer, _ in self.receivers.expand(n_layers, n_heads)) == 0:
            raise ParamError("path_patching.receivers: heads in layer 0 have no sender heads before them")

    # -- runs -------------------------------------------------------------------------------------------------------
    def _run(self, model, enc, fn, mlp_fn=None) -> torch.Tensor:
        """One forward with the head-output probe (and MLP hook); returns logits."""
        with applied(model, OutputProbe(fn=fn)):
            if mlp_fn is None:
                return model(**enc).logits
            with mlp_hooks(model, mlp_fn):
                return model(**enc).logits

    def _cache(self, model, batch: _Batch) -> tuple[float, float]:
        def record(run):
            def fn(call, out):
                batch.z[run][call.layer] = out[:, :, -1].clone()  # (B, H, D) final position
                return out
            return fn

        def record_mlp(layer, out):
            batch.mlp[layer] = out[:, -1].clone()  # (B, d)
            return out

        mlp = record_mlp if self.freeze_mlps else None
        clean = batch.logit_diff(self._run(model, batch.clean, record("clean"), mlp))
        corrupt = batch.logit_diff(self._run(model, batch.corrupt, record("corrupt")))
        return clean, corrupt

    def _patched(self, model, batch: _Batch, sender: tuple[int, int], receivers: list[tuple[int, int]]) -> float:
        """Steps 2 and 3 for one sender: the summed logit difference of the chunk."""
        fresh: dict[int, torch.Tensor] = {}

        def freeze(call, out):
            out = out.clone()
            mine = [h for layer, h in receivers if layer == call.layer]
            if mine:
                fresh[call.layer] = out[:, :, -1].clone()  # receivers' outputs from the patched stream
            out[:, :, -1] = batch.z["clean"][call.layer]
            if call.layer == sender[0]:
                out[:, sender[1], -1] = batch.z["corrupt"][call.layer][:, sender[1]]
            return out

        def freeze_mlp(layer, out):
            out = out.clone()
            out[:, -1] = batch.mlp[layer]
            return out

        logits = self._run(model, batch.clean, freeze, freeze_mlp if self.freeze_mlps else None)
        if not receivers:
            return batch.logit_diff(logits)

        def patch_receivers(call, out):
            mine = [h for layer, h in receivers if layer == call.layer]
            if not mine:
                return out
            out = out.clone()
            out[:, mine, -1] = fresh[call.layer][:, mine]
            return out

        return batch.logit_diff(self._run(model, batch.clean, patch_receivers))

    @torch.no_grad()
    def analyze(self, model, tokenizer, rows, *, progress=False) -> AnalysisResult:
        n_layers, n_heads = model_shape(model.config)
        device = next(model.parameters()).device
        receivers = self.receivers.expand(n_layers, n_heads)
        last_layer = min((layer for layer, _ in receivers), default=n_layers)
        senders = [(layer, h) for layer in range(last_layer) for h in range(n_heads)]
        usable = [r for r in rows if answer_tokens(tokenizer, r) is not None]
        if not usable:
            raise ValueError("path_patching: in every prompt the answer's tokens are a prefix of the distractor's "
                             "or the reverse; no logit difference can be measured")
        batches = [_Batch(tokenizer, list(chunk), device) for chunk in _scoring.batches(usable, self.batch_size)]
        n = len(usable)
        runs = [self._cache(model, b) for b in batches]
        clean, corrupt = sum(r[0] for r in runs) / n, sum(r[1] for r in runs) / n
        if math.isclose(clean, corrupt, abs_tol=1e-6):
            raise ValueError(f"path_patching: the clean and corrupted prompts give the same logit difference "
                             f"({clean:.4g}); the normalised effect is undefined for this model and prompt set")
        patched = np.full((n_layers, n_heads), np.nan)
        bar = _scoring._progress(len(senders), "path_patching", progress)
        for sender in senders:
            patched[sender] = sum(self._patched(model, b, sender, receivers) for b in batches) / n
            bar.update(1)
        bar.close()
        effect = (patched - clean) / (corrupt - clean)  # (L, H), NaN where not a sender
        table = ranked([r for r in layer_head_rows({"effect": effect, "patched_logit_diff": patched})
                        if not math.isnan(r["effect"])], "effect")
        finite = np.nan_to_num(np.abs(effect), nan=-1.0)
        return AnalysisResult(
            arrays={"effect": effect, "patched_logit_diff": patched},
            tables={"heads": table},
            metrics={"clean_logit_diff": clean, "corrupt_logit_diff": corrupt, "n_prompts": float(n),
                     "n_dropped": float(len(rows) - n),
                     "max_abs_effect": float(np.nanmax(np.abs(effect)))},
            heads={"top_senders": top_heads(finite, min(10, len(senders)))},
            figures={"effect": ("layer_head", "effect")},
        )
