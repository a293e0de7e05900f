"""The three training-dynamics studies: their sweep points, claim checks, tables and figures.

Points are plain dicts (see :mod:`components.lm.dynamics`); each builder validates its flow's parameters first, so
a bad value fails before any training with a message naming the parameter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.base import ParamError
from components.lm import claims
from components.lm.dynamics import count_params, make_data, matched_intermediate
from tasks import dynamics_plots as figs

# -- shared --------------------------------------------------------------------------------------------------------


def _need(name: str, values: list[Any], minimum: int = 1) -> None:
    if len(values) < minimum:
        raise ParamError(f"{name} needs at least {minimum} value(s), got {values!r}")


def _positive(name: str, values: list[float]) -> None:
    bad = [v for v in values if not v > 0]
    if bad:
        raise ParamError(f"{name}: values must be > 0, got {bad}")


def _point(label: str, model: dict[str, Any], train: dict[str, Any], data: dict[str, Any],
           probe: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "model": model, "train": {"threads": 1, **train}, "data": data, "probe": probe}


def _by(results: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in results if all(r["tags"].get(k) == v for k, v in where.items())]


def tag(results: list[dict[str, Any]], points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attach each point's study tags (kept in the point dict) to its result."""
    return [{**r, "tags": p.get("tags", {})} for r, p in zip(results, points)]


# -- sink-emergence ------------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE, task_run_name="plan sink-emergence")
def sink_points(attentions: list[str], seeds: list[int], steps: int, lr: float, weight_decay: float, warmup: int,
                batch_size: int, hidden: int, layers: int, heads: int, seq_len: int, data: str,
                weight_decays: list[float], lrs: list[float], n_sequences: list[int], probe_every: int,
                probe_n: int) -> list[dict[str, Any]]:
    """softmax vs sigmoid-no-norm over seeds, plus softmax sweeps of weight decay, LR and data amount (seed 0)."""
    _need("attentions", attentions, 2)
    _need("seeds", seeds)
    _positive("lrs", lrs)
    if data not in ("bb", "bb_nobos"):
        raise ParamError(f"data={data!r}: the sink study trains on the bigram-backcopy data, bb or bb_nobos")
    if steps < 1 or probe_every < 1:
        raise ParamError("steps and probe_every must be >= 1")
    model = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": heads, "context": seq_len,
             "intermediate": int(hidden * 8 / 3) // 4 * 4,
             "vocab_size": len(make_data({"source": data, "seq_len": seq_len}).tokens)}
    base = {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "min_lr_ratio": 1.0,
            "weight_decay": weight_decay, "log_every": min(50, steps)}
    dat = {"source": data, "seq_len": seq_len, "seed": 0}
    probe = {"every": probe_every, "n": probe_n, "sink": True}
    points = []
    for att in attentions:
        for seed in seeds:
            points.append({**_point(f"{att} seed {seed}", {**model, "attention": att}, {**base, "seed": seed}, dat,
                                    probe), "tags": {"attention": att, "seed": seed, "sweep": "base"}})
    sweeps = [("weight_decay", "weight_decay", weight_decays), ("lr", "lr", lrs)]
    for name, knob, values in sweeps:
        for v in values:
            points.append({**_point(f"{attentions[0]} {name}={v:g}", {**model, "attention": attentions[0]},
                                    {**base, knob: v, "seed": seeds[0]}, dat, probe),
                           "tags": {"attention": attentions[0], "sweep": name, "value": v}})
    for n in n_sequences:
        points.append({**_point(f"{attentions[0]} n_sequences={n}", {**model, "attention": attentions[0]},
                                {**base, "seed": seeds[0]}, {**dat, "n_sequences": n}, probe),
                       "tags": {"attention": attentions[0], "sweep": "n_sequences", "value": n}})
    return points


