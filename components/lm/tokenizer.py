"""Train a small byte-level BPE tokenizer with the Hugging Face ``tokenizers`` library and save it as a fast
tokenizer, so the model directory loads with ``AutoTokenizer.from_pretrained``.

Digits are split one per token by default (``number_tokens`` 0 or 1). With ``number_tokens=n`` every digit string
of 1..n digits (leading zeros included) is one token, and longer numbers are split left to right into chunks of n
digits, as the ``\\d{1,3}`` pre-tokenization of GPT-4's cl100k and Llama 3 does for n=3: a 3-digit value or a
5-digit pass key is then one or two tokens to retrieve instead of three or five. (Implemented as added tokens, which the
tokenizer matches longest-first before the BPE model sees the text.) A ``<s>`` BOS token is prepended to every
encoded text (a fixed first token, where attention sinks usually form).
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def number_strings(n: int) -> list[str]:
    """Every digit string of 1..n digits: "0".."9", "00".."99", ... (10 + 100 + ... strings)."""
    return [f"{i:0{k}d}" for k in range(1, n + 1) for i in range(10**k)]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2,
                    number_tokens: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (``vocab_size`` BPE entries), plus the number tokens."""
    if not 0 <= number_tokens <= 3:
        raise ValueError(f"number_tokens={number_tokens} must be 0 (digits one per token) to 3")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    if number_tokens > 1:
        vocab = tok.get_vocab()
        tok.add_tokens([AddedToken(s, normalized=False) for s in number_strings(number_tokens) if s not in vocab])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.padding_side = "left"
    return fast
