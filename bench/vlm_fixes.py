"""The VLM attention fixes on a trained VLM (demo-vlm): hallucination on absent objects, accuracy on the rest.

For each POPE strategy (random / popular / adversarial) and data seed, the same generated scene questions
(components/benchmarks/vlm_scenes.py) are answered greedily by the model with each component applied
(``VLMScenes.evaluate``, the code path of ``attnflow vlm-eval``). Reported per component, pooled over strategies
and seeds:

- ``hallucination_rate``: absent-object questions answered "yes" (lower is better), Clopper-Pearson 95% CI;
- ``accuracy_rest``: accuracy on every other question (present objects, counts, positions, text), CI as above;
- ``pope_f1`` / ``pope_accuracy`` over the yes/no questions, and accuracy per question kind;
- paired differences to ``baseline`` on the same questions (percentile bootstrap over questions, 2,000
  resamples, 95%), so a fix's effect is judged against the noise of this question set;
- wall seconds per component (one process, same machine).

``var(sink_dims=auto)`` is resolved here with ``find_sink_dims`` on the first batch of prompts (the proposed
dimensions are recorded). Components that cannot run on the model are reported as errors, not dropped.

    python bench/vlm_fixes.py --model ~/.attnflow/models/demo-vlm --json docs/results/vlm_fixes.json
    python bench/vlm_fixes.py --smoke          # tiny random LLaVA, 1 seed, a few scenes (plumbing check)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.benchmarks import _scenes  # noqa: E402
from components.benchmarks.vlm_scenes import TEMPLATE, VLMScenes, processor_size  # noqa: E402
from components.patches.var import find_sink_dims  # noqa: E402
from registry import specs  # noqa: E402
from tasks.pawn_metrics import binomial_ci  # noqa: E402

DEFAULT = ["baseline", "vhr", "visual_logit_boost(selection=all)", "visual_logit_boost(selection=inputs)",
           "var(sink_dims=auto)"]


def smoke_model():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import transformers as T

    from helpers.tiny import tokenizer
    from helpers.tiny_vlm import tiny_vlm

    tok = tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    proc = T.LlavaProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                            image_token="<image>", num_additional_image_tokens=1)
    return tiny_vlm("llava", image_token=tok.convert_tokens_to_ids("<image>"), vocab_size=len(tok)), proc


def _prompts(proc, rows) -> dict:
    size = processor_size(proc)
    proc.tokenizer.padding_side = "left"
    return dict(proc(images=[_scenes.render(r["scene"], size) for r in rows[:8]],
                     text=[TEMPLATE.format(image=proc.image_token, question=r["question"]) for r in rows[:8]],
                     return_tensors="pt", padding=True))


def auto_sink_dims(model, proc, rows) -> list[int]:
    with torch.no_grad():
        return list(find_sink_dims(model, _prompts(proc, rows)))


def sink_peaks(model, proc, rows, dims: list[int]) -> dict[int, dict[str, list[float]]]:
    """Per layer input: the largest |RMSNorm(h)| in each sink dimension over image tokens and over text tokens
    (VAR calls a token a sink when it exceeds tau in a sink dimension)."""
    enc = _prompts(proc, rows)
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states  # (L + 1) x (B, T, d)
    img = enc["input_ids"] == model.config.image_token_id  # (B, T)
    txt = enc["attention_mask"].bool() & ~img
    out = {}
    for layer, h in enumerate(hidden[:-1]):
        n = (h.float() * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6)).abs()  # (B, T, d)
        out[layer] = {"image": [float(n[..., d][img].max()) for d in dims],
                      "text": [float(n[..., d][txt].max()) for d in dims]}
    return out


def paired_diff(a: list[bool], b: list[bool], rng: random.Random, n: int = 2000) -> tuple[float, float, float]:
    """mean(b) - mean(a) over paired questions and its percentile bootstrap 95% interval."""
    m = len(a)
    diffs = [int(y) - int(x) for x, y in zip(a, b)]
    boots = sorted(sum(diffs[rng.randrange(m)] for _ in range(m)) / m for _ in range(n))
    return sum(diffs) / m, boots[int(0.025 * n)], boots[int(0.975 * n) - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="")
    ap.add_argument("--components", nargs="+", default=DEFAULT)
    ap.add_argument("--strategies", nargs="+", default=list(_scenes.STRATEGIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-scenes", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--sink-probe", action="store_true", help="only find var's sink dims and their peaks")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        model, proc = smoke_model()
        args.seeds, args.n_scenes, args.strategies = [0], 3, ["adversarial"]
        # a 2-layer random model: the patches act from layer 0, and VAR gets planted-free dimensions 0 and 1
        args.components = ["baseline", "vhr", "visual_logit_boost(selection=all, start_layer=0)",
                           "var(sink_dims=0;1, tau=0.5, start_layer=0)"]
    else:
        from transformers import AutoProcessor

        from components.modeling import load_vision_model

        if not args.model:
            ap.error("--model is required (a trained LLaVA-style folder, e.g. demo-vlm)")
        model, proc = load_vision_model(args.model), AutoProcessor.from_pretrained(args.model)
    cells = [(s, seed) for s in args.strategies for seed in args.seeds]
    data = {c: VLMScenes(n_scenes=args.n_scenes, strategy=c[0], seed=c[1]).build("eval") for c in cells}
    texts = list(args.components)
    sink_dims, peaks = None, None
    if any("sink_dims=auto" in t for t in texts):
        sink_dims = auto_sink_dims(model, proc, data[cells[0]])
        texts = [t.replace("sink_dims=auto", "sink_dims=" + ";".join(map(str, sink_dims))) for t in texts]
        peaks = sink_peaks(model, proc, data[cells[0]], sink_dims)
        top = {k: max(max(v[k]) for v in peaks.values()) for k in ("image", "text")}
        print(f"var: sink dims {sink_dims}; largest |RMSNorm(h)| there: image tokens {top['image']:.1f}, "
              f"text tokens {top['text']:.1f} (tau 20 marks a sink)", flush=True)
    if args.sink_probe:
        return
    results: dict[str, dict] = {}
    for text in texts:
        examples, start = [], time.perf_counter()
        try:
            spec = specs.resolved(text, "patch")
            for c in cells:
                res = VLMScenes(n_scenes=args.n_scenes, strategy=c[0], seed=c[1]).evaluate(
                    model, proc, data[c], batch_size=args.batch_size, patches=[spec.component])
                examples += res.examples
        except Exception as exc:  # noqa: BLE001 - reported per component, the others still run
            results[text] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{text}: {results[text]['error']}", flush=True)
            continue
        results[text] = {"examples": examples, "seconds": time.perf_counter() - start}
        print(f"{text}: {len(examples)} answers in {results[text]['seconds']:.0f}s", flush=True)
    rng = random.Random(0)
    base = results.get(texts[0], {}).get("examples")
    table = {}
    for text, r in results.items():
        if "error" in r:
            table[text] = r
            continue
        ex = r["examples"]
        absent = [_scenes.yes_no(e["prediction"]) == "yes" for e in ex if e["kind"] == "absent"]
        rest = [e["correct"] for e in ex if e["kind"] != "absent"]
        yn = [e for e in ex if e["kind"] in ("exists", "absent")]
        pope = _scenes.pope_metrics([e["prediction"] for e in yn], [e["answer"] for e in yn])
        row = {"n_absent": len(absent), "hallucination_rate": sum(absent) / len(absent),
               "hallucination_ci": binomial_ci(sum(absent), len(absent)), "n_rest": len(rest),
               "accuracy_rest": sum(rest) / len(rest), "accuracy_rest_ci": binomial_ci(sum(rest), len(rest)),
               "pope_f1": pope["f1"], "pope_accuracy": pope["accuracy"], "yes_ratio": pope["yes_ratio"],
               "seconds": r["seconds"],
               "accuracy_by_kind": {k: sum(e["correct"] for e in g) / len(g) for k in ("exists", "absent", "count",
                                    "position", "text") if (g := [e for e in ex if e["kind"] == k])}}
        if base is not None and text != texts[0]:
            b_abs = [_scenes.yes_no(e["prediction"]) == "yes" for e in base if e["kind"] == "absent"]
            b_rest = [e["correct"] for e in base if e["kind"] != "absent"]
            row["hallucination_minus_baseline"] = paired_diff(b_abs, absent, rng)
            row["accuracy_rest_minus_baseline"] = paired_diff(b_rest, rest, rng)
        table[text] = row
        print(f"{text:40s} halluc {row['hallucination_rate']:.3f} [{row['hallucination_ci'][0]:.3f}, "
              f"{row['hallucination_ci'][1]:.3f}]  acc_rest {row['accuracy_rest']:.3f}  f1 {row['pope_f1']:.3f}  "
              f"yes {row['yes_ratio']:.2f}  {row['seconds']:.0f}s", flush=True)
    out = {"model": args.model or "smoke", "strategies": args.strategies, "seeds": args.seeds,
           "n_scenes": args.n_scenes, "sink_dims": sink_dims,
           "sink_peaks": peaks if sink_dims is not None else None, "components": texts, "results": table}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=list))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
