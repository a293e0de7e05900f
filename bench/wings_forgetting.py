"""Text-only forgetting of a VLM after an extra instruct stage: LoRA on the language model vs Wings learners
(Wings, arXiv:2406.03496), measured on demo-vlm.

Cells: the starting VLM (``--base``, baseline), the LoRA-tuned VLM (``--lora``, baseline: LoRA is merged) and the
Wings-tuned VLM (``--wings``: the unchanged model with ``wings(adapter=<dir>/wings)``). Each cell runs:

- ``vlm_scenes`` (generated scenes, eval split, POPE ``random`` and ``adversarial`` absent objects): accuracy over
  all questions, hallucination rate (absent objects answered "yes");
- text-only accuracy, prompts without images (tasks.vlm.text_only): ``icl_classification`` (generated) and SST-2
  (2-shot ``classification`` on ../shared/data/tasks/sst2 dev, a benchmark-only file).

Reported with 95% Wilson intervals per cell and a paired bootstrap interval (2000 resamples of the same rows) for
each cell's difference from the base. Writes one JSON file. Usage:

    ATTNFLOW_HOME=/work/home/bench python bench/wings_forgetting.py --base DIR --lora DIR --wings DIR \\
        --out docs/results/wings_forgetting.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ATTNFLOW_SHARED", REPO / ".." / "shared")) / "data" / "tasks"


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [mid - half, mid + half]


def paired_diff(a: list[bool], b: list[bool], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of b - a and its 95% percentile bootstrap interval over resampled rows (the same rows in both)."""
    rng = random.Random(seed)
    n = len(a)
    d = [int(y) - int(x) for x, y in zip(a, b)]
    boots = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return {"diff": sum(d) / n, "ci95": [boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]]}


def sst2_file(root: Path, n: int) -> Path:
    lines = [ln for ln in (SHARED / "sst2" / "stsa.binary.dev").read_text().splitlines() if ln[:1] in "01"]
    path = root / "sst2.jsonl"
    path.write_text("".join(json.dumps({"text": ln[2:], "label": int(ln[0])}) + "\n" for ln in lines))
    return path


def outcomes(name: str, result) -> dict[str, list[bool]]:
    """Per-row 0/1 outcomes of the metrics reported: accuracy (all rows), hallucination (absent rows)."""
    ex = result.examples
    out = {"accuracy": [bool(e["correct"]) for e in ex]}
    if name.startswith("vlm_scenes"):
        from components.benchmarks import _scenes

        out["hallucination_rate"] = [_scenes.yes_no(e["prediction"]) == "yes" for e in ex if e["kind"] == "absent"]
    return out


def smoke_dir(wings: bool = False) -> str:
    """A tiny random LLaVA saved to a temporary folder (tests/helpers/tiny_vlm.py), for ``--smoke``."""
    import tempfile

    from tests.helpers.tiny_vlm import save_tiny_llava

    return str(save_tiny_llava(Path(tempfile.mkdtemp(prefix="smoke-vlm-")) / "m", wings=wings))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="")
    ap.add_argument("--lora", default="")
    ap.add_argument("--wings", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--smoke", action="store_true", help="tiny random LLaVAs (zero-init Wings), tiny sizes")
    ap.add_argument("--n-scenes", type=int, default=60)
    ap.add_argument("--n-text", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cells", default="base,lora,wings", help="cells to run now (others come from --previous)")
    ap.add_argument("--previous", default="", help="a JSON written by this script: its cells are reused")
    args = ap.parse_args()
    if args.smoke:
        args.base = args.lora = smoke_dir()
        args.wings, args.n_scenes, args.n_text = smoke_dir(wings=True), 2, 4
        args.out = str(Path(args.wings).parent / "wings_forgetting.json")
    elif not (args.base and args.lora and args.wings and args.out):
        ap.error("--base, --lora, --wings and --out are required")

    import torch

    from tasks.vlm import load_vlm, text_only

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    tmp = Path(tempfile.mkdtemp(prefix="wings-bench-"))
    benches = {
        "vlm_scenes_random": f"vlm_scenes(n_scenes={args.n_scenes}, strategy=random, image_size=48)",
        "vlm_scenes_adversarial": f"vlm_scenes(n_scenes={args.n_scenes}, strategy=adversarial, image_size=48)",
        "icl_classification": f"icl_classification(n_examples={args.n_text})",
        "sst2": f"classification(source={sst2_file(tmp, args.n_text)}, labels=negative;positive, shots=2, "
                f"n_examples={args.n_text})",
    }
    from registry import specs

    built = {k: specs.parse(v).create("benchmark") for k, v in benches.items()}
    rows = {k: b.build("eval") for k, b in built.items()}
    cells = {"base": (args.base, "baseline"), "lora": (args.lora, "baseline"),
             "wings": (args.wings, f"wings(adapter={Path(args.wings) / 'wings'})")}
    results: dict = {"benchmarks": benches, "cells": {}, "n_rows": {k: len(v) for k, v in rows.items()},
                     "threads": torch.get_num_threads(), "argv": [sys.argv], "outcomes": {}}
    per_row: dict = {}
    if args.previous:
        prev = json.loads(Path(args.previous).read_text())
        if prev["n_rows"] != results["n_rows"]:
            raise SystemExit(f"--previous has other rows ({prev['n_rows']})")
        results["cells"], results["outcomes"] = prev["cells"], prev["outcomes"]
        results["argv"] = prev["argv"] + results["argv"]
        per_row = {tuple(k.split("|")): v for k, v in prev["outcomes"].items()}
    for cell, (model_dir, patch_spec) in cells.items():
        if cell not in args.cells.split(","):
            continue
        loaded = load_vlm.fn(model_dir)
        patch = specs.parse(patch_spec).create("patch")
        results["cells"][cell] = {"model": model_dir, "patch": patch_spec, "metrics": {}}
        for name, bench in built.items():
            start, load0 = time.perf_counter(), os.getloadavg()[0]
            if bench.needs_images:
                res = bench.evaluate(loaded.model, loaded.tokenizer, rows[name], batch_size=args.batch_size,
                                     patches=[patch])
            else:
                res = text_only(loaded.model, loaded.tokenizer, bench, rows[name], patch, args.batch_size)
            secs = time.perf_counter() - start
            per_row[(cell, name)] = outcomes(name, res)
            results["outcomes"][f"{cell}|{name}"] = per_row[(cell, name)]
            entry = {"seconds": round(secs, 1), "load_avg_1min": [load0, os.getloadavg()[0]]}
            for metric, vals in per_row[(cell, name)].items():
                entry[metric] = {"value": sum(vals) / max(len(vals), 1), "n": len(vals),
                                 "wilson95": wilson(sum(vals), len(vals))}
                if cell != "base" and ("base", name) in per_row:
                    entry[metric]["vs_base"] = paired_diff(per_row[("base", name)][metric], vals)
            results["cells"][cell]["metrics"][name] = entry
            print(cell, name, json.dumps({k: v for k, v in entry.items()}), flush=True)
        del loaded
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