@task(cache_policy=NO_CACHE, task_run_name="check sink claims")
def sink_report(results: list[dict[str, Any]], attentions: list[str], weight_decay: float, lr: float,
                min_sink: float) -> dict[str, Any]:
    """Claims: sink with softmax (attentions[0]) but not with attentions[1]; sweep directions when swept."""
    first, second = attentions[0], attentions[1]
    checks = [claims.sink_claim(_by(results, attention=first, sweep="base"),
                                _by(results, attention=second, sweep="base"), min_sink=min_sink)]
    base0 = [r for r in _by(results, attention=first, sweep="base")][:1]
    for sweep, default, more in (("weight_decay", weight_decay, "high"), ("lr", lr, "high"),
                                 ("n_sequences", math.inf, "high")):
        pts = _by(results, sweep=sweep)
        if pts:
            groups = {float(r["tags"]["value"]): [r] for r in pts}
            groups.setdefault(float(default), base0)
            checks.append(claims.sweep_claim(sweep.replace("_", " "), groups, more))
    table = [{"run": r["label"], "Sink_1 %": r["final"].get("sink1"), "alpha_0": r["final"].get("alpha0"),
              "held-out loss": r["final"].get("loss"), "max attn logit": r["final"].get("max_attn_logit"),
              "seconds": r["seconds"]} for r in results]
    figures = {"sink_over_training": figs.curves(results, ["sink1", "alpha0"], by="attention",
                                                 where={"sweep": "base"}, title="Sink_1 (%) and alpha_0")}
    swept = [r for r in results if r["tags"].get("sweep") != "base"]
    if swept:
        figures["sink_sweeps"] = figs.sweep_bars(swept, "sink1", "final Sink_1 (%) by sweep")
    return {"checks": checks, "verdict": claims.overall(checks, primary=1), "table": table, "figures": figures}


# -- instability-proxies ---------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE, task_run_name="plan instability-proxies")
def proxy_points(widths: list[int], lrs: list[float], qk_layernorm: list[bool], z_losses: list[float],
                 seeds: list[int], steps: int, warmup: int, batch_size: int, layers: int, head_dim: int,
                 seq_len: int, weight_decay: float, data: str, probe_every: int,
                 probe_n: int) -> list[dict[str, Any]]:
    """Width x LR x qk-layernorm x z-loss grid with the paper's recipe (AdamW 0.9/0.95, clip 1, warm-up, cosine to
    1e-5, independent weight decay)."""
    _need("widths", widths)
    _need("lrs", lrs, 2)
    _need("qk_layernorm", qk_layernorm)
    _need("z_losses", z_losses)
    _positive("lrs", lrs)
    bad = [w for w in widths if w % head_dim]
    if bad:
        raise ParamError(f"widths {bad} are not multiples of head_dim={head_dim}")
    vocab = len(make_data({"source": data, "seq_len": seq_len}).tokens)
    probe = {"every": probe_every, "n": probe_n, "sink": False}
    points = []
    for width in widths:
        heads = width // head_dim
        for qk in qk_layernorm:
            for z in z_losses:
                for lr in lrs:
                    for seed in seeds:
                        model = {"layers": layers, "hidden": width, "heads": heads, "kv_heads": heads,
                                 "intermediate": 4 * width, "context": seq_len, "vocab_size": vocab,
                                 "attention": "softmax", "qk_layernorm": qk}
                        train = {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                                 "min_lr_ratio": min(1.0, 1e-5 / lr), "weight_decay": weight_decay,
                                 "independent_weight_decay": True, "z_loss": z, "seed": seed,
                                 "log_every": min(25, steps)}
                        label = f"d{width} {'qkln' if qk else 'base'} z={z:g} lr={lr:g} seed {seed}"
                        points.append({**_point(label, model, train, {"source": data, "seq_len": seq_len},
                                                probe),
                                       "tags": {"width": width, "qkln": qk, "z": z, "lr": lr, "seed": seed}})
    return points


