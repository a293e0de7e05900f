"""Tasks of the export flow: validate, export to ONNX, fuse, verify parity, benchmark, manifest, MLflow.

The export directory is built under a temporary name beside ``out`` and renamed into place once its manifest is
written, so a crash never leaves a half-written export under the final name. A failed parity check still moves the
directory into place (for inspection), marks the MLflow run FAILED and registers nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NO_CACHE

from components import modeling
from components.kernels.base import kernel_of
from components.onnx import export as onnx_export
from components.onnx import optimize as onnx_optimize
from components.onnx.parity import DEFAULT_MULTIPLE, REAL_TEXT, check_parity
from components.onnx.speed import measure_speed
from components.patches.baseline import Baseline
from infra.settings import settings
from registry import specs
from registry.specs import spec_text
from tasks import plots, runs, tracking
from tasks.evaluate import component_record
from tasks.io import write_json
from tasks.models import LoadedModel, check_model
from tasks.plan import resolve_refs
from tasks.retry import transient

MANIFEST = "manifest.json"


class ParityError(RuntimeError):
    """The exported graph does not reproduce the patched PyTorch model within the parity gate."""


@dataclass
class ExportPlan:
    """A validated export request: pinned component spec, model, target and where the result goes."""

    model: str
    model_name: str
    component: str  # name@x.y.z(params)
    optimize: str
    form: str
    out_dir: str
    registered_name: str
    parity_lengths: list[int]
    multiple: float
    speed_lengths: list[int]
    opset: int | None = None


def registered_name(model_name: str, component_name: str) -> str:
    return f"attnflow.onnx.{model_name}.{component_name}"


@task(cache_policy=NO_CACHE, task_run_name="validate export")
def plan_export(model: str, component: str, params: dict[str, Any], optimize: str, out: str | None,
                form: str = "bias", parity_lengths: list[int] | None = None, multiple: float | None = None,
                speed_lengths: list[int] | None = None, trust_remote_code: bool = False,
                opset: int | None = None) -> ExportPlan:
    """Check everything before any model is loaded; raises with a message naming the problem."""
    spec = specs.parse(component)
    comp = resolve_refs(specs.Spec(spec.name, spec.version, {**spec.params, **params})).create("patch")
    onnx_export.check_exportable([comp])
    if optimize not in onnx_optimize.TARGETS:
        raise ValueError(f"--optimize {optimize!r} is not one of {', '.join(onnx_optimize.TARGETS)}")
    if form not in onnx_export.FORMS:
        raise ValueError(f"attention form {form!r} is not one of {', '.join(onnx_export.FORMS)}")
    if opset is not None and not 18 <= opset <= 23:
        raise ValueError(f"--opset {opset} is not supported: use 18 to 23 (default: the exporter's, 20)")
    multiple = DEFAULT_MULTIPLE if multiple is None else multiple
    if not multiple > 0:
        raise ValueError(f"parity multiple {multiple!r} must be > 0 (the allowed error as a multiple of PyTorch's "
                         f"own float32 error; default {DEFAULT_MULTIPLE:g})")
    ref = check_model(model, trust_remote_code=trust_remote_code)
    config = modeling.load_config(ref, trust_remote_code=trust_remote_code)
    comp.check_model(config)
    kernel, _ = kernel_of(config)
    if kernel is not None and not kernel.patchable and not isinstance(comp, Baseline):
        raise ValueError(f"model {ref.name!r} uses the attention kernel {kernel.spec_text()}: attnflow patches edit "
                         f"softmax attention and cannot apply {comp.ref} to it; export it with the component "
                         "'baseline' (the default)")
    limit = onnx_export.max_positions(config)
    parity_lengths, speed_lengths = list(parity_lengths or [16, 64]), list(speed_lengths or [])
    for what, lengths in (("parity length", parity_lengths), ("speed length", speed_lengths)):
        bad = [n for n in lengths if not 2 <= n <= limit]
        if bad:
            raise ValueError(f"{what}(s) {bad} outside [2, {limit}] (the model's maximum positions)")
    default = settings().home / "onnx" / f"{ref.name}-{comp.component_name}-{comp.fingerprint()[:8]}"
    out_dir = Path(out).expanduser() if out else default
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())):
        raise ValueError(f"--out {str(out_dir)!r} exists and is not an attnflow export directory; "
                              "choose an empty or new directory")
    return ExportPlan(model=model, model_name=ref.name, component=spec_text(comp), optimize=optimize, form=form,
                      out_dir=str(out_dir.resolve()), registered_name=registered_name(ref.name, comp.component_name),
                      parity_lengths=parity_lengths, multiple=float(multiple), speed_lengths=speed_lengths,
                      opset=opset)


def _component(plan: ExportPlan) -> Any:
    return specs.parse(plan.component).create("patch")


def graphs_key(loaded: LoadedModel, plan: ExportPlan, kv_cache: bool) -> str:
    """Same weights + same component code/params + same export code and options -> the same exported graphs."""
    parts = [loaded.fingerprint, _component(plan).fingerprint(), kv_cache, plan.form, plan.opset,
             hashlib.sha256(Path(onnx_export.__file__).read_bytes()).hexdigest(), _versions()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@task(cache_policy=NO_CACHE, task_run_name="export {plan.component}")
def export_onnx(loaded: LoadedModel, plan: ExportPlan, kv_cache: bool, reuse: bool = True) -> dict[str, Any]:
    """Export the graphs (with the component applied) into a work directory beside the final one; graphs already
    exported for the same weights, component and options are reused from ATTNFLOW_HOME/cache/onnx-graphs."""
    out = Path(plan.out_dir)
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key = graphs_key(loaded, plan, kv_cache)
    cached = settings().cache_dir / "onnx-graphs" / key
    reused = reuse and (cached / "graphs.json").is_file()
    if not reused:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
        try:
            infos = onnx_export.export_graphs(loaded.model, [_component(plan)], tmp, kv_cache=kv_cache,
                                              form=plan.form, opset=plan.opset)
            write_json([asdict(i) for i in infos], tmp / "graphs.json")
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(tmp, cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    graphs = json.loads((cached / "graphs.json").read_text())
    for f in cached.iterdir():
        if f.name != "graphs.json":
            shutil.copy2(f, work / f.name)  # a copy: onnx refuses hard-linked external data files
    loaded.model.config.save_pretrained(work)
    loaded.tokenizer.save_pretrained(work)
    if getattr(loaded.model, "generation_config", None) is not None:
        loaded.model.generation_config.save_pretrained(work)
    for g in graphs:
        how = "reused the cached export of" if reused else f"exported in {g['seconds']:.1f}s"
        print(f"{how} the {g['kind']} graph {g['file']} (opset {g['opset']})")
    return {"work_dir": str(work), "graphs": graphs, "kv_cache": kv_cache, "reused": reused, "key": key}


@task(cache_policy=NO_CACHE, task_run_name="optimize {target}")
def optimize_onnx(exported: dict[str, Any], target: str) -> dict[str, dict[str, Any]]:
    """Apply the ONNX Runtime fusions of ``target`` to every graph; report each graph's fused ops and I/O."""
    out = {}
    for graph in exported["graphs"]:
        path = Path(exported["work_dir"]) / graph["file"]
        start = time.perf_counter()
        result = onnx_optimize.optimize(path, target)
        if result["note"]:
            print(f"warning: {graph['file']}: {result['note']}")
        counts = onnx_optimize.op_counts(path)
        out[graph["kind"]] = {"file": graph["file"], **onnx_optimize.graph_io(path), "fusion": result,
                              "fused_ops": onnx_optimize.fused_ops(counts),
                              "attention": onnx_optimize.attention_summary(counts),
                              "optimize_seconds": time.perf_counter() - start, "export_seconds": graph["seconds"]}
        print(f"{graph['file']}: attention {out[graph['kind']]['attention']}, fused ops "
              f"{out[graph['kind']]['fused_ops'] or 'none'}")
    return out


