"""Run the few-shot and steering claims (tasks/claims_fewshot.py) on a real model with the shared real data.

Converts SST-2, AG News and TREC from ../shared/data/tasks into the JSONL files (``text``, ``label`` = label word)
the claims read, texts cut to their first ``--max-words`` words (for time), then runs each claim and prints one
table row per claim; ``--json`` keeps every figure. Criteria and sizes: docs/reproduce-fewshot.md.

    ATTNFLOW_HOME=... python bench/reproduce_fewshot.py --model smollm2-135m --seeds 0,1,2
    python bench/reproduce_fewshot.py --model demo --claims pasta --seeds 0,1
    python bench/reproduce_fewshot.py --smoke     # the pasta claim (built-in prompts) on the demo model, 1 per
                                                  # instruction, 4 new tokens; the other claims need ../shared data
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AGNEWS = {"1": "World", "2": "Sports", "3": "Business", "4": "Science"}
TREC = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person", "LOC": "location",
        "NUM": "number"}


def _cut(text: str, max_words: int) -> str:
    return " ".join(text.split()[:max_words])


def convert(shared: Path, out: Path, max_words: int) -> dict[str, str]:
    """JSONL files of the three datasets under ``out``; returns key -> path."""
    tasks = shared / "data" / "tasks"
    rows: dict[str, list[dict[str, str]]] = {"sst2": [], "agnews": [], "trec": []}
    for name in ("stsa.binary.dev", "stsa.binary.test"):  # SST-2: "<0|1> sentence"
        for line in (tasks / "sst2" / name).read_text().splitlines():
            if line.strip():
                label, text = line.split(" ", 1)
                rows["sst2"].append({"text": text, "label": ["negative", "positive"][int(label)]})
    with open(tasks / "agnews" / "test.csv", newline="") as f:  # AG News: class index, title, description
        for rec in csv.DictReader(f):
            rows["agnews"].append({"text": f"{rec['Title']}. {rec['Description']}",
                                   "label": AGNEWS[rec["Class Index"]]})
    for name in ("test.txt", "train.txt"):  # TREC: "COARSE:fine question"
        for line in (tasks / "trec" / name).read_text(encoding="latin-1").splitlines():
            if line.strip():
                tag, text = line.split(" ", 1)
                rows["trec"].append({"text": text, "label": TREC[tag.split(":")[0]]})
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, recs in rows.items():
        path = out / f"{key}.jsonl"
        tmp = path.with_suffix(".part")
        tmp.write_text("".join(json.dumps({"text": _cut(r["text"], max_words), "label": r["label"]}) + "\n"
                               for r in recs))
        os.replace(tmp, path)
        paths[key] = str(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--claims", default="act,zerotuning_supervised,zerotuning_unsupervised,soft_injection,pasta")
    ap.add_argument("--datasets", default="sst2,agnews,trec")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-words", type=int, default=30)
    ap.add_argument("--options", default="{}", help="JSON options for the classification claims (sizes)")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("ATTNFLOW_SHARED", REPO / ".." / "shared")))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--incremental", action="store_true",
                    help="run each classification claim on the first 1, 2, ... datasets (cached evaluations make "
                         "the re-runs cheap), printing and saving each, so a stopped run still leaves results")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.claims, args.seeds, args.datasets = "demo", "pasta", "0,1", ""
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    import torch

    torch.set_num_threads(int(os.environ.get("ATTNFLOW_THREADS", "1")))
    from infra.settings import settings
    from tasks.claims_fewshot import CLAIMS

    data = {} if args.smoke else convert(args.shared, settings().cache_dir / "claims-shared-data", args.max_words)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    keys = args.datasets.split(",")
    runs = [(name, keys[:i]) for name in args.claims.split(",")
            for i in (range(1, len(keys) + 1) if args.incremental and name != "pasta" else [len(keys)])]
    for name, use in runs:
        opts = {} if name == "pasta" else {**json.loads(args.options), "datasets": use}
        if args.smoke:
            opts = {"per_instruction": 1, "max_new_tokens": 4}
        r = CLAIMS[name].run(args.model, seeds=seeds, data=data, dtype=args.dtype, progress=False, **opts)
        r["datasets"] = use if name != "pasta" else []
        results.append(r)
        ci = r["ci"].get("gain")
        base = r["figures"].get("baseline_acc", r["figures"].get("baseline_compliance", float("nan")))
        print(f"| {name} ({','.join(r['datasets'])}) | {base:.3f}"
              f" | {r['figures'].get('method_acc', r['figures'].get('method_compliance', float('nan'))):.3f}"
              f" | {r['figures'].get('gain', float('nan')):+.3f} | {f'[{ci[0]:+.3f}, {ci[1]:+.3f}]' if ci else '-'}"
              f" | {r['verdict']} | {r['wall_s']:.0f}s |\n  {r['reason']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
