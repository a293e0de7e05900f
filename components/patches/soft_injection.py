"""SITE: soft injection of task embeddings into attention-head outputs at the last prompt token.

A task embedding mu_{l,h} is the mean output of head h in layer l (its context vector before the output
projection) at the last token of few-shot prompts. At test time, on prompts without demonstrations, each head's
output at the last prompt token is mixed with it, with a learned per-head weight (prefill only):

    h'_{l,h} = (1 - a_{l,h}) * h_{l,h} + a_{l,h} * mu_{l,h},      a = sigmoid(theta),  theta in R^{L x H}

theta starts at 0 (a = 0.5) and is trained with the model frozen: Adam (lr 0.2, 400 steps, batch 1), loss = cross
entropy of the first answer token on zero-shot training queries; the theta with the best validation accuracy
(every ``valid_every`` steps) is kept. a = 0 is exactly the unpatched model.

``needs_fit``: the component must be fitted on a benchmark's train split before use
(``fit(model, tokenizer, rows)`` returns the fitted copy; the evaluate task does this). Rows need ``prompt`` and
``target``. Few-shot prompts for mu are built from the rows themselves: ``n_shots`` other rows (prompt + target)
joined by ``separator`` before a query prompt; the last fifth of the rows (at most 50) is the validation split.
The fitted state (theta, mu) is not a parameter: ``fit_record()`` gives its fingerprint and a per-head table.

Based on Park & Rhee, "Soft Injection of Task Embeddings Outperforms Prompt-Based In-Context Learning"
(arXiv 2507.20906). Reference code: https://github.com/SNU-DRL/Soft_Injection (``utils.py``:
``get_last_mean_head_activations``, ``optimize_head_selection``, ``last_replace_activation_w_avg``,
``validate_head_selection``; ``models.py``: hooks on ``self_attn.o_proj``).

Deviations from the reference code: heads are edited inside the attention dispatcher (the same per-head vector
that enters o_proj); the few-shot prompts for mu are assembled generically from the benchmark's train rows
(the reference has per-task templates and a separate valid split); prompts longer than the model's context drop
demonstrations; the last prompt token comes from the scoring code's prompt lengths (answer tokens appended for
option scoring are not injected). ``heads`` restricts which heads may be injected (the reference: all).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from components.attention.session import applied
from components.attention.types import CallInfo
from components.base import check_range, unescape
from components.heads import HeadSet
from components.patches import _inputs
from components.patches.base import AttentionPatch, model_shape
from registry import register


def reference_output(out: torch.Tensor, rows: list[int], theta: torch.Tensor, mu: torch.Tensor,
                     heads: list[int]) -> torch.Tensor:
    """The formula on per-head outputs of one layer's prefill call, with loops (tests compare the patch against it).

    out (B, H, T, D) head outputs; rows: per batch row, the query index of the last prompt token; theta (H,) this
    layer's logits of the injection weights; mu (H, D) this layer's task embeddings; heads: the injected heads.
    Returns (B, H, T, D) with h' = (1 - a) h + a mu, a = sigmoid(theta), at that token of each injected head.
    """
    out = out.clone()
    for b, i in enumerate(rows):
        for h in heads:
            a = torch.sigmoid(theta[h]).to(out.dtype)  # scalar
            out[b, h, i] = (1 - a) * out[b, h, i] + a * mu[h].to(out.dtype)  # (D,)
    return out


@dataclass(frozen=True)
class _HeadCapture(AttentionPatch):
    """Accumulates each head's output at the last prompt token (prefill), summed over rows (not registered)."""

    def edit_output(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        if call.is_prefill:
            pos = _inputs.last_prompt_query(call, self)  # (B,)
            rows = out[torch.arange(out.shape[0]), :, pos]  # (B, H, D)
            state = call.state(self)
            state["sum"] = state.get("sum", 0) + rows.detach().double().sum(0)  # (H, D)
            state["n"] = state.get("n", 0) + out.shape[0]
        return out


@register("soft_injection", version="1.0.0", family="patch", paper="arXiv:2507.20906",
          summary="SITE: mix learned fractions of few-shot task embeddings into head outputs at the last token.")
@dataclass(frozen=True)
class SoftInjection(AttentionPatch):
    """Soft injection of task embeddings (per-head mixing weights trained with the model frozen).

    Parameters
    ----------
    n_shots : int
        Demonstrations per few-shot prompt for the task embedding (the paper's N). Default 10.
    n_prompts : int
        Few-shot prompts averaged into the task embedding (the paper's M). Default 50.
    steps : int
        Adam steps on theta. Default 400.
    lr : float
        Adam learning rate. Default 0.2.
    batch_size : int
        Training queries per step. Default 1.
    valid_every : int
        Validate (and keep the best theta) every this many steps. Default 50.
    separator : str
        Text between demonstrations and before the query; backslash escapes decoded. Default ``\\n`` (a newline).
    heads : HeadSet
        Heads that may be injected (a = 0 elsewhere). Default ``all``.
    seed : int
        Seed of demonstration sampling and query order. Default 0.
    """

    n_shots: int = 10
    n_prompts: int = 50
    steps: int = 400
    lr: float = 0.2
    batch_size: int = 1
    valid_every: int = 50
    separator: str = "\\n"
    heads: HeadSet = HeadSet.all()
    seed: int = 0
    _theta: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (L, H)
    _mu: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (L, H, D)
    _fit_info: dict | None = field(default=None, repr=False, compare=False)

    needs_fit: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"n_shots": "2", "n_prompts": "4", "steps": "2", "valid_every": "1"}

    def __post_init__(self) -> None:
        for name in ("n_shots", "n_prompts", "batch_size", "valid_every"):
            check_range(f"soft_injection.{name}", getattr(self, name), 1)
        check_range("soft_injection.steps", self.steps, 0)
        check_range("soft_injection.lr", self.lr, 0.0, None, lo_open=True)

    # -- the edit ---------------------------------------------------------------------------------------------------
    def check_model(self, config: Any) -> None:
        super().check_model(config)
        if self._theta is not None and tuple(self._theta.shape) != model_shape(config):
            raise ValueError(f"soft_injection was fitted for {tuple(self._theta.shape)} (layers, heads), not for "
                             f"this model {model_shape(config)}")

    def mixing(self, layer: int, n_heads: int) -> torch.Tensor:
        """(H,) injection weights a = sigmoid(theta) of one layer (0 outside ``heads``)."""
        if self._theta is None or self._mu is None:
            raise ValueError("soft_injection is not fitted: call fit(model, tokenizer, train_rows) first "
                             "(the evaluate task does this on the benchmark's train split)")
        keep = torch.tensor([(layer, h) in self.heads for h in range(n_heads)], dtype=self._theta.dtype)
        return torch.sigmoid(self._theta[layer]) * keep.to(self._theta.device)

    def edit_output(self, call: CallInfo, out: torch.Tensor) -> torch.Tensor:
        if not call.is_prefill or not self.head_indices(call):
            return out
        a = self.mixing(call.layer, call.n_heads).to(out.device, out.dtype)[None, :, None, None]  # (1, H, 1, 1)
        mu = self._mu[call.layer].to(out.device, out.dtype)[None, :, None, :]  # (1, H, 1, D)
        pos = _inputs.last_prompt_query(call, self)  # (B,)
        at = (torch.arange(call.q_len, device=out.device)[None, :] == pos[:, None]).to(out.dtype)  # (B, T)
        return out + at[:, None, :, None] * a * (mu - out)  # (B, H, T, D); a = 0 adds exactly 0

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]]) -> "SoftInjection":
        """Task embeddings from few-shot prompts of ``rows``, then theta by Adam on their zero-shot queries."""
        rows = [r for r in rows if r.get("prompt") and r.get("target")]
        if len(rows) < 2:
            raise ValueError("soft_injection.fit needs at least 2 rows with 'prompt' and 'target'")
        n_valid = min(50, len(rows) // 5)
        train, valid = rows[: len(rows) - n_valid], rows[len(rows) - n_valid:]
        mu = self._task_embeddings(model, tokenizer, train)  # (L, H, D)
        n_layers, n_heads = mu.shape[:2]
        theta = torch.zeros(n_layers, n_heads, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=self.lr)
        rng = random.Random(self.seed)
        grads, grad_mode = [p.requires_grad for p in model.parameters()], torch.is_grad_enabled()
        model.requires_grad_(False)
        best = (-1.0, float("inf"), 0, theta.detach().clone())
        try:
            torch.set_grad_enabled(True)
            for step in range(self.steps + 1):
                if valid and (step % self.valid_every == 0 or step == self.steps):
                    with torch.no_grad():
                        acc, loss = self._first_token(model, tokenizer, valid, theta, mu)
                    if (acc, -loss) > (best[0], -best[1]):
                        best = (acc, loss, step, theta.detach().clone())
                if step == self.steps:
                    break
                batch = rng.sample(train, min(self.batch_size, len(train)))
                _, loss_t = self._first_token(model, tokenizer, batch, theta, mu, reduce=False)
                opt.zero_grad()
                loss_t.backward()
                opt.step()
        finally:
            torch.set_grad_enabled(grad_mode)
            for p, g in zip(model.parameters(), grads):
                p.requires_grad_(g)
        final = best[3] if valid else theta.detach().clone()
        info = {"n_train": len(train), "n_valid": len(valid), "best_step": best[2] if valid else self.steps,
                "valid_accuracy": best[0] if valid else None, "valid_loss": best[1] if valid else None}
        return self._fitted(final, mu, info)

    def _fitted(self, theta: torch.Tensor, mu: torch.Tensor, info: dict) -> "SoftInjection":
        h = hashlib.sha256(theta.double().numpy().tobytes() + mu.double().numpy().tobytes())
        return self.replace(_theta=theta, _mu=mu, _fit_info={**info, "fingerprint": h.hexdigest()[:16]})

    def fit_record(self) -> dict[str, Any]:
        """The fitted state as plain data: fingerprint, training summary, a (layer, head, alpha) table and its
        figure spec (a heatmap of the injection weights)."""
        if self._theta is None:
            return {}
        n_layers, n_heads = self._theta.shape
        table = [{"layer": layer, "head": h, "alpha": float(a)}
                 for layer in range(n_layers) for h, a in enumerate(self.mixing(layer, n_heads).tolist())]
        return {**(self._fit_info or {}), "table": table, "figure": ("heatmap", "head", "layer", "alpha")}

    def _task_embeddings(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]]) -> torch.Tensor:
        rng, sep = random.Random(self.seed), unescape(self.separator)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 10**9) - 8
        prompts = []
        for m in range(self.n_prompts):
            query = rows[m % len(rows)]
            others = [r for r in rows if r is not query]
            demos = rng.sample(others, min(self.n_shots, len(others)))
            while True:
                text = "".join(d["prompt"] + d["target"] + sep for d in demos) + query["prompt"]
                if not demos or len(tokenizer(text)["input_ids"]) <= limit:
                    break
                demos = demos[1:]
            prompts.append(text)
        capture = _HeadCapture()
        tokenizer.padding_side = "left"
        device = next(model.parameters()).device
        with torch.no_grad(), applied(model, capture) as session:
            for i in range(0, len(prompts), 8):
                enc = tokenizer(prompts[i: i + 8], return_tensors="pt", padding=True).to(device)
                model(**enc)
        n_layers, _ = model_shape(model.config)
        states = [session.state[(id(capture), layer)] for layer in range(n_layers)]
        return torch.stack([s["sum"] / s["n"] for s in states]).float()  # (L, H, D)

    def _first_token(self, model, tokenizer, rows, theta, mu, reduce=True) -> tuple[float, Any]:
        """(accuracy, mean loss) of the first answer token with the injection; the loss tensor if not reduce."""
        tokenizer.padding_side = "right"
        device = next(model.parameters()).device
        prompt_ids = [tokenizer(r["prompt"])["input_ids"] for r in rows]
        full_ids = [tokenizer(r["prompt"] + r["target"])["input_ids"] for r in rows]
        starts = [min(len(p), len(f) - 1) for p, f in zip(prompt_ids, full_ids)]
        width = max(starts)
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([f[:s] + [pad] * (width - s) for f, s in zip(full_ids, starts)], device=device)
        mask = torch.tensor([[1] * s + [0] * (width - s) for s in starts], device=device)
        target = torch.tensor([f[s] for f, s in zip(full_ids, starts)], device=device)  # (B,)
        with applied(model, self.replace(_theta=theta, _mu=mu)):
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        last = logits[torch.arange(len(rows)), torch.tensor(starts, device=device) - 1].float()  # (B, V)
        loss = torch.nn.functional.cross_entropy(last, target, reduction="mean")
        if not reduce:
            return 0.0, loss
        return float((last.argmax(-1) == target).float().mean()), float(loss)

