"""PAWN benchmark: feature-extraction cost, what the feature cache saves, cache size, and detection quality of
PAWN against every baseline on the same backbone.

Backbones: the demo model (``assets/demo-lm`` or ``ATTNFLOW_HOME/models/demo-lm``, skipped while it does not exist),
``../shared/data/models/stories260k``, and, for the timing rows only, a randomly initialised GPT-2-small-shaped
model (124M parameters, vocabulary 50257; token ids from the stories260k tokenizer) to show the cache on a
backbone whose forward pass costs what real backbones cost.

Measured (1 thread, ``time.process_time``, interleaved rounds, minimum over rounds):
1. extraction / bare forward: ``components.detectors._features.extract`` (hidden states + 5 metrics + aux) vs
   tokenising and running ``model(input_ids).logits`` on the same right-padded, length-sorted batches (goal <= 1.15);
2. one PAWN head epoch from the cache (load the Parquet shards + 1 epoch) vs recomputing the features (extract +
   1 epoch) on the same texts (goal >= 20x faster);
3. cache bytes per token (zstd Parquet: fp16 hidden states stored once, fp32 metrics and aux);
4. detection on ``../shared/data/detection/fast-detect-gpt``: train on exp_main (15 files), test on exp_gpt3to4
   (9 files), and the reverse. Subsampled for 2 CPU cores: ``--pairs-main`` pairs per exp_main file and
   ``--pairs-gpt`` per exp_gpt3to4 file (first N pairs), texts cut to ``--max-length`` tokens; the shared ~30-token
   prompt of each human/machine pair is kept (as in the published Fast-DetectGPT numbers). 15% of the training
   pairs are the validation split (early stopping, threshold). Every detector uses the same backbone and cache.

    python bench/pawn.py                                   # everything (~20-30 min on 2 busy cores)
    python bench/pawn.py --backbones stories260k --pairs-main 20 --pairs-gpt 30
    python bench/pawn.py --smoke      # demo model, generated pairs (built-in stories vs the same words shuffled),
                                      # 32 tokens, PAWN for 2 epochs and one baseline; report in a temp directory
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ATTNFLOW_SHARED", REPO / "../shared")).resolve()
RESULTS = REPO / "bench" / "results"
os.environ.setdefault("ATTNFLOW_HOME", str(RESULTS / "pawn-home"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

torch.set_num_threads(1)

from components import modeling  # noqa: E402
from components.detectors import _features  # noqa: E402
from components.detectors.pawn import PAWN  # noqa: E402
from tasks import pawn_cache  # noqa: E402
from tasks.models import LoadedModel, load_model  # noqa: E402
from tasks.pawn_data import PrepOptions, prepare_detection_data, read_prepared, source_fingerprints  # noqa: E402
from tasks.pawn_train import evaluate_detector, fit_detector  # noqa: E402

DATA = SHARED / "data" / "detection" / "fast-detect-gpt"
PAWN_DEFAULT = "pawn"
PAWN_SMALL_DATA = "pawn(batch_size=32, epochs=10, patience=3)"
BASELINES = ["log_likelihood", "log_rank", "token_entropy", "gltr", "fast_detectgpt", "binoculars"]


def cpu(fn, *args, **kw) -> tuple[float, Any]:
    start = time.process_time()
    out = fn(*args, **kw)
    return time.process_time() - start, out


@torch.no_grad()
def bare_forward(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> None:
    """What any scoring script does at least: tokenize, batch, one forward pass with full logits."""
    ids = _features.encode(tokenizer, texts, max_length).ids
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for s in range(0, len(ids), batch_size):
        batch = [ids[i] for i in order[s : s + batch_size]]
        x = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.long)
        for r, row in enumerate(batch):
            x[r, : len(row)] = torch.tensor(row)
        model(input_ids=x, attention_mask=torch.ones_like(x)).logits


def extraction_ratio(loaded: LoadedModel, texts: list[str], max_length: int, rounds: int) -> dict[str, float]:
    bare, ext, tokens = [], [], 0
    for _ in range(rounds):
        bare.append(cpu(bare_forward, loaded.model, loaded.tokenizer, texts, max_length, 16)[0])
        t, feats = cpu(_features.extract, loaded.model, loaded.tokenizer, texts, max_length=max_length, batch_size=16)
        ext.append(t)
        tokens = int(feats.n_tokens.sum())
    return {"bare_s": min(bare), "extract_s": min(ext), "ratio": min(ext) / min(bare), "tokens": tokens,
            "tok_per_s": tokens / min(ext)}


def prepared(sources: list[Path], pairs: int, out: Path, split: str, valid_frac: float = 0.15) -> str:
    o = PrepOptions(valid_frac=valid_frac, test_frac=0.0, limit_per_source=pairs)
    src = [str(s) for s in sources]
    return prepare_detection_data.fn(src, source_fingerprints(src), o.fields(), o.valid_frac, 0.0, split,
                                     pairs, False, False, False, str(out))["path"]


def cache_speedup(loaded: LoadedModel, texts_path: str, max_length: int, rounds: int, work: Path) -> dict[str, float]:
    """One head epoch from the cache vs one epoch that recomputes the features, on the same texts."""
    manifest = pawn_cache.build(loaded, texts_path, max_length=max_length, cache_dir=str(work / f"speed-{loaded.name}"),
                                progress=False)
    texts = [r["text"] for r in read_prepared(texts_path)]
    head = PAWN(epochs=1, batch_size=32, patience=0)
    load_t, epoch_t, ext_t = [], [], []
    for _ in range(rounds):
        t, feats = cpu(pawn_cache.load, manifest["dir"])
        load_t.append(t)
        epoch_t.append(cpu(head.fit, feats)[0])
        ext_t.append(cpu(_features.extract, loaded.model, loaded.tokenizer, texts, max_length=max_length)[0])
    load, epoch, ext = min(load_t), min(epoch_t), min(ext_t)
    return {"load_s": load, "epoch_s": epoch, "extract_s": ext, "speedup": (ext + epoch) / (load + epoch),
            "bytes_per_token": manifest["bytes"] / manifest["n_tokens"], "texts": len(texts)}


def detection(loaded: LoadedModel, train_path: str, test_path: str, max_length: int,
              detectors: list[str]) -> dict[str, dict[str, float]]:
    train = pawn_cache.build(loaded, train_path, max_length=max_length, progress=True)
    test = pawn_cache.build(loaded, test_path, max_length=max_length, progress=True)
    out = {}
    for spec in detectors:
        fit = fit_detector.fn(train["dir"], spec, progress=False)
        res = evaluate_detector.fn(fit, train["dir"], test["dir"])
        info = fit["info"]
        out[fit["component"]["label"]] = {**res["test"]["metrics"], "valid_auroc": res["valid"]["metrics"]["auroc"],
                                          "epochs": info.get("epochs_run", 0), "best_epoch": info.get("best_epoch", 0)}
    out["_cache"] = {"bytes_per_token": (train["bytes"] + test["bytes"]) / (train["n_tokens"] + test["n_tokens"]),
                     "n_train": train["n_rows"], "n_test": test["n_rows"],
                     "truncated": (train["n_truncated"] + test["n_truncated"]) / (train["n_rows"] + test["n_rows"])}
    return out


def gpt2_shaped(tokenizer: Any) -> LoadedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()  # 124M parameters, random weights: timing only
    ref = modeling.ModelRef("gpt2-small-shape", "local", "/virtual/gpt2-small-shape-random")
    return LoadedModel(ref, model, tokenizer, "gpt2-small-shape-random-seed0", {})


def backbones(names: list[str]) -> list[LoadedModel]:
    out = []
    for name in names:
        if name == "demo":
            try:
                out.append(load_model.fn("demo"))
            except modeling.ModelNotFoundError as e:
                print(f"skipping the demo model: {e}")
        elif name == "stories260k":
            out.append(load_model.fn(str(SHARED / "data" / "models" / "stories260k")))
        else:
            out.append(load_model.fn(name))
    return out


def smoke_sources(work: Path, pairs: int = 8) -> tuple[list[Path], list[Path]]:
    """Fast-DetectGPT-shaped files generated on the spot for ``--smoke`` (two per side): human = built-in template
    stories, machine = the same words shuffled (a synthetic, detectable machine side). Nothing is read from
    ../shared."""
    import json
    import random

    from components.benchmarks import _text

    sides = []
    for side, offset in (("exp_main", 0), ("exp_gpt3to4", 100)):
        files = []
        for f in range(2):
            human = [" ".join(_text.stories(offset + f * pairs + i, 1)[0].split()[:24]) for i in range(pairs)]
            rng = random.Random(offset + f)
            machine = [" ".join(rng.sample(t.split(), len(t.split()))) for t in human]
            path = work / side / f"smoke{f}.raw_data.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"original": human, "sampled": machine}))
            files.append(path)
        sides.append(files)
    return sides[0], sides[1]


def fmt(x: float, nd: int = 3) -> str:
    return "-" if x != x else f"{x:.{nd}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default="demo,stories260k")
    ap.add_argument("--pairs-main", type=int, default=40, help="pairs per exp_main file (15 files)")
    ap.add_argument("--pairs-gpt", type=int, default=60, help="pairs per exp_gpt3to4 file (9 files)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--speed-texts", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-gpt2-shape", action="store_true", help="skip the 124M timing-only backbone")
    ap.add_argument("--out", default=str(RESULTS / "pawn.md"))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    detectors = [PAWN_DEFAULT, PAWN_SMALL_DATA] + BASELINES
    if args.smoke:
        work = Path(tempfile.mkdtemp(prefix="pawn-smoke-"))
        args.backbones, args.pairs_main, args.pairs_gpt, args.max_length = "demo", 8, 8, 32
        args.speed_texts, args.rounds, args.no_gpt2_shape, args.out = 30, 1, True, str(work / "pawn.md")
        detectors = ["pawn(batch_size=8, epochs=2, patience=1)", "log_likelihood"]
        main_files, gpt_files = smoke_sources(work)
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="pawn-bench-", dir=RESULTS))
        main_files = sorted((DATA / "exp_main").glob("*.json"))
        gpt_files = sorted((DATA / "exp_gpt3to4").glob("*.json"))
    args.n_files = (len(main_files), len(gpt_files))
    data = {"main": prepared(main_files, args.pairs_main, work / "main.parquet", "auto"),
            "gpt": prepared(gpt_files, args.pairs_gpt, work / "gpt.parquet", "auto"),
            "main_test": prepared(main_files, args.pairs_main, work / "main_test.parquet", "test"),
            "gpt_test": prepared(gpt_files, args.pairs_gpt, work / "gpt_test.parquet", "test"),
            "speed": prepared(main_files, max(1, args.speed_texts // 30), work / "speed.parquet", "train")}
    speed_texts = [r["text"] for r in read_prepared(data["speed"])]
    loaded = backbones([b.strip() for b in args.backbones.split(",") if b.strip()])
    rows: dict[str, Any] = {}
    started = time.time()
    for lm in loaded:
        print(f"\n== {lm.name}: extraction vs bare forward on {len(speed_texts)} texts")
        r = {"speed": extraction_ratio(lm, speed_texts, args.max_length, args.rounds)}
        r["cache"] = cache_speedup(lm, data["speed"], args.max_length, args.rounds, work)
        print(r["speed"], r["cache"])
        r["main->gpt"] = detection(lm, data["main"], data["gpt_test"], args.max_length, detectors)
        r["gpt->main"] = detection(lm, data["gpt"], data["main_test"], args.max_length, detectors)
        rows[lm.name] = r
    if not args.no_gpt2_shape and loaded:
        lm = gpt2_shaped(loaded[-1].tokenizer)
        few = speed_texts[:16]
        print(f"\n== {lm.name}: timing only, {len(few)} texts")
        path = prepared(main_files, 1, work / "speed_gpt2.parquet", "train")
        rows[lm.name] = {"speed": extraction_ratio(lm, few, args.max_length, 2),
                         "cache": cache_speedup(lm, path, args.max_length, 1, work)}
    report = render(rows, args, time.time() - started)
    Path(args.out).write_text(report)
    print("\n" + report)


def render(rows: dict[str, Any], args: argparse.Namespace, seconds: float) -> str:
    lines = [f"# PAWN benchmark ({platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
             f"{seconds / 60:.0f} min)", "",
             f"Data: {'generated smoke pairs' if args.smoke else 'fast-detect-gpt'}, first {args.pairs_main} pairs "
             f"per exp_main file ({args.n_files[0]} files) and {args.pairs_gpt} per exp_gpt3to4 file "
             f"({args.n_files[1]} files); texts cut to {args.max_length} tokens; shared "
             "prompt kept; threshold and early stopping on a 15% validation split of the training side.", "",
             "| backbone | extract / bare forward | extraction tok/s | epoch from cache vs recompute | "
             "cache bytes/token |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        b = r.get("main->gpt", {}).get("_cache", {}).get("bytes_per_token", r["cache"]["bytes_per_token"])
        lines.append(f"| {name} | x{r['speed']['ratio']:.2f} | {r['speed']['tok_per_s']:,.0f} | "
                     f"x{r['cache']['speedup']:.1f} (load {r['cache']['load_s']:.2f}s"
                     f" + epoch {r['cache']['epoch_s']:.2f}s"
                     f" vs extract {r['cache']['extract_s']:.2f}s, {r['cache']['texts']} texts) | {b:.0f} |")
    lines += ["", "| backbone | detector | main->gpt3to4 AUROC | macro-F1 | macro-recall | R@1%FPR | R@5%FPR | "
              "gpt3to4->main AUROC | macro-F1 | macro-recall | R@1%FPR | R@5%FPR |", "|---" * 12 + "|"]
    for name, r in rows.items():
        if "main->gpt" not in r:
            continue
        for det in [k for k in r["main->gpt"] if not k.startswith("_")]:
            cells = []
            for d in ("main->gpt", "gpt->main"):
                m = r[d][det]
                cells += [fmt(m["auroc"]), fmt(m["macro_f1"]), fmt(m["macro_recall"]), fmt(m["recall_at_1fpr"]),
                          fmt(m["recall_at_5fpr"])]
            lines.append(f"| {name} | {det} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