def _setting(results: list[dict[str, Any]], **where: Any) -> dict[float, dict[str, Any]]:
    """LR -> a seed-averaged point of one setting (final probes averaged; probe curves concatenated)."""
    out: dict[float, dict[str, Any]] = {}
    for lr in sorted({r["tags"]["lr"] for r in _by(results, **where)}):
        pts = _by(results, **where, lr=lr)
        keys = {k for p in pts for k in p["final"]}
        out[lr] = {"final": {k: claims.mean(p["final"].get(k, math.inf) for p in pts) if all(
                       math.isfinite(p["final"].get(k, math.inf)) for p in pts) else math.inf for k in keys},
                   "probes": [row for p in pts for row in p["probes"]],
                   "init_loss": claims.mean(p["init_loss"] for p in pts),
                   "diverged_at": next((p["diverged_at"] for p in pts if p["diverged_at"] is not None), None)}
    return out


@task(cache_policy=NO_CACHE, task_run_name="check instability claims")
def proxy_report(results: list[dict[str, Any]], widths: list[int], qk_layernorm: list[bool], z_losses: list[float],
                 logit_threshold: float, sensitivity_ratio: float) -> dict[str, Any]:
    """Claims per width: logit growth without qk-LN only; lower LR sensitivity with qk-LN; z-loss and log Z."""
    checks, secondary = [], []
    z_main = min(z_losses, key=lambda z: abs(z - 1e-4))
    for width in widths:
        if {False, True} <= set(qk_layernorm):
            base = _setting(results, width=width, qkln=False, z=z_main)
            qkln = _setting(results, width=width, qkln=True, z=z_main)
            checks.append(claims.logit_growth_claim(base, qkln, width, logit_threshold))
            checks.append(claims.sensitivity_claim(base, qkln, width, sensitivity_ratio))
        if len(z_losses) > 1 and 0.0 in z_losses:
            z_on = max(z_losses)
            secondary.append(claims.zloss_claim(_setting(results, width=width, qkln=qk_layernorm[0], z=0.0),
                                                _setting(results, width=width, qkln=qk_layernorm[0], z=z_on)))
    table = []
    for width in widths:
        for qk in qk_layernorm:
            for z in z_losses:
                setting = _setting(results, width=width, qkln=qk, z=z)
                row = {"width": width, "qk-LN": qk, "z-loss": z, "LR sensitivity": claims.sensitivity(setting)}
                for lr, p in setting.items():
                    row[f"loss@{lr:g}"] = p["final"].get("loss")
                    row[f"maxlogit@{lr:g}"] = p["final"].get("max_attn_logit")
                table.append(row)
    figures = {"loss_vs_lr": figs.versus_lr(results, "loss", "final held-out loss", log=False),
               "max_logit_vs_lr": figs.versus_lr(results, "max_attn_logit", "max attention logit", log=True),
               "log_z_vs_lr": figs.versus_lr(results, "log_z", "output log Z", log=False),
               "max_logit_over_training": figs.curves(
                   [r for r in results if r["tags"]["lr"] == max(x["tags"]["lr"] for x in results)],
                   ["max_attn_logit"], by="label", where={}, title="max attention logit at the highest LR",
                   log=True)}
    verdict = claims.overall(checks) if checks else claims.INCONCLUSIVE
    return {"checks": checks + secondary, "verdict": verdict, "table": table, "figures": figures}


