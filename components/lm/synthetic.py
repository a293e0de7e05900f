"""Training data for the training-dynamics studies: the Bigram-Backcopy synthetic LM and a character-level corpus.

Both are deterministic: ``batch(step)`` depends only on (seed, step), so a resumed run sees the batches an
uninterrupted run would have seen, and a sweep point trains on exactly the data of every other point with the
same data settings.

Bigram-Backcopy (Guo et al., "Active-Dormant Attention Heads", arXiv 2410.13835, the data of Gu et al.'s CPU sink
study): a vocabulary of ``vocab`` tokens, ``triggers`` of which are trigger tokens, and a fixed bigram table whose
rows are Dirichlet(``alpha``) draws. A sequence starts with BOS (``bb``; ``bb_nobos`` puts a random token there),
its first token is uniform over the non-trigger tokens, then: after a trigger the next token copies the token
before the trigger; otherwise it follows the bigram table. ``n_sequences`` restricts training to a fixed pool of
sequences (the data-amount sweep); probes are drawn from a separate stream.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
import torch

from components import data as data_sources
from components.base import ParamError, check_range


def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    """A torch generator seeded by (seed, step, stream) only."""
    digest = hashlib.sha256(f"{stream}:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Vocab:
    """The little a model builder needs from a tokenizer (ids of a fixed integer vocabulary)."""

    size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def __len__(self) -> int:
        return self.size


@dataclass
class BigramBackcopy:
    """The Bigram-Backcopy synthetic LM."""

    seq_len: int = 64
    vocab: int = 64
    triggers: int = 16
    alpha: float = 0.2
    bos: bool = True
    n_sequences: int | None = None
    seed: int = 0
    table: torch.Tensor = field(init=False, repr=False)
    trigger_mask: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_range("data.seq_len", self.seq_len, 2)
        check_range("data.vocab", self.vocab, 2)
        check_range("data.triggers", self.triggers, 0, self.vocab - 1)
        check_range("data.alpha", self.alpha, 0.0, None, lo_open=True)
        if self.n_sequences is not None:
            check_range("data.n_sequences", self.n_sequences, 1)
        rng = random.Random(f"bb:{self.seed}")
        rows = [[rng.gammavariate(self.alpha, 1.0) for _ in range(self.vocab)] for _ in range(self.vocab)]
        table = torch.tensor(rows, dtype=torch.float64)  # (V, V)
        self.table = (table / table.sum(-1, keepdim=True).clamp_min(1e-300)).float()
        self.trigger_mask = torch.zeros(self.vocab, dtype=torch.bool)
        self.trigger_mask[rng.sample(range(self.vocab), self.triggers)] = True
        self._pool: torch.Tensor | None = None

    @property
    def tokens(self) -> Vocab:
        """Ids 0..vocab-1 are the data tokens, BOS = vocab; PAD (= EOS) = vocab + 1 never occurs. PAD must not be
        BOS: transformers' embedding keeps the padding row at zero, which would make BOS a zero vector."""
        return Vocab(size=self.vocab + 2, bos_token_id=self.vocab, eos_token_id=self.vocab + 1,
                     pad_token_id=self.vocab + 1)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, seq_len) sequences."""
        normal = (~self.trigger_mask).float()  # (V,)
        seq = torch.empty(n, self.seq_len, dtype=torch.long)
        if self.bos:
            seq[:, 0] = self.vocab
        else:
            seq[:, 0] = torch.randint(0, self.vocab, (n,), generator=gen)
        seq[:, 1] = torch.multinomial(normal.expand(n, -1), 1, generator=gen)[:, 0]
        for t in range(1, self.seq_len - 1):
            cur = seq[:, t]  # (n,)
            nxt = torch.multinomial(self.table[cur], 1, generator=gen)[:, 0]  # (n,)
            seq[:, t + 1] = torch.where(self.trigger_mask[cur], seq[:, t - 1], nxt)
        return seq

    def batch(self, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        gen = step_generator(self.seed, step, "bb-train")
        if self.n_sequences is None:
            ids = self.sample(batch_size, gen)
        else:
            if self._pool is None:
                self._pool = self.sample(self.n_sequences, step_generator(self.seed, 0, "bb-pool"))
            ids = self._pool[torch.randint(0, self.n_sequences, (batch_size,), generator=gen)]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def probe(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, seq_len) held-out sequences (a stream the training batches never use)."""
        return self.sample(n, step_generator(self.seed, seed, "bb-probe"))


@dataclass
class CharCorpus:
    """A character-level LM corpus: 95% / 5% train / validation split of one text, windows of ``seq_len``."""

    text: str
    seq_len: int = 64
    val_fraction: float = 0.05
    seed: int = 0
    min_vocab: int = 64
    chars: list[str] = field(init=False, repr=False)
    ids: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_range("data.seq_len", self.seq_len, 2)
        check_range("data.val_fraction", self.val_fraction, 0.0, 0.5, lo_open=True)
        self.chars = sorted(set(self.text))
        index = {c: i for i, c in enumerate(self.chars)}
        self.ids = torch.tensor([index[c] for c in self.text], dtype=torch.long)
        split = int(len(self.ids) * (1 - self.val_fraction))
        self.train_ids, self.val_ids = self.ids[:split], self.ids[split:]
        for name, part in (("training", self.train_ids), ("validation", self.val_ids)):
            if len(part) <= self.seq_len:
                raise ParamError(f"data: the {name} split has {len(part)} characters, fewer than "
                                 f"seq_len={self.seq_len} + 1; give a longer corpus")

    @classmethod
    def from_source(cls, source: str, seq_len: int = 64, seed: int = 0, n_docs: int = 4000) -> "CharCorpus":
        """``builtin:stories`` (``n_docs`` generated stories) or a text file / record source."""
        records = data_sources.read_records(source, limit=n_docs if source.startswith("builtin:") else None,
                                            seed=seed)
        text = "\n".join(data_sources.texts(records, "text", source))
        return cls(text, seq_len=seq_len, seed=seed)

    @property
    def tokens(self) -> Vocab:
        """Character ids, then one unused id for BOS/EOS/PAD (never fed; the embedding keeps the pad row at zero);
        the vocabulary is padded to ``min_vocab`` to meet the model's minimum."""
        size = max(len(self.chars) + 1, self.min_vocab)
        return Vocab(size=size, bos_token_id=size - 1, eos_token_id=size - 1, pad_token_id=size - 1)

    def _windows(self, ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return ids[starts[:, None] + torch.arange(self.seq_len)[None, :]]  # (B, T)

    def batch(self, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        gen = step_generator(self.seed, step, "char-train")
        starts = torch.randint(0, len(self.train_ids) - self.seq_len, (batch_size,), generator=gen)
        ids = self._windows(self.train_ids, starts)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def validation(self, n: int) -> torch.Tensor:
        """(n, seq_len) fixed validation windows spread evenly over the validation split."""
        last = len(self.val_ids) - self.seq_len
        starts = torch.linspace(0, last, n).long()
        return self._windows(self.val_ids, starts)