@task(cache_policy=NO_CACHE, task_run_name="verify parity")
def verify_parity(loaded: LoadedModel, plan: ExportPlan, exported: dict[str, Any]) -> dict[str, Any]:
    """Max |logit diff| of the graphs against the patched PyTorch model on fixed and random inputs."""
    text = loaded.tokenizer(REAL_TEXT)["input_ids"]
    result = check_parity(loaded.model, [_component(plan)], exported["work_dir"], lengths=plan.parity_lengths,
                          multiple=plan.multiple, fixed_ids=text, text_ids=text)
    print(f"parity {'PASSED' if result['passed'] else 'FAILED'}: {parity_summary(result)}")
    return result


def parity_summary(parity: dict[str, Any]) -> str:
    """One line: error / float32 floor per quantity against the multiple, and the token agreement."""
    worst = ", ".join(f"{k} {w['err']:.2e} = {w['ratio']:.2g} x floor" for k, w in parity["worst"].items())
    line = f"max |ORT - torch| {worst} (gate: <= {parity['multiple']:g} x floor)"
    tokens = parity.get("tokens")
    if tokens:
        line += (f"; real text, {tokens['predictions']} predictions: greedy agreement "
                 f"{tokens['greedy_agreement']:.0%}, top-5 agreement {tokens['top5_agreement']:.0%}"
                 f"{'' if tokens['agreement_ok'] else ' (a difference that is not a near tie)'}")
    return line