# -- arch-compare ----------------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE, task_run_name="plan arch-compare")
def arch_points(variants: list[str], baseline: str, seeds: list[int], steps: int, lr: float, warmup: int,
                weight_decay: float, batch_size: int, hidden: int, layers: int, heads: int, seq_len: int, data: str,
                equal_params: bool, probe_every: int, probe_n: int) -> list[dict[str, Any]]:
    """Baseline and variants on the same data and seeds; variants' SwiGLU width matched to the baseline's size."""
    _need("seeds", seeds, 1)
    if baseline in variants:
        variants = [v for v in variants if v != baseline]
    _need("variants", variants)
    vocab = len(make_data({"source": data, "seq_len": seq_len}).tokens)
    base_model = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": heads, "context": seq_len,
                  "intermediate": int(hidden * 8 / 3) // 4 * 4, "vocab_size": vocab}
    target = count_params({**base_model, "attention": baseline}, vocab)
    train = {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "min_lr_ratio": 0.1,
             "weight_decay": weight_decay, "log_every": min(25, steps)}
    probe = {"every": probe_every, "n": probe_n, "sink": False}
    dat = {"source": data, "seq_len": seq_len, "seed": 0}
    points = []
    for att in [baseline, *variants]:
        model = {**base_model, "attention": att}
        if equal_params and att != baseline:
            model["intermediate"], _ = matched_intermediate(model, vocab, target)
        for seed in seeds:
            points.append({**_point(f"{att} seed {seed}", model, {**train, "seed": seed}, dat, probe),
                           "tags": {"attention": att, "seed": seed, "baseline": att == baseline}})
    return points


@task(cache_policy=NO_CACHE, task_run_name="kernel equivalence checks")
def kernel_checks() -> list[dict[str, Any]]:
    """The pass criteria that need no training: CMHA at delta = 1, b = 0 equals RoPE attention; tiled lightning
    equals the quadratic form at a length that is not a multiple of the block."""
    from components.kernels.lightning import lightning_tiled, linear_attention
    from components.lm.model import build_model
    from components.lm.preset import ModelSpec
    from components.lm.synthetic import Vocab

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (2, 48), generator=gen)
    logits = []
    for att in ("softmax", "complex(init=rope)"):
        model = build_model(ModelSpec(layers=2, hidden=64, heads=8, kv_heads=8, context=64, vocab_size=64,
                                      attention=att), Vocab(64, 0, 0, 0), seed=0).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    q, k, v = torch.randn(3, 2, 4, 150, 16, generator=gen).unbind(0)
    slopes = torch.tensor([0.5, 0.1, 0.02, 0.001])
    tiled = lightning_tiled(q, k, v, slopes, 64)
    naive = linear_attention(q, k, v, slopes)
    rel = float((tiled - naive).abs().max() / naive.abs().max())
    return [claims.equality_check("CMHA with delta = 1, b = 0 equals RoPE attention (logits)",
                                  float((logits[0] - logits[1]).abs().max()), 1e-5),
            claims.equality_check("Tiled lightning equals [(QK^T) * M] V at T = 150, block 64 (relative)", rel, 1e-5)]


@task(cache_policy=NO_CACHE, task_run_name="check architecture claims")
def arch_report(results: list[dict[str, Any]], baseline: str, equivalences: list[dict[str, Any]]) -> dict[str, Any]:
    """Each variant against the baseline (paper claim: the variant is better), plus the equivalence checks."""
    base = _by(results, attention=baseline)
    checks = []
    for att in dict.fromkeys(r["tags"]["attention"] for r in results if not r["tags"]["baseline"]):
        checks.append(claims.better_claim(f"{att} reaches a lower loss than {baseline} at equal parameters",
                                          _by(results, attention=att), base))
    table = []
    for att in dict.fromkeys(r["tags"]["attention"] for r in results):
        pts = _by(results, attention=att)
        table.append({"attention": att, "params": pts[0]["n_params"], "seeds": len(pts),
                      "final held-out loss": claims.final(pts, "loss"),
                      "train seconds": claims.mean(p["seconds"] for p in pts)})
    figures = {"loss_curves": figs.curves(results, ["loss"], by="attention", where={},
                                          title="held-out loss (mean over seeds, band = min..max)"),
               "train_loss_curves": figs.train_curves(results, by="attention")}
    verdict = claims.overall(checks)
    return {"checks": checks + equivalences, "verdict": verdict, "table": table, "figures": figures}
