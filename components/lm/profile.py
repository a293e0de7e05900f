"""Attention profile of a causal LM: sink mass on position 0 per layer and induction scores per head.

Two standard diagnostics, computed from materialised attention probabilities (``attention_maps``: the attnflow
dispatcher's materialised path, no patches):

- **Sink mass** per layer: mean over heads and over queries i >= 1 of A[i, 0], the probability a query puts on the
  first position (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453). Query
  0 is left out because it can only attend to itself. Uniform attention would give mean_i 1/(i+1), reported as
  ``uniform`` so the figure can be read against it.
- **Induction score** per (layer, head): a random token sequence of length L repeated twice; for each query i in
  the second copy the score is A[i, i - L + 1], the attention on the token that followed the current token's
  earlier occurrence (Olsson et al., "In-context Learning and Induction Heads", 2022; the TransformerLens
  convention). Averaged over queries and sequences; 1.0 is a perfect induction head.

Parameters
----------
seq_len : int
    Length L of the random sequence that is repeated (total length 2L + 1 with the BOS token).
n_sequences : int
    Number of random sequences averaged.
seed : int
    Seed of the random sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from components.analyzers.base import attention_maps


@dataclass(frozen=True)
class AttentionProfile:
    sink_mass: list[float]                 # per layer: mean A[i, 0] over heads and queries i >= 1
    uniform: float                         # the same quantity under uniform causal attention
    induction: list[list[float]]           # [layer][head] induction score
    text_tokens: int                       # tokens of text the sink mass was measured on

    def top_induction(self, k: int = 3) -> list[tuple[int, int, float]]:
        flat = [(layer, head, s) for layer, row in enumerate(self.induction) for head, s in enumerate(row)]
        return sorted(flat, key=lambda t: -t[2])[:k]

    def markdown(self) -> str:
        lines = ["| layer | mean attention to position 0 |", "|---|---|"]
        lines += [f"| {i} | {m:.3f} |" for i, m in enumerate(self.sink_mass)]
        lines += ["", f"Uniform causal attention would put {self.uniform:.3f} on position 0 "
                      f"(measured on {self.text_tokens} text tokens).", "",
                  "Most induction-like heads (score = attention on the token after the earlier occurrence, "
                  "1.0 = perfect): " + ", ".join(f"L{la}H{h} {s:.2f}" for la, h, s in self.top_induction(3))]
        return "\n".join(lines)


@torch.no_grad()
def attention_profile(model: Any, texts: list[torch.Tensor], vocab_size: int, bos_id: int | None,
                      seq_len: int = 48, n_sequences: int = 8, seed: int = 0) -> AttentionProfile:
    """Sink mass per layer on ``texts`` (1-D token id tensors) and induction scores on repeated random tokens."""
    if seq_len < 2 or n_sequences < 1:
        raise ValueError(f"seq_len must be >= 2 and n_sequences >= 1, got {seq_len}, {n_sequences}")
    if not texts:
        raise ValueError("attention_profile needs at least one text")
    was_training = model.training
    model.eval()
    sink_sum: torch.Tensor | None = None
    uniform_sum, n_tok = 0.0, 0
    for ids in texts:
        _, maps = attention_maps(model, ids[None])  # L x (1, H, T, T)
        # mass on key 0 from queries 1.., summed over queries, mean over heads
        mass = torch.stack([a[0, :, 1:, 0].mean(0).sum() for a in maps])  # (L,)
        sink_sum = mass if sink_sum is None else sink_sum + mass
        t = ids.numel()
        uniform_sum += float((1.0 / torch.arange(2, t + 1, dtype=torch.float64)).sum())
        n_tok += t - 1
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randint(0, vocab_size, (n_sequences, seq_len), generator=gen)  # (N, L)
    if bos_id is not None:
        rand[rand == bos_id] = (bos_id + 1) % vocab_size
    prefix = [] if bos_id is None else [torch.full((n_sequences, 1), bos_id)]
    ids = torch.cat(prefix + [rand, rand], dim=1)  # (N, 1 + 2L)
    off = len(prefix)
    _, maps = attention_maps(model, ids)  # L x (N, H, T, T)
    q = torch.arange(off + seq_len, off + 2 * seq_len)  # queries in the second copy
    k = q - seq_len + 1                                  # token after the earlier occurrence
    induction = [a[:, :, q, k].mean(dim=(0, 2)).tolist() for a in maps]  # [L][H]
    model.train(was_training)
    assert sink_sum is not None
    return AttentionProfile(sink_mass=(sink_sum / n_tok).tolist(), uniform=uniform_sum / n_tok,
                            induction=induction, text_tokens=n_tok)
