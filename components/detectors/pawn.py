"""PAWN: Perplexity Attention Weighted Network, a small head over a frozen LM's per-token features.

Per token i (predicting token i+1) the frozen backbone gives 5 next-token metrics m_i (entropy, max log-prob,
log-prob of the observed token, rank quantile, top-p mass; :mod:`components.detectors._features`) and last-layer
hidden states h_i. Metrics are embedded, hidden states only decide *how much* each token counts:

    F_i = metrics_mlp(m_i)                                  5 -> F (256)
    g_i = gate_mlp([h_i ; h_{i+1} ; i / max_len])           2H+1 -> G (256), G divides F, gates tiled F/G times
    g_i = NEG for padding (and for 15% of tokens, dropped at random, while training)
    w   = softmax_i(g) per gate;   z = sum_i w_i * F_i;   logit = aggregate_mlp(z)    F -> 1

Because the weights of each gate sum to 1, anything in F_i that does not depend on the metrics (e.g. a bias)
passes through unchanged: hidden states re-weight tokens but cannot inject content. Every MLP has ``layers``
hidden layers of width F: Linear, then (layers-1) x [GELU -> Linear, + residual, bias-free LayerNorm], then
GELU -> Linear. Training: BCE with logits, label smoothing y' = y(1-eps) + eps/2, ``pos_weight`` for class
imbalance, AdamW, gradient clipping, cosine decay without warm-up, early stopping on validation AUROC.
Positive class (label 1) = machine-generated.

Defaults: F = G = 256, 3 layers, token dropout 0.15, label smoothing 0.2, AdamW lr 1e-3 wd 0.01, clip 1.0,
batch 128, 5 epochs; about 1M parameters with a GPT-2 backbone (H = 768).

Based on Miralles-Gonzalez et al., "Not all tokens are created equal: Perplexity Attention Weighted Networks for
AI generated text detection" (arXiv 2501.03940). Reference code: the official ``src/models/llm_metrics_mlp.py``
(``LLMMetricsMLP``) and ``src/models/utils/mlp.py``, as ported in https://github.com/eptitsyn/shiny-fortnight
(``pawn/model.py``, ``train.py``, ``extract_features.py``).

Deviations from the reference code: padding and dropped tokens get a large finite negative gate logit
(NEG = -1e4) instead of -inf, so a fully padded row (and the exported ONNX graph) yields finite numbers; with at
least one real token the result is identical (exp(-1e4 - g) underflows to exactly 0 in float32). Token dropout
keeps a row's tokens when the random draw would drop all of them (the reference redraws the whole batch).
``pos_weight=0`` means "n_human / n_machine of the training split". Metrics are cached in float32 (the port
stores float16). Training batches group texts of similar length to cut padding (shuffled between epochs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.base import ParamError, check_range
from components.detectors.base import METRICS, Detector, DetectorState, FeatureSet, auroc
from registry import register

NEG = -1e4  # gate logit of padding / dropped tokens (finite, see Deviations)


class MLP(nn.Module):
    """Linear(in -> w); (layers - 1) x [x = LN(Linear(GELU(x)) + x)]; Linear(GELU(x)) -> out."""

    def __init__(self, d_in: int, width: int, d_out: int, layers: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(layers - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(width, bias=False) for _ in range(layers - 1))
        self.out = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for lin, norm in zip(self.hidden, self.norms):
            x = norm(lin(F.gelu(x)) + x)
        return self.out(F.gelu(x))


class PAWNHead(nn.Module):
    """The PAWN head: (hs (B, T, H), metrics (B, T, 5), mask (B, T)) -> logit (B,). Row T-1 of metrics is unused
    (the last token predicts nothing); mask is 1 for real tokens, right padding."""

    def __init__(self, hidden_size: int, features: int = 256, gates: int = 256, layers: int = 3,
                 max_len: int = 512, token_dropout: float = 0.0) -> None:
        super().__init__()
        self.features, self.gates, self.max_len, self.token_dropout = features, gates, max_len, token_dropout
        self.metrics_mlp = MLP(len(METRICS), features, features, layers)
        self.gate_mlp = MLP(2 * hidden_size + 1, features, gates, layers)
        self.aggregate_mlp = MLP(features, features, 1, layers)

    def forward(self, hs: torch.Tensor, metrics: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T1 = hs.shape[0], hs.shape[1] - 1
        valid = mask[:, 1:] > 0  # (B, T-1): token i+1 is real, so position i is scored
        pos = (torch.arange(T1, device=hs.device, dtype=hs.dtype) / self.max_len).view(1, T1, 1).expand(B, T1, 1)
        g = self.gate_mlp(torch.cat([hs[:, :-1], hs[:, 1:], pos], dim=-1))  # (B, T-1, G)
        if self.training and self.token_dropout > 0:
            valid = self._drop(valid)
        g = g.masked_fill(~valid.unsqueeze(-1), NEG)  # (B, T-1, G)
        if self.gates < self.features:
            g = g.repeat(1, 1, self.features // self.gates)  # (B, T-1, F): gates tiled as in the reference
        w = torch.softmax(g, dim=1)  # (B, T-1, F), per gate over tokens
        z = (w * self.metrics_mlp(metrics[:, :-1])).sum(dim=1)  # (B, F)
        return self.aggregate_mlp(z).squeeze(-1)  # (B,)

    def _drop(self, valid: torch.Tensor) -> torch.Tensor:
        keep = valid & (torch.rand(valid.shape, device=valid.device) >= self.token_dropout)  # (B, T-1)
        empty = ~keep.any(dim=1, keepdim=True)  # rows that would lose every token keep them all
        return torch.where(empty, valid, keep)


def collate(feats: FeatureSet, index: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded float32 batch: hs (B, T, H), metrics (B, T, 5), mask (B, T)."""
    lens = [int(feats.n_tokens[i]) for i in index]
    T, H = max(lens), feats.hidden_size
    hs = torch.zeros(len(index), T, H)  # (B, T, H)
    metrics = torch.zeros(len(index), T, len(METRICS))  # (B, T, 5)
    mask = torch.zeros(len(index), T)  # (B, T)
    for r, i in enumerate(index):
        hs[r, : lens[r]] = torch.from_numpy(feats.hidden[i]).float()
        metrics[r, : lens[r] - 1] = torch.from_numpy(feats.metrics[i])
        mask[r, : lens[r]] = 1.0
    return hs, metrics, mask


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Batches of similar lengths; with ``rng``, shuffled pools of 50 batches, sorted inside, batches shuffled."""
    n = len(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    pool = batch_size * 50
    batches = []
    for s in range(0, n, pool):
        chunk = perm[s : s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@register("pawn", version="1.0.0", family="detector", paper="arXiv:2501.03940",
          summary="PAWN: hidden-state gates weight per-token LM metrics (softmax pooling) into an AI-text score.")
@dataclass(frozen=True)
class PAWN(Detector):
    """PAWN detector head trained on cached backbone features.

    Parameters
    ----------
    features : int
        Width F of the metric embedding and of every MLP. Default 256.
    gates : int
        Number of gates G (must divide ``features``). Default 256.
    layers : int
        Hidden layers per MLP (layers + 1 Linear layers). Default 3.
    max_len : int
        Position scale: the gate sees i / max_len. Default 512.
    token_dropout : float
        Fraction of tokens dropped from the pooling at random while training. Default 0.15.
    label_smoothing : float
        eps in y' = y(1 - eps) + eps / 2. Default 0.2.
    pos_weight : float
        Weight of the machine class in the loss; 0 = n_human / n_machine of the training data. Default 0.
    lr : float
        AdamW learning rate (cosine decay to 0). Default 1e-3.
    weight_decay : float
        AdamW weight decay. Default 0.01.
    grad_clip : float
        Gradient-norm clip. Default 1.0.
    batch_size : int
        Texts per training batch. Default 128.
    epochs : int
        Maximum training epochs. Default 5.
    patience : int
        Stop after this many epochs without a better validation AUROC (0 = never stop early). Default 2.
    seed : int
        Seed of initialisation, shuffling and token dropout. Default 0.
    """

    features: int = 256
    gates: int = 256
    layers: int = 3
    max_len: int = 512
    token_dropout: float = 0.15
    label_smoothing: float = 0.2
    pos_weight: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 128
    epochs: int = 5
    patience: int = 2
    seed: int = 0

    trainable: ClassVar[bool] = True
    needs_hidden: ClassVar[bool] = True
    onnx_exportable: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"features": "32", "gates": "16", "layers": "2", "epochs": "2"}

    def __post_init__(self) -> None:
        for name in ("features", "gates", "layers", "max_len", "batch_size", "epochs"):
            check_range(f"pawn.{name}", getattr(self, name), 1)
        if self.features % self.gates:
            raise ParamError(f"pawn.gates={self.gates} must divide pawn.features={self.features}")
        check_range("pawn.token_dropout", self.token_dropout, 0.0, 1.0, hi_open=True)
        check_range("pawn.label_smoothing", self.label_smoothing, 0.0, 1.0)
        check_range("pawn.pos_weight", self.pos_weight, 0.0)
        check_range("pawn.lr", self.lr, 0.0, lo_open=True)
        check_range("pawn.weight_decay", self.weight_decay, 0.0)
        check_range("pawn.grad_clip", self.grad_clip, 0.0, lo_open=True)
        check_range("pawn.patience", self.patience, 0)

    def build(self, hidden_size: int) -> PAWNHead:
        return PAWNHead(hidden_size, self.features, self.gates, self.layers, self.max_len, self.token_dropout)

    def load(self, state: DetectorState) -> PAWNHead:
        head = self.build(int(state.info["hidden_size"]))
        head.load_state_dict(state.tensors)
        return head.eval()

    # -- training ------------------------------------------------------------------------------------------------
    def fit(self, train: FeatureSet, valid: FeatureSet | None = None, *, progress: bool = False) -> DetectorState:
        self.check_features(train)
        y = torch.from_numpy(train.require_labels().astype(np.float32))  # (N,)
        n_pos = float(y.sum())
        if n_pos == 0 or n_pos == len(y):
            raise ValueError("pawn: the training split needs both human (0) and machine (1) texts")
        pos_weight = torch.tensor(self.pos_weight or (len(y) - n_pos) / n_pos)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        head = self.build(train.hidden_size)
        opt = torch.optim.AdamW(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.epochs * math.ceil(len(train) / self.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
        history: list[dict] = []
        best_key, best_state, stale = None, None, 0
        for epoch in range(1, self.epochs + 1):
            head.train()
            start, losses = time.perf_counter(), []
            for idx in length_batches(train.n_tokens, self.batch_size, rng):
                hs, metrics, mask = collate(train, idx)
                target = y[idx] * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing  # (B,)
                loss = F.binary_cross_entropy_with_logits(head(hs, metrics, mask), target, pos_weight=pos_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), self.grad_clip)
                opt.step()
                sched.step()
                losses.append(loss.item())
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - start}
            key: tuple[float, float] = (float(epoch), 0.0)  # without validation data the last epoch wins
            if valid is not None and len(valid):
                logits, vy = self._logits(head, valid), valid.require_labels()
                record["valid_auroc"] = auroc(logits, vy)
                record["valid_loss"] = float(F.binary_cross_entropy_with_logits(
                    torch.from_numpy(logits).float(), torch.from_numpy(vy.astype(np.float32))))
                key = (np.nan_to_num(record["valid_auroc"], nan=-1.0), -record["valid_loss"])
            if best_key is None or key > best_key:
                best_key, stale, record["best"] = key, 0, True
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            else:
                stale += 1
            history.append(record)
            if progress:
                print("pawn epoch " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in record.items()))
            if self.patience and stale >= self.patience:
                break
        head.load_state_dict(best_state)
        best_epoch = max(r["epoch"] for r in history if r.get("best"))
        info = {"hidden_size": train.hidden_size, "history": history, "best_epoch": best_epoch,
                "epochs_run": len(history), "pos_weight": float(pos_weight),
                "n_params": sum(p.numel() for p in head.parameters()), "n_train": len(train)}
        return DetectorState({k: v.contiguous() for k, v in head.state_dict().items()}, info)

    # -- scoring -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _logits(self, head: PAWNHead, feats: FeatureSet, batch_size: int = 64) -> np.ndarray:
        was_training = head.training
        head.eval()
        out = np.empty(len(feats), dtype=np.float64)
        for idx in length_batches(feats.n_tokens, batch_size, None):
            out[idx] = head(*collate(feats, idx)).double().numpy()
        head.train(was_training)
        return out

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        """The head's logit per text (higher = machine)."""
        if state is None or not state.tensors:
            raise ValueError("pawn: score needs a trained state (call fit first)")
        self.check_features(feats)
        return self._logits(self.load(state), feats)
