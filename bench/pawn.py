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
   ``--pairs-gpt`` per exp_gpt3to4 file (first N pairs), texts cut to ``--max-length`` tokens; the shared prompt of
   each human/machine pair is cut (the default of prep; ``--keep-shared-prefix`` keeps it, as in the published
   Fast-DetectGPT numbers). Each data set is prepared once (15% of its pairs valid, the rest train) and cached
   once: it is the training side of one direction and, every text of it, the test side of the other. Reported:
   AUROC, recall of machine text at the threshold calibrated for 5% FPR on the human validation texts (RAID's
   "accuracy at 5% FPR"), accuracy at it, the realised test FPR with its 95% Clopper-Pearson interval, FPR per
   human source and AUROC per generator (against human texts of its domains).

    python bench/pawn.py                                   # everything (~20-30 min on 2 busy cores)
    python bench/pawn.py --backbones stories260k --pairs-main 20 --pairs-gpt 30
    python bench/pawn.py --smoke      # demo model, generated pairs (built-in stories vs the same words shuffled),
                                      # 32 tokens, PAWN for 2 epochs and one baseline; report in a temp directory
    ATTNFLOW_HOME=~/.attnflow python bench/pawn.py --backbones smollm2-135m --skip-speed --pairs-main 12 \
        --pairs-gpt 12 --max-length 160                    # a real backbone, detection only
