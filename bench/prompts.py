"""Do the prompt components help a small model? Plain prompt vs PGI vs SCA vs retrieval-augmented QA (RAG), on
multiple-choice QA and classification, accuracy per data seed (the seed redraws the few-shot demonstrations) with
a 95% t-interval over seeds and the paired difference to the plain prompt.

Tasks (benchmarks only; the product reads user files the same way):

- ``truthfulqa``: TruthfulQA as 4-way multiple choice (best answer + 3 incorrect answers, shuffled with a fixed
  seed), ``multiple_choice`` with 1 shot (../shared/data/tasks/truthfulqa);
- ``sst2``, ``rte``: ``classification`` with 2 shots (../shared/data/tasks);
- ``planted``: synthetic planted-fact QA, generated here: fictional countries with a capital and an export, one
  paragraph each in a corpus, 4-way multiple choice (1 shot) whose wrong options are other countries' facts. It
  is the RAG task: no offline corpus is fair for TruthfulQA (its sources are URLs; text built from its reference answers
  would leak them), so RAG is measured where the evidence exists and the model cannot know the answer.

    ATTNFLOW_SHARED=../shared ATTNFLOW_HOME=~/bench \
        python bench/prompts.py --model smollm2-135m --n 60 --seeds 0,1,2 --json out.json
    python bench/prompts.py --smoke    # demo model, generated rows only, a few examples

Rewrites run on the unpatched model, then each cell's patch (if any) is applied while scoring, as the compare
flow does (``tasks/evaluate.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("ATTNFLOW_SHARED", REPO / ".." / "shared")) / "data" / "tasks"
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

SYL = ["ka", "lo", "ri", "zu", "mek", "tan", "vor", "sil", "qua", "dre", "pol", "nix", "bar", "fen", "gul", "hoz"]
EXPORTS = ["copper", "salt", "wool", "tea", "glass", "timber", "silk", "coffee", "tin", "amber", "rice", "cotton"]


def word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(SYL) for _ in range(n)).capitalize()


def planted(root: Path, n: int, seed: int = 7) -> tuple[Path, Path]:
    """(questions JSONL, corpus JSONL) of synthetic planted facts."""
    rng = random.Random(seed)
    names = list(dict.fromkeys(word(rng, 3) for _ in range(4 * n)))[: 2 * n]
    countries = [{"name": c, "capital": word(rng, 2) + "burg", "export": rng.choice(EXPORTS)} for c in names]
    corpus = [{"text": f"{c['name']} is a small country beyond the mountains. Its capital city is {c['capital']}. "
                       f"The main export of {c['name']} is {c['export']}."} for c in countries]
    qs = []
    for i, c in enumerate(countries[:n]):
        if i % 2 == 0:
            wrong = rng.sample([o["capital"] for o in countries if o is not c], 3)
            q, right = f"What is the capital city of {c['name']}?", c["capital"]
        else:
            wrong = rng.sample([e for e in EXPORTS if e != c["export"]], 3)
            q, right = f"What is the main export of {c['name']}?", c["export"]
        opts = wrong + [right]
        rng.shuffle(opts)
        qs.append({"question": q, "choices": opts, "answer": opts.index(right)})
    qpath, cpath = root / "planted.jsonl", root / "planted_corpus.jsonl"
    qpath.write_text("".join(json.dumps(r) + "\n" for r in qs))
    cpath.write_text("".join(json.dumps(r) + "\n" for r in corpus))
    return qpath, cpath


def truthfulqa(root: Path) -> Path:
    rng = random.Random(0)
    out = []
    with (SHARED / "truthfulqa" / "TruthfulQA.csv").open(newline="") as fh:
        for rec in csv.DictReader(fh):
            wrong = [w.strip() for w in rec["Incorrect Answers"].split(";") if w.strip()][:3]
            if len(wrong) < 3:
                continue
            opts = wrong + [rec["Best Answer"].strip()]
            rng.shuffle(opts)
            out.append({"question": rec["Question"], "choices": opts, "answer": opts.index(rec["Best Answer"].strip())})
    path = root / "truthfulqa_mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def sst2(root: Path) -> Path:
    lines = (SHARED / "sst2" / "stsa.binary.dev").read_text().splitlines()
    path = root / "sst2.jsonl"
    path.write_text("".join(json.dumps({"text": ln[2:], "label": int(ln[0])}) + "\n" for ln in lines if ln[:1] in "01"))
    return path


def rte(root: Path) -> Path:
    rows = [json.loads(ln) for ln in (SHARED / "rte" / "val.jsonl").read_text().splitlines() if ln.strip()]
    path = root / "rte.jsonl"
    path.write_text("".join(json.dumps({"text": f"{r['premise']} Question: {r['hypothesis']} True or False?",
                                        "label": "True" if r["label"] == "entailment" else "False"}) + "\n"
                            for r in rows))
    return path


def tasks(root: Path, n: int, smoke: bool) -> dict[str, tuple[str, str | None]]:
    """name -> (benchmark spec, RAG corpus or None)."""
    qpath, cpath = planted(root, n + max(n, 20))  # the rows after the first n are the demonstration pool
    out = {"planted": (f"multiple_choice(source={qpath}, shots=1, n_examples={n})", str(cpath))}
    if smoke:
        return out
    out["truthfulqa"] = (f"multiple_choice(source={truthfulqa(root)}, shots=1, n_examples={n})", None)
    out["sst2"] = (f"classification(source={sst2(root)}, labels=negative;positive, shots=2, n_examples={n})", None)
    out["rte"] = (f"classification(source={rte(root)}, labels=False;True, shots=2, n_examples={n}, "
                  "template=Input: {text}\\nAnswer:)", None)
    return out


def ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over seeds (0 for one seed)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def run(model_ref: str, names: list[str], cells: list[str], seeds: list[int], n: int, smoke: bool) -> dict:
    import torch

    from components import modeling
    from registry.specs import parse
    from tasks.plan import _cells

    torch.set_num_threads(2)
    model, tok = modeling.load_model(model_ref, dtype="float32")
    root = Path(tempfile.mkdtemp(prefix="bench-prompts-"))
    specs = tasks(root, n, smoke)
    results: dict = {}
    for name in names:
        bench_spec, corpus = specs[name]
        results[name] = {}
        for cell in cells:
            if "rag" in cell and corpus is None:
                continue
            text = cell.replace("{corpus}", corpus or "")
            (p_spec, patch_spec), = _cells([text])
            prompt = p_spec.create("prompt") if p_spec else None
            patch = patch_spec.create("patch")
            accs, secs = [], 0.0
            for seed in seeds:
                bench = parse(bench_spec).create("benchmark").replace(seed=seed)
                rows = bench.build("eval")
                start = time.perf_counter()
                if prompt is not None:
                    rows = prompt.rewrite(model, tok, rows)
                with patch.applied(model) as session:
                    res = bench.evaluate(model, tok, rows, session=session, batch_size=8)
                secs += time.perf_counter() - start
                accs.append(res.metrics["accuracy"])
            results[name][cell] = {"acc": accs, "seconds": secs}
            m, h = ci(accs)
            print(f"{name:<11} {cell[:48]:<48} acc {m:.3f} ± {h:.3f}  per seed {accs}  ({secs:.0f}s)", flush=True)
    return results


def table(results: dict, seeds: list[int]) -> str:
    lines = [f"| task | cell | accuracy (mean ± 95% CI over {len(seeds)} seeds) | vs plain (paired) |",
             "|---|---|---|---|"]
    for name, cells in results.items():
        plain = cells.get("baseline", {}).get("acc")
        for cell, r in cells.items():
            m, h = ci(r["acc"])
            diff = ""
            if plain and cell != "baseline":
                dm, dh = ci([a - b for a, b in zip(r["acc"], plain)])
                diff = f"{dm:+.3f} ± {dh:.3f}"
            lines.append(f"| {name} | {cell} | {m:.3f} ± {h:.3f} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="planted,truthfulqa,sst2,rte")
    ap.add_argument("--cells", default="baseline|pgi|sca(ig_steps=8)|sca(ig_steps=8, pause_tokens=1)|"
                                       "rag(corpus={corpus}, k=3)|rag(corpus={corpus}, k=3, scoring=mixture)|"
                                       "pgi+zerotuning(gamma=2)|zerotuning(gamma=2)",
                    help="'|'-separated compare cells; {corpus} is the task's RAG corpus")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=60, help="evaluation rows per task")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.tasks, args.seeds, args.n = str(REPO / "assets" / "demo-lm"), "planted", "0", 4
        args.cells = ("baseline|pgi|sca(n_paraphrases=1, sampling=greedy, max_new_tokens=4, ig_steps=2, "
                      "pause_tokens=1)|rag(corpus={corpus}, k=2)|pgi+zerotuning(gamma=2)")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = run(args.model, args.tasks.split(","), args.cells.split("|"), seeds, args.n, args.smoke)
    print(f"\n## prompt components on {Path(args.model).name} (n={args.n} per seed)\n\n{table(results, seeds)}\n")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "n": args.n, "seeds": seeds, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
