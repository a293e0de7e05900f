"""Forward-time overhead of each attention patch relative to stock SDPA, measured in one process.

Model: random Llama, 4 layers, hidden 512, 8 heads (head_dim 64), vocab 4096, batch 1, full logits. Input: a
built-in story text of exactly T tokens under a BPE tokenizer trained for that vocabulary (input-reading patches
such as PASTA get the text).
Method: ``torch.set_num_threads(1)``, CPU time (``time.process_time``), interleaved rounds (every variant once per
round, in order). Reported: the minimum time over rounds, and the ratio = median over rounds of (variant time /
stock-sdpa time in the same round), which cancels slow drifts of the machine. Materialised variants route the
same patch through the fallback path (eager softmax), to show what the fast path saves.

    python bench/patch_overhead.py                      # T = 512, 1024, 2048, 5 rounds
    python bench/patch_overhead.py --lengths 512 --rounds 3 --json out.json
    python bench/patch_overhead.py --smoke              # hidden-64 model, T = 64, 1 round (seconds)
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.attention.session import applied  # noqa: E402
from registry.specs import parse  # noqa: E402

# name -> (component spec or None for stock, force path or None); issue-specific patches append here
VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "sdpa (stock)": (None, None),
    "eager (stock)": ("eager", None),
    "baseline": ("baseline", None),
    "zerotuning": ("zerotuning(gamma=2)", None),
    "zerotuning [channels]": ("zerotuning(gamma=2)", "channels"),
    "zerotuning [materialised]": ("zerotuning(gamma=2)", "materialize"),
    "head_mask uniform 2/8": ("head_mask(heads=0:1;1:3;2:5;3:7)", None),
    "head_mask zero 2/8": ("head_mask(heads=0:1;1:3;2:5;3:7, mode=zero)", None),
    "head_pattern_override 2/8": ("head_pattern_override(heads=0:1;1:3;2:5;3:7, positions=0)", None),
    "head_pattern_override [materialised]": ("head_pattern_override(heads=0:1;1:3;2:5;3:7, positions=0)",
                                             "materialize"),
    # ACT on 2 of the 8 heads of every layer; a random model has no sink but key 0 at tau=0.1, so the second row
    # uses a low threshold that flags the first ~10% of the keys as sinks (worst case for the sink-key terms)
    "act 2/8 heads": ("act(heads=*:1;*:5)", None),
    "act 2/8 heads tau=0.002": ("act(heads=*:1;*:5, tau=0.002)", None),
    "act 2/8 heads [materialised]": ("act(heads=*:1;*:5)", "materialize"),
    # PASTA on every head: one span of ~100 tokens (a sparse bias, which the dispatcher puts in the extra-channel
    # form, the cheaper one for a key set that large), the dense form, and the sparse bias corrected from the lse
    "pasta": ("pasta(alpha=0.5, spans=40:440)", None),
    "pasta [channels]": ("pasta(alpha=0.5, spans=40:440, sparse_max=0)", None),
    "pasta [lse correction]": ("pasta(alpha=0.5, spans=40:440)", "lse"),
}


VOCAB = 4096
TINY_VOCAB = 512  # --smoke


def build_model(tiny: bool = False) -> torch.nn.Module:
    """The benchmark model; ``tiny``: hidden 64 (smoke runs; 4 layers x 8 heads either way, so the variants apply)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    size = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4) if tiny else \
        dict(vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=4)
    cfg = LlamaConfig(**size, num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096)
    return LlamaForCausalLM(cfg).eval()


@functools.lru_cache(maxsize=2)
def bench_tokenizer(vocab_size: int = VOCAB):
    from components.benchmarks import _text
    from components.lm.tokenizer import train_tokenizer

    return train_tokenizer(_text.stories(0, 1500 if vocab_size >= VOCAB else 200), vocab_size=vocab_size)


def build_text(length: int, vocab_size: int = VOCAB) -> tuple[str, object, torch.Tensor]:
    """A story text of exactly ``length`` tokens under a BPE tokenizer trained for the model's vocabulary (patches
    that read the prompt text, such as PASTA, get it through session.set_inputs)."""
    from components.benchmarks import _text

    tok = bench_tokenizer(vocab_size)
    text = " ".join(_text.stories(1, 4000))
    enc = tok(text, return_offsets_mapping=True)
    for cut in range(length, length - 20, -1):  # a cut that re-tokenizes to the same tokens
        piece = text[: enc["offset_mapping"][cut - 1][1]]
        ids = tok(piece)["input_ids"]
        if ids == enc["input_ids"][:cut] and len(ids) == length:
            return piece, tok, torch.tensor([ids])
    raise RuntimeError(f"no clean cut at {length} tokens")


def time_variant(model, ids, spec, force, inputs=None) -> float:
    with torch.no_grad():
        if spec is None:
            start = time.process_time()
            model(input_ids=ids)
            return time.process_time() - start
        if spec == "eager":
            model.set_attn_implementation("eager")
            try:
                start = time.process_time()
                model(input_ids=ids)
                return time.process_time() - start
            finally:
                model.set_attn_implementation("sdpa")
        patch = parse(spec).create("patch")
        with applied(model, patch, force=force) as session:
            if patch.needs_inputs:
                session.set_inputs(**(inputs or {}))
            start = time.process_time()
            model(input_ids=ids)
            return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.lengths, args.rounds = [64], 1
    vocab = TINY_VOCAB if args.smoke else VOCAB
    torch.set_num_threads(1)
    model = build_model(tiny=args.smoke)
    variants = {k: v for k, v in VARIANTS.items() if args.only is None or k in args.only or k == "sdpa (stock)"}
    results: dict[int, dict[str, float]] = {}
    ratios: dict[int, dict[str, float]] = {}
    for T in args.lengths:
        text, tok, ids = build_text(T, vocab)
        inputs = {"texts": [text], "tokenizer": tok}
        warm_text, _, warm_ids = build_text(64, vocab)
        for spec, force in variants.values():  # warm-up
            time_variant(model, warm_ids, spec, force, {"texts": [warm_text], "tokenizer": tok})
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, (spec, force) in variants.items():
                times[name].append(time_variant(model, ids, spec, force, inputs))
        results[T] = {k: min(v) for k, v in times.items()}
        base = times["sdpa (stock)"]
        ratios[T] = {k: statistics.median(t / b for t, b in zip(v, base)) for k, v in times.items()}
    print(f"# patch overhead: forward CPU time (min of {args.rounds} interleaved rounds) and ratio to stock SDPA "
          f"(median of per-round ratios); 1 thread, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    header = f"{'variant':32s}" + "".join(f"{'T=' + str(T):>20s}" for T in args.lengths)
    print(header)
    for name in variants:
        cells = []
        for T in args.lengths:
            ms, ratio = results[T][name] * 1000, ratios[T][name]
            cells.append(f"{ms:9.0f} ms x{ratio:5.2f}")
        print(f"{name:32s}" + "".join(f"{c:>20s}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"min_seconds": {str(T): r for T, r in results.items()},
                                         "median_ratio": {str(T): r for T, r in ratios.items()}}, indent=2))


if __name__ == "__main__":
    main()
