"""The training-data mixture: batches of generated task examples and text windows, deterministic per step.

``Mixture.batch(step)`` draws from an RNG seeded by (seed, step) only, so an interrupted run that resumes at step
k sees exactly the batches an uninterrupted run would have seen. Each batch comes from one mixture item (chosen
by weight), so sequence lengths within a batch are similar; rows are right-padded and padding is excluded from the
loss (labels -100). With ``train.task_loss: answers`` the loss of a generated task example covers only its
answers (the benchmark's ``answer_spans``): the keys, values and filler of the context are unpredictable, and
predicting them only adds gradient noise to the in-context retrieval signal (the labelling of Zoology's MQAR,
Arora et al. 2023). Text items always train on every token.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Iterator

import torch

from components import data as data_sources
from components.benchmarks.base import Benchmark
from components.lm.preset import LMPreset, MixtureItem
from registry.specs import Spec, parse


def eval_spec(task: str) -> str:
    """The spec to evaluate a mixture task with: the benchmark's ``training_only_params`` dropped (scoring is
    unchanged by them, and the labels match the plain benchmark's)."""
    spec = parse(task)
    drop = spec.info("benchmark").cls.training_only_params
    return Spec(spec.name, spec.version, {k: v for k, v in spec.params.items() if k not in drop}).text()


class Mixture:
    def __init__(self, preset: LMPreset, tokenizer: Any, *, max_text_docs: int = 5000):
        self.preset = preset
        self.tokenizer = tokenizer
        self.seq_len = preset.model.context
        self.items = list(preset.mixture)
        self.weights = [it.weight for it in self.items]
        self.benchmarks = {i: parse(it.task).create("benchmark") for i, it in enumerate(self.items) if it.task}
        for i, b in self.benchmarks.items():
            if type(b).sample is Benchmark.sample:
                raise ValueError(f"mixture: {self.items[i].task} is not a generated benchmark")
        self._streams: dict[int, list[int]] = {}
        self._max_text_docs = max_text_docs

    # -- text -------------------------------------------------------------------------------------------------
    def texts_for_tokenizer(self, n_per_item: int = 1500, seed: int = 0) -> Iterator[str]:
        """Sample texts from every item (for tokenizer training)."""
        rng = random.Random(seed)
        for i, item in enumerate(self.items):
            if item.task:
                for j in range(n_per_item):
                    yield self.benchmarks[i].training_text(self.benchmarks[i].sample(rng, j))
            else:
                yield from self._texts(item)[:n_per_item]

    def _texts(self, item: MixtureItem) -> list[str]:
        records = data_sources.read_records(item.text, limit=self._max_text_docs, seed=self.preset.train.seed)
        return data_sources.texts(records, item.text_field, item.text)

    def _stream(self, i: int) -> list[int]:
        if i not in self._streams:
            eos = [self.tokenizer.eos_token_id]
            ids: list[int] = []
            for t in self._texts(self.items[i]):
                ids.extend(self.tokenizer(t, add_special_tokens=False)["input_ids"] + eos)
            if len(ids) < self.seq_len:
                raise ValueError(f"mixture: text source {self.items[i].text!r} has only {len(ids)} tokens "
                                 f"(< context {self.seq_len})")
            self._streams[i] = ids
        return self._streams[i]

    # -- batches ------------------------------------------------------------------------------------------------
    def rng(self, step: int) -> random.Random:
        digest = hashlib.sha256(f"{self.preset.train.seed}:{step}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def batch(self, step: int, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """input_ids (B, T), attention_mask (B, T), labels (B, T) with -100 on padding; plus the item index."""
        bs = batch_size or self.preset.train.batch_size
        rng = self.rng(step)
        i = rng.choices(range(len(self.items)), weights=self.weights)[0]
        if self.items[i].text:
            stream = self._stream(i)
            rows = []
            for _ in range(bs):
                start = rng.randrange(0, len(stream) - self.seq_len + 1)
                rows.append([self.tokenizer.bos_token_id] + stream[start : start + self.seq_len - 1])
            keep = None
        else:
            rows, keep = self._task_rows(self.benchmarks[i], rng, bs)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # (B, T)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (B, T)
        labels = input_ids.masked_fill(mask == 0, -100)
        if keep is not None:  # task_loss=answers: only answer tokens are predicted targets
            keep_t = torch.tensor([k + [False] * (width - len(k)) for k in keep])  # (B, T)
            labels = labels.masked_fill(~keep_t, -100)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "item": i}

    def _task_rows(self, bench: Benchmark, rng: random.Random,
                   bs: int) -> tuple[list[list[int]], list[list[bool]] | None]:
        """Token ids of ``bs`` generated examples (+ EOS), and with ``task_loss: answers`` which tokens overlap the
        benchmark's answer spans (character offsets of the fast tokenizer)."""
        samples = [bench.sample(rng, rng.randrange(1 << 30)) for _ in range(bs)]
        texts = [bench.training_text(r) for r in samples]
        eos = self.tokenizer.eos_token_id
        answers_only = self.preset.train.task_loss == "answers"
        enc = self.tokenizer(texts, return_offsets_mapping=answers_only)
        rows = [(ids + [eos])[: self.seq_len] for ids in enc["input_ids"]]
        if not answers_only:
            return rows, None
        keep = []
        for row, offsets, sample, text in zip(rows, enc["offset_mapping"], samples, texts):
            spans, end = bench.answer_spans(sample), len(text)
            # EOS is an answer token when an answer span reaches the end of the text (the model learns to stop)
            flags = [e > s and any(s < b and e > a for a, b in spans) for s, e in offsets] + [
                any(b >= end for _, b in spans)]
            keep.append(flags[: len(row)])
        return rows, keep

    def describe(self) -> list[dict[str, Any]]:
        return [{"source": it.task or it.text, "weight": it.weight} for it in self.items]
