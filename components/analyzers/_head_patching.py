"""Activation patching of a set of heads at once: the per-prompt logit difference when the chosen heads' outputs at
the final position come from the corrupted prompt (everything else recomputed on the clean prompt).

Path patching (``path_patching``) scores one sender at a time; the circuit-reuse check (Merullo et al., arXiv
2310.08744, ``patching_utils.py`` in https://github.com/jmerullo/circuit_reuse) also patches a whole group (the
name movers) together and compares it with other groups. With z_h(x) the per-head output (before o_proj) at the
final position and F(x) = logit(answer) - logit(distractor) there:

    F_patched(x; S) = F(x  with  z_h <- z_h(x')  for h in S)

computed per prompt (not summed), so callers can count the prompts the model solves and take CIs.
"""

from __future__ import annotations

from typing import Any

import torch

from components.analyzers._probe import OutputProbe
from components.analyzers.path_patching import _Batch, answer_tokens
from components.attention.session import applied
from components.benchmarks import _scoring


def _per_prompt(batch: _Batch, logits: torch.Tensor) -> torch.Tensor:
    last = logits[:, -1].float()  # (B, V)
    return (last.gather(1, batch.answers[:, :1]) - last.gather(1, batch.answers[:, 1:]))[:, 0]  # (B,)


@torch.no_grad()
def patched_logit_diffs(model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]],
                        head_sets: list[list[tuple[int, int]]], batch_size: int = 16) -> dict[str, Any]:
    """Per-prompt logit differences: ``clean`` (N,), ``corrupt`` (N,) and ``patched`` (len(head_sets), N), for the
    rows whose answer and distractor differ in a token (``n_dropped`` counts the others)."""
    usable = [r for r in rows if answer_tokens(tokenizer, r) is not None]
    if not usable:
        raise ValueError("head patching: in every prompt the answer's tokens are a prefix of the distractor's or "
                         "the reverse; no logit difference can be measured")
    device = next(model.parameters()).device
    clean, corrupt, patched = [], [], [[] for _ in head_sets]
    for chunk in _scoring.batches(usable, batch_size):
        batch = _Batch(tokenizer, list(chunk), device)
        z_corrupt: dict[int, torch.Tensor] = {}  # layer -> (B, H, D) at the final position

        def record(call, out, z_corrupt=z_corrupt):
            z_corrupt[call.layer] = out[:, :, -1].clone()
            return out

        with applied(model, OutputProbe(fn=record)):
            corrupt.append(_per_prompt(batch, model(**batch.corrupt).logits))
        with applied(model):
            clean.append(_per_prompt(batch, model(**batch.clean).logits))
        for i, heads in enumerate(head_sets):
            by_layer: dict[int, list[int]] = {}
            for layer, head in heads:
                by_layer.setdefault(layer, []).append(head)

            def patch(call, out, by_layer=by_layer, z_corrupt=z_corrupt):
                mine = by_layer.get(call.layer)
                if not mine:
                    return out
                out = out.clone()
                out[:, mine, -1] = z_corrupt[call.layer][:, mine]  # (B, |mine|, D)
                return out

            with applied(model, OutputProbe(fn=patch)):
                patched[i].append(_per_prompt(batch, model(**batch.clean).logits))
    return {"clean": torch.cat(clean).tolist(), "corrupt": torch.cat(corrupt).tolist(),
            "patched": [torch.cat(p).tolist() for p in patched], "n_dropped": len(rows) - len(usable)}