"""

from __future__ import annotations

import argparse
import json
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


def prepared(sources: list[Path], pairs: int, out: Path, split: str, valid_frac: float = 0.15,
             strip: bool = True) -> str:
    """As `attnflow pawn train --test` prepares both sides: 15% of the pairs valid, the rest train."""
    o = PrepOptions(valid_frac=valid_frac, test_frac=0.0, limit_per_source=pairs, strip_shared_prefix=strip)
    src = [str(s) for s in sources]
    return prepare_detection_data.fn(src, source_fingerprints(src), o.fields(), o.valid_frac, 0.0, split,
                                     pairs, False, False, strip, str(out), None)["path"]


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
              detectors: list[str], target_fpr: float = 0.05) -> dict[str, dict[str, Any]]:
    train = pawn_cache.build(loaded, train_path, max_length=max_length, progress=True)
    test = pawn_cache.build(loaded, test_path, max_length=max_length, progress=True)
    out: dict[str, dict[str, Any]] = {}
    for spec in detectors:
        t0 = time.perf_counter()
        fit = fit_detector.fn(train["dir"], spec, progress=False)
        res = evaluate_detector.fn(fit, train["dir"], test["dir"], target_fpr=target_fpr)
        info = fit["info"]
        out[fit["component"]["label"]] = {
            **res["test"]["metrics"], "valid_auroc": res["valid"]["metrics"].get("auroc", float("nan")),
            "epochs": info.get("epochs_run", 0), "best_epoch": info.get("best_epoch", 0),
            "by_source": res["test"]["fpr_by"]["source"]["rows"],
            "by_generator": {r["generator"]: r.get("auroc", float("nan")) for r in res["test"]["by_generator"]},
            "notes": res["notes"], "seconds": time.perf_counter() - t0}
    out["_cache"] = {"bytes_per_token": (train["bytes"] + test["bytes"]) / (train["n_tokens"] + test["n_tokens"]),
                     "n_train": sum(1 for r in read_prepared(train_path) if r["split"] == "train"),
                     "n_valid": sum(1 for r in read_prepared(train_path) if r["split"] == "valid"),
                     "n_test": test["n_rows"], "test_tokens": test["n_tokens"],
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
    ap.add_argument("--skip-speed", action="store_true", help="detection only (no timing rows)")
    ap.add_argument("--skip-detection", action="store_true", help="timing rows only")
    ap.add_argument("--keep-shared-prefix", action="store_true", help="keep the prompt words pairs share")
    ap.add_argument("--target-fpr", type=float, default=0.05)
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
    strip = not args.keep_shared_prefix
    data = {"main": prepared(main_files, args.pairs_main, work / "main.parquet", "auto", strip=strip),
            "gpt": prepared(gpt_files, args.pairs_gpt, work / "gpt.parquet", "auto", strip=strip),
            "speed": prepared(main_files, max(1, args.speed_texts // 30), work / "speed.parquet", "train")}
    speed_texts = [r["text"] for r in read_prepared(data["speed"])]
    loaded = backbones([b.strip() for b in args.backbones.split(",") if b.strip()])
    rows: dict[str, Any] = {}
    started = time.time()
    for lm in loaded:
        r: dict[str, Any] = {}
        if not args.skip_speed:
            print(f"\n== {lm.name}: extraction vs bare forward on {len(speed_texts)} texts")
            r["speed"] = extraction_ratio(lm, speed_texts, args.max_length, args.rounds)
            r["cache"] = cache_speedup(lm, data["speed"], args.max_length, args.rounds, work)
            print(r["speed"], r["cache"])
        if not args.skip_detection:
            r["main->gpt"] = detection(lm, data["main"], data["gpt"], args.max_length, detectors, args.target_fpr)
            r["gpt->main"] = detection(lm, data["gpt"], data["main"], args.max_length, detectors, args.target_fpr)
        rows[lm.name] = r
    if not args.no_gpt2_shape and not args.skip_speed and loaded:
        lm = gpt2_shaped(loaded[-1].tokenizer)
        few = speed_texts[:16]
        print(f"\n== {lm.name}: timing only, {len(few)} texts")
        path = prepared(main_files, 1, work / "speed_gpt2.parquet", "train")
        rows[lm.name] = {"speed": extraction_ratio(lm, few, args.max_length, 2),
                         "cache": cache_speedup(lm, path, args.max_length, 1, work)}
    report = render(rows, args, time.time() - started)
    Path(args.out).write_text(report)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))
    print("\n" + report)


def render(rows: dict[str, Any], args: argparse.Namespace, seconds: float) -> str:
    prefix = "kept" if args.keep_shared_prefix else "cut"
    lines = [f"# PAWN benchmark ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{seconds / 60:.0f} min)", "",
             f"Data: {'generated smoke pairs' if args.smoke else 'fast-detect-gpt'}, first {args.pairs_main} pairs "
             f"per exp_main file ({args.n_files[0]} files) and {args.pairs_gpt} per exp_gpt3to4 file "
             f"({args.n_files[1]} files); texts cut to {args.max_length} tokens; shared "
             f"prompt {prefix}; threshold and early stopping on a 15% validation split of the training side; "
             f"target FPR {args.target_fpr:.0%} calibrated on its human validation texts.", ""]
    timed = {k: r for k, r in rows.items() if "speed" in r}
    if timed:
        lines += ["| backbone | extract / bare forward | extraction tok/s | epoch from cache vs recompute | "
                  "cache bytes/token |", "|---|---|---|---|---|"]
        for name, r in timed.items():
            b = r["cache"]["bytes_per_token"]
            lines.append(f"| {name} | x{r['speed']['ratio']:.2f} | {r['speed']['tok_per_s']:,.0f} | "
                         f"x{r['cache']['speedup']:.1f} (load {r['cache']['load_s']:.2f}s + epoch "
                         f"{r['cache']['epoch_s']:.2f}s vs extract {r['cache']['extract_s']:.2f}s, "
                         f"{r['cache']['texts']} texts) | {b:.0f} |")
    for name, r in rows.items():
        if "main->gpt" not in r:
            continue
        for d in ("main->gpt", "gpt->main"):
            c = r[d]["_cache"]
            lines += ["", f"## {name}: {d} (train {c['n_train']}, valid {c['n_valid']}, test {c['n_test']} texts, "
                      f"{c['test_tokens']:,} test tokens)", "",
                      "| detector | AUROC | R@5%FPR (test ROC) | machine recall @ calibrated 5% FPR | accuracy @ it "
                      "| test FPR [95% CI] | flagged / human | valid AUROC |", "|---" * 8 + "|"]
            dets = [k for k in r[d] if not k.startswith("_")]
            for det in dets:
                m = r[d][det]
                g = lambda k: fmt(m.get(k, float("nan")))  # noqa: E731 - a metric left out prints as "-"
                lines.append(f"| {det} | {g('auroc')} | {g('recall_at_5fpr')} | {g('recall_at_target_fpr')} | "
                             f"{g('accuracy_at_target_fpr')} | {g('fpr')} [{g('fpr_ci_low')}, {g('fpr_ci_high')}] | "
                             f"{int(m.get('n_flagged', 0))}/{int(m.get('n_human', 0))} | {fmt(m['valid_auroc'])} |")
            sources = [row["source"] for row in r[d][dets[0]]["by_source"]]
            lines += ["", "FPR per human source at the calibrated threshold (flagged / human texts):", "",
                      "| source | " + " | ".join(dets) + " |", "|---" * (len(dets) + 1) + "|"]
            for src in sources:
                cells = []
                for det in dets:
                    row = next(x for x in r[d][det]["by_source"] if x["source"] == src)
                    cells.append(f"{row['fpr']:.2f} ({int(row['n_flagged'])}/{int(row['n_human'])})")
                lines.append(f"| {src} | " + " | ".join(cells) + " |")
            gens = sorted(r[d][dets[0]]["by_generator"])
            lines += ["", "AUROC per generator (its texts vs the human texts of its domains):", "",
                      "| generator | " + " | ".join(dets) + " |", "|---" * (len(dets) + 1) + "|"]
            lines += [f"| {g} | " + " | ".join(fmt(r[d][det]["by_generator"][g]) for det in dets) + " |" for g in gens]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