@task(cache_policy=NO_CACHE, task_run_name="benchmark")
def benchmark_onnx(loaded: LoadedModel, plan: ExportPlan, exported: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Prefill CPU time of ONNX Runtime vs the patched PyTorch model, 1 thread, batch 1."""
    result = measure_speed(loaded.model, [_component(plan)], exported["work_dir"], lengths=plan.speed_lengths,
                           rounds=rounds)
    for length, r in result["lengths"].items():
        print(f"T={length}: torch {r['torch_ms']:.1f} ms, onnxruntime {r['onnxruntime_ms']:.1f} ms "
              f"(x{r['ratio']:.2f}, 1 thread)")
    return result


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime-gpu", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


@task(cache_policy=NO_CACHE, task_run_name="manifest")
def write_manifest(plan: ExportPlan, loaded: LoadedModel, exported: dict[str, Any], graphs: dict[str, Any],
                   parity: dict[str, Any], speed: dict[str, Any] | None) -> dict[str, Any]:
    """manifest.json: component identity, model, opset, inputs/outputs, dynamic axes, fused ops, parity, speed."""
    comp = _component(plan)
    gen = getattr(loaded.model, "generation_config", None)
    manifest = {
        "format": "attnflow-onnx/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "component": component_record(comp),
        "model": {"ref": plan.model, "name": plan.model_name, "location": loaded.ref.location,
                  "fingerprint": loaded.fingerprint, "class": loaded.info["model_class"],
                  "model_type": loaded.info["model_type"]},
        "export": {"exporter": "torch.onnx.export(dynamo=True)", "attention_form": plan.form,
                   "kv_cache": exported["kv_cache"], "dtype": "float32",
                   "example_batch": onnx_export.EXAMPLE_BATCH, "graphs_key": exported.get("key")},
        "optimize": plan.optimize,
        "opset": graphs["prefill"]["opset"],
        "graphs": graphs,
        "fused_ops": {kind: g["fused_ops"] for kind, g in graphs.items()},
        "parity": parity,
        "speed": speed,
        "generation": {"eos_token_id": getattr(gen, "eos_token_id", None),
                       "pad_token_id": getattr(gen, "pad_token_id", None) or loaded.tokenizer.pad_token_id},
        "versions": _versions(),
        "git_commit": tracking.git_commit(),
        "registered_name": plan.registered_name,
    }
    path = write_json(manifest, Path(exported["work_dir"]) / MANIFEST)
    path.chmod(0o644)
    return manifest


@task(cache_policy=NO_CACHE, task_run_name="move into place")
def finalize_export(exported: dict[str, Any], plan: ExportPlan) -> str:
    """Move the finished work directory to ``plan.out_dir`` (replacing an earlier export there)."""
    out, work = Path(plan.out_dir), Path(exported["work_dir"])
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(work, out)
    print(f"export directory: {out}")
    return str(out)


def _metrics(manifest: dict[str, Any]) -> list[Metric]:
    parity, speed = manifest["parity"], manifest["speed"] or {"lengths": {}}
    values = {"parity/max_abs_diff": parity["max_abs_diff"], "parity/max_ratio": parity["max_ratio"],
              "parity/max_rel_logits": parity["max_rel_logits"], "parity/passed": float(parity["passed"])}
    for k, w in parity["worst"].items():
        values.update({f"parity/{k}/{f}": w[f] for f in ("err", "floor", "ratio")})
    for case in parity["cases"]:
        values.update({f"parity/{case['case']}/{k}/{f}": case[k][f] for k in ("logits", "present", "decode")
                       if k in case for f in ("err", "ratio")})
    if parity.get("tokens"):
        values.update({f"parity/tokens/{k}": parity["tokens"][k] for k in ("greedy_agreement", "top5_agreement")})
    for length, r in speed["lengths"].items():
        values.update({f"speed/T{length}/{k}": v for k, v in r.items()})
    for kind, g in manifest["graphs"].items():
        values[f"export_seconds/{kind}"] = g["export_seconds"]
        values.update({f"fused/{kind}/{op.split(':')[-1]}": n for op, n in g["fused_ops"].items()})
    return [Metric(tracking.metric_key(k), float(v), 0, 0) for k, v in values.items()]


def export_figure(manifest: dict[str, Any]) -> Any:
    """Parity per case (error / float32 floor, log scale, gate line) and prefill time torch vs ONNX Runtime."""
    parity, speed = manifest["parity"], manifest["speed"]
    fig, axes = plots.plt.subplots(1, 2 if speed else 1, figsize=(10 if speed else 5.5, 3.4), squeeze=False)
    ax = axes[0][0]
    keys = [k for k in ("logits", "present", "decode") if k in parity["cases"][0]]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        vals = [max(c[key]["ratio"], 1e-3) for c in parity["cases"]]
        ax.bar([x + i * width for x in range(len(vals))], vals, width=width, label=key)
    ax.axhline(parity["multiple"], color="red", ls="--", lw=1, label="gate")
    ax.set_yscale("log")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(parity["cases"]))])
    ax.set_xticklabels([c["case"] for c in parity["cases"]], rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("max |ORT - torch| / float32 floor", fontsize=8)
    ax.set_title(f"parity ({'passed' if parity['passed'] else 'FAILED'})", fontsize=9)
    ax.legend(fontsize=7)
    if speed:
        ax = axes[0][1]
        lengths = list(speed["lengths"])
        for i, (key, label) in enumerate((("torch_ms", "torch"), ("onnxruntime_ms", "onnxruntime"))):
            ax.bar([x + i * 0.4 for x in range(len(lengths))], [speed["lengths"][t][key] for t in lengths],
                   width=0.4, label=label)
        ax.set_xticks([x + 0.2 for x in range(len(lengths))])
        ax.set_xticklabels([f"T={t}\nx{speed['lengths'][t]['ratio']:.2f}" for t in lengths], fontsize=8)
        ax.set_ylabel("prefill CPU ms (1 thread)")
        ax.set_title("speed (ratio = onnxruntime / torch)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{manifest['model']['name']} + {manifest['component']['label']} -> ONNX ({manifest['optimize']})",
                 fontsize=10)
    fig.tight_layout()
    return fig


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient, cache_policy=NO_CACHE,
      task_run_name="log export")
def log_export(plan: ExportPlan, manifest: dict[str, Any], out_dir: str, experiment: str,
               register: bool = True) -> dict[str, Any]:
    """One MLflow run with the export directory as artifacts; registered as ``attnflow.onnx.<model>.<component>``
    when parity passed (the run is marked FAILED otherwise)."""
    comp, parity = manifest["component"], manifest["parity"]
    passed = bool(parity["passed"])
    tags = {"attnflow.kind": "export", "attnflow.component": comp["name"],
            "attnflow.component_version": comp["version"], "attnflow.fingerprint": comp["fingerprint"],
            "attnflow.code_fingerprint": comp["code_fingerprint"], "attnflow.paper": comp["paper"] or "",
            "attnflow.model": plan.model_name, "attnflow.model_fingerprint": manifest["model"]["fingerprint"],
            "attnflow.onnx.optimize": plan.optimize,
            "attnflow.onnx.attention": manifest["graphs"]["prefill"]["attention"],
            "attnflow.onnx.parity": "passed" if passed else "failed",
            "attnflow.onnx.fused_ops": json.dumps(manifest["fused_ops"])[:5000]}
    params = {**comp["params"], "model": plan.model, "component_spec": plan.component, "optimize": plan.optimize,
              "attention_form": plan.form, "kv_cache": manifest["export"]["kv_cache"], "opset": manifest["opset"],
              "parity_multiple": plan.multiple, "parity_lengths": plan.parity_lengths}
    c = tracking.client()
    with runs.tracked_run(experiment, f"export {plan.model_name} + {comp['label']}", tags=tags,
                          params=params) as run_id:
        c.log_batch(run_id, metrics=_metrics(manifest))
        c.log_artifacts(run_id, out_dir, artifact_path="onnx")
        c.log_dict(run_id, manifest, MANIFEST)
        fig = export_figure(manifest)
        c.log_figure(run_id, fig, "export.png")
        plots.close(fig)
        version = None
        if passed and register:
            version = _register(c, run_id, plan, manifest)
        if not passed:
            runs.set_outcome(run_id, "FAILED")
    return {"run_id": run_id, "experiment": experiment, "registered_name": plan.registered_name if version else None,
            "registered_version": version}


def _register(c: Any, run_id: str, plan: ExportPlan, manifest: dict[str, Any]) -> str:
    """A model version whose source is the run's ``onnx/`` directory, tagged with parity and speed figures; an
    identical export (same graphs key and fusions) is not registered again: its existing version is returned."""
    name = plan.registered_name
    comp = manifest["component"]
    key = export_key(manifest)
    if key and (same := _version_with(c, name, key)) is not None:
        c.set_tag(run_id, "attnflow.cached", "true")
        c.set_tag(run_id, "attnflow.registered_version", same)
        print(f"{name} version {same} holds this export already (same weights, component, options): "
              "not registered again")
        return same
    try:
        c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - not registered yet
        c.create_registered_model(name, tags={"attnflow.kind": "onnx"},
                                  description=f"{plan.model_name} with {comp['name']} applied, exported to ONNX "
                                              "(attnflow export-onnx)")
    tags = {"attnflow.component": comp["name"], "attnflow.component_version": comp["version"],
            "attnflow.fingerprint": comp["fingerprint"], "attnflow.component_spec": plan.component,
            "attnflow.model_fingerprint": manifest["model"]["fingerprint"], "attnflow.onnx.optimize": plan.optimize,
            "attnflow.onnx.attention": manifest["graphs"]["prefill"]["attention"],
            "attnflow.onnx.kv_cache": str(manifest["export"]["kv_cache"]).lower(),
            "parity.max_abs_diff": f"{manifest['parity']['max_abs_diff']:.3e}",
            "parity.max_ratio": f"{manifest['parity']['max_ratio']:.3g}",
            "parity.multiple": f"{manifest['parity']['multiple']:g}"}
    if key:
        tags["attnflow.onnx.export_key"] = key
    if manifest["parity"].get("tokens"):
        tokens = manifest["parity"]["tokens"]
        tags.update({"parity.greedy_agreement": f"{tokens['greedy_agreement']:.3f}",
                     "parity.top5_agreement": f"{tokens['top5_agreement']:.3f}"})
    for length, r in (manifest["speed"] or {"lengths": {}})["lengths"].items():
        tags[f"speed.T{length}.ratio"] = f"{r['ratio']:.3f}"
        tags[f"speed.T{length}.onnxruntime_ms"] = f"{r['onnxruntime_ms']:.2f}"
        tags[f"speed.T{length}.torch_ms"] = f"{r['torch_ms']:.2f}"
    mv = c.create_model_version(name, source=f"{c.get_run(run_id).info.artifact_uri}/onnx", run_id=run_id, tags=tags,
                                description=f"{comp['label']} on {plan.model_name}; parity "
                                            f"{manifest['parity']['max_abs_diff']:.2e}")
    print(f"registered {name} version {mv.version}")
    return str(mv.version)


def export_key(manifest: dict[str, Any]) -> str | None:
    """Identity of an export: the graphs key (weights, component, exporter, options, versions) and the fusions."""
    graphs_key = manifest["export"].get("graphs_key")
    if not graphs_key:
        return None
    return hashlib.sha256(json.dumps([graphs_key, manifest["optimize"]]).encode()).hexdigest()[:24]


def _version_with(c: Any, name: str, key: str) -> str | None:
    try:
        versions = c.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - not registered yet
        return None
    same = [v for v in versions if v.tags.get("attnflow.onnx.export_key") == key]
    return str(min(int(v.version) for v in same)) if same else None


@task(cache_policy=NO_CACHE, task_run_name="check parity")
def require_parity(manifest: dict[str, Any], out_dir: str, logged: dict[str, Any]) -> None:
    """Fail the flow when parity failed; the artifacts and the FAILED run stay for inspection."""
    parity = manifest["parity"]
    if not parity["passed"]:
        raise ParityError(
            f"parity FAILED: {parity_summary(parity)}; the graphs are kept in {out_dir} "
            f"and in MLflow run {logged['run_id']} (marked FAILED), nothing was registered"
        )
