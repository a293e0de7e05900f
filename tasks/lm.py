"""Tasks of the train-lm flow: preset, tokenizer, training (resumable), suite evaluation, model registration."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from prefect import task
from prefect.cache_policies import NO_CACHE

from components import data as data_sources
from components import modeling
from components.lm import model as lm_model
from components.lm import trainer
from components.lm.mixture import Mixture, eval_spec
from components.lm.preset import LMPreset, MixtureItem, compact
from components.lm.profile import AttentionProfile, attention_profile
from components.lm.tokenizer import train_tokenizer
from infra.settings import settings
from registry.specs import load_preset, parse
from tasks import plots, runs, tracking
from tasks.io import write_json
from tasks.retry import transient


@dataclass
class LMRun:
    """A training run: its preset, its resumable directory and its MLflow run."""

    preset: LMPreset
    key: str
    run_dir: Path
    mlflow_run_id: str
    data_fingerprint: str

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


@task(cache_policy=NO_CACHE, task_run_name="preset {preset}")
def resolve_preset(preset: str, overrides: dict[str, Any] | None = None, corpus: str | None = None,
                   corpus_weight: float = 0.2, corpus_field: str = "text") -> LMPreset:
    """Load and validate an LM preset (registry/presets/lm/<name>.yaml or a YAML path) with overrides."""
    path = Path(preset)
    data = load_preset(str(path) if path.is_file() else f"lm/{preset}")
    spec = LMPreset.from_dict(path.stem if path.is_file() else preset, data, overrides)
    if corpus:
        items = spec.mixture + (MixtureItem(weight=corpus_weight, text=corpus, text_field=corpus_field),)
        spec = LMPreset(spec.name, spec.model, spec.train, items)
    return spec


def run_key(spec: LMPreset) -> str:
    """Identity of a training run: everything that changes the result (not the thread count or logging)."""
    d = compact(spec.to_dict())  # knobs added later count only when set, so existing run keys stay
    for k in ("threads", "log_every"):
        d["train"].pop(k, None)
    if spec.train.init_from:  # the starting weights, not where they happen to live
        d["train"]["init_from"] = modeling.model_fingerprint(str(Path(spec.train.init_from).expanduser()))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@task(cache_policy=NO_CACHE, task_run_name="prepare run")
def prepare_run(spec: LMPreset, experiment: str) -> LMRun:
    """The run directory (same preset -> same directory, so a re-run resumes) and its MLflow run."""
    key = run_key(spec)
    run_dir = settings().home / "runs" / "train-lm" / f"{spec.name}-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "mlflow_run_id"
    c = tracking.client()
    runs.settle()
    run_id = id_file.read_text().strip() if id_file.is_file() else ""
    if run_id:
        try:
            c.get_run(run_id)
        except Exception:  # noqa: BLE001 - the store was reset: start a new run
            run_id = ""
    data_fp = hashlib.sha256(json.dumps([spec.to_dict()["mixture"], spec.train.seed]).encode()).hexdigest()[:16]
    if not run_id:
        run_id = tracking.start_run.fn(
            experiment, f"train-lm {spec.name}",
            tags={"attnflow.kind": "train-lm", "attnflow.preset": spec.name, "attnflow.run_key": key,
                  "attnflow.data_fingerprint": data_fp},
            params={**{f"model.{k}": v for k, v in spec.to_dict()["model"].items()},
                    **{f"train.{k}": v for k, v in spec.to_dict()["train"].items()},
                    "mixture": json.dumps(spec.to_dict()["mixture"])},
        )
        id_file.write_text(run_id)
    else:  # resumed by this process: it owns the run now (an orphan check must not end it)
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tracking.process_tags().items()])
        c.update_run(run_id, status="RUNNING")
    print(f"run directory {run_dir} (MLflow run {run_id})")
    return LMRun(spec, key, run_dir, run_id, data_fp)


@task(cache_policy=NO_CACHE, task_run_name="tokenizer")
def prepare_tokenizer(run: LMRun) -> Any:
    """Train the BPE tokenizer on samples of the mixture (once per run directory)."""
    from transformers import AutoTokenizer

    tok_dir = run.run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(tok_dir)
    if run.preset.train.init_from:  # continuing a model: keep its vocabulary
        tok = AutoTokenizer.from_pretrained(Path(run.preset.train.init_from).expanduser())
    else:
        mixture = Mixture(run.preset, tokenizer=None)
        tok = train_tokenizer(mixture.texts_for_tokenizer(seed=run.preset.train.seed), run.preset.model.vocab_size,
                              number_tokens=run.preset.model.number_tokens)
        print(f"trained a {len(tok)}-token BPE tokenizer")
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=run.run_dir))  # renamed once complete: a crash never
    tok.save_pretrained(tmp)                                              # leaves a half-written tokenizer to reuse
    if tok_dir.exists():  # a half-written directory of an older version
        shutil.rmtree(tok_dir)
    os.replace(tmp, tok_dir)
    return tok


def _eval_fn(mixture: Mixture, model: Any, tokenizer: Any, n: int):
    """Accuracy of every generated task of the mixture on a small eval split, for the training curves."""
    benches = {}
    for item in mixture.items:
        if item.task:
            b = parse(eval_spec(item.task)).create("benchmark")
            benches[b.label()] = b
    rows = {}
    for label, b in benches.items():
        full = b.build("eval")
        rows[label] = full[:: max(1, len(full) // n)][:n]  # evenly spread over depths/cells

    def run(step: int) -> dict[str, float]:
        out = {}
        for label, b in benches.items():
            res = b.evaluate(model, tokenizer, rows[label], batch_size=16)
            out[f"eval/{label}/{b.primary_metric}"] = res.metrics[b.primary_metric]
        print(f"step {step}: " + ", ".join(f"{k.split('/')[1]}={v:.2f}" for k, v in out.items()))
        return out

    return run


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="train")
def train_model(run: LMRun, tokenizer: Any, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Build the model and train it, resuming from the newest checkpoint; curves go to MLflow."""
    spec = run.preset
    mixture = Mixture(spec, tokenizer)
    if spec.train.init_from:
        model = lm_model.init_model(spec.model, tokenizer, Path(spec.train.init_from).expanduser(), spec.train.seed)
        first = lm_model.batch_loss(model, mixture.batch(0))
        print(f"initialised from {spec.train.init_from}: {lm_model.describe(model)}; loss on the first batch "
              f"{first:.3f} (a uniform guess: ln V = {math.log(len(tokenizer)):.3f})")
    else:
        model = lm_model.build_model(spec.model, tokenizer, seed=spec.train.seed)
    model = lm_model.prepare_training(model, spec.train)  # LoRA adapters (train.lora), checked before training
    client = tracking.client()

    def on_log(step: int, metrics: dict[str, float]) -> None:
        try:
            client.log_batch(run.mlflow_run_id,
                             metrics=[Metric(tracking.metric_key(k), float(v), 0, step) for k, v in metrics.items()])
        except Exception as e:  # noqa: BLE001 - never lose training progress to a logging hiccup
            print(f"warning: MLflow logging failed at step {step}: {e}")

    result = trainer.train(model, mixture.batch, spec.train, run.ckpt_dir, on_log=on_log,
                           on_eval=_eval_fn(mixture, model, tokenizer, spec.train.eval_examples), progress=progress)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = lm_model.finish_training(model)  # adapters merged, training-time kernels (sf_attn) removed
    final_loss = result.losses[-1][1] if result.losses else None
    if final_loss is None and (last := trainer.latest_checkpoint(run.ckpt_dir)) is not None:  # already finished
        final_loss = json.loads((last / "state.json").read_text()).get("loss")
    info = {"steps": result.step, "resumed_from": result.resumed_from, "train_seconds": result.seconds,
            "tokens": result.tokens, "final_loss": final_loss,
            "n_params": lm_model.n_params(model), "n_trainable": n_trainable,
            "architecture": lm_model.describe(model)}
    if result.resumed_from:
        print(f"resumed from step {result.resumed_from}")
    print(f"trained {info['n_params']:,} parameters for {result.step} steps in {result.seconds:.0f}s")
    return model, info


@task(cache_policy=NO_CACHE, task_run_name="evaluate suite")
def evaluate_suite(model: Any, tokenizer: Any, specs: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """Full eval splits of the given benchmarks: {"<label>/<metric>": value} and the breakdown tables."""
    metrics: dict[str, float] = {}
    breakdowns: dict[str, Any] = {}
    for spec in specs:
        b = parse(spec).create("benchmark")
        res = b.evaluate(model, tokenizer, b.build("eval"), batch_size=16)
        for k, v in res.metrics.items():
            if not k.startswith("n_"):
                metrics[f"{b.label()}/{k}"] = float(v)
        for name, rows in res.breakdowns.items():
            breakdowns[f"{b.label()}/{name}"] = rows
        print(f"{b.label()}: " + ", ".join(f"{k}={v:.3f}" for k, v in res.metrics.items() if not k.startswith("n_")))
    return metrics, breakdowns


@task(cache_policy=NO_CACHE, task_run_name="attention profile")
def profile_attention(model: Any, tokenizer: Any, run_id: str | None, n_texts: int = 8) -> AttentionProfile | None:
    """Sink mass per layer (built-in story text) and induction scores per head; a figure in MLflow."""
    if model.config._attn_implementation not in ("sdpa", "eager"):
        print(f"attention profile skipped: kernel {model.config._attn_implementation!r} is not softmax attention")
        return None
    docs = data_sources.texts(data_sources.read_records("builtin:stories", limit=n_texts), "text", "builtin:stories")
    limit = model.config.max_position_embeddings
    texts = [tokenizer(d, return_tensors="pt").input_ids[0, :limit] for d in docs]
    profile = attention_profile(model, [t for t in texts if t.numel() > 1], len(tokenizer), tokenizer.bos_token_id)
    print("attention profile: sink mass per layer " + ", ".join(f"{m:.3f}" for m in profile.sink_mass)
          + f" (uniform {profile.uniform:.3f}); top induction heads "
          + ", ".join(f"L{la}H{h}={s:.2f}" for la, h, s in profile.top_induction(3)))
    if run_id:
        fig = plots.attention_profile_figure(profile.sink_mass, profile.uniform, profile.induction)
        tracking.client().log_figure(run_id, fig, "attention_profile.png")
        plots.close(fig)
        tracking.client().log_dict(run_id, asdict(profile), "attention_profile.json")
    return profile


def suite_specs(spec: LMPreset) -> list[str]:
    """What the final evaluation covers: every generated task of the mixture, and perplexity on held-out text."""
    tasks = [eval_spec(item.task) for item in spec.mixture if item.task]
    return list(dict.fromkeys(tasks)) + ["perplexity(max_tokens=8000)"]


@task(cache_policy=NO_CACHE, task_run_name="save model")
def save_model(model: Any, tokenizer: Any, run: LMRun, out: str | None, info: dict[str, Any],
               metrics: dict[str, float], command: str, profile: AttentionProfile | None = None) -> str:
    """Write the Hugging Face model directory with a model card and the training facts."""
    out_dir = Path(out).expanduser() if out else settings().models_dir / f"{run.preset.name}-lm"
    card = _model_card(run, info, metrics, command)
    if profile is not None:
        card += "\n## Attention profile\n\n" + profile.markdown() + "\n"
    lm_model.save_model_dir(model, tokenizer, out_dir, card)
    write_json({"preset": run.preset.to_dict(), "data_fingerprint": run.data_fingerprint, "train": info,
                "metrics": metrics, "command": command,
                "attention_profile": asdict(profile) if profile is not None else None}, out_dir / "training.json")
    print(f"saved model to {out_dir}")
    return str(out_dir)


def _home_relative(path: str) -> str:
    """``path`` with the ATTNFLOW_HOME prefix written as ``$ATTNFLOW_HOME`` (a model card is read on other machines)."""
    p, home = Path(path).expanduser().resolve(), settings().home.expanduser().resolve()
    return f"$ATTNFLOW_HOME/{p.relative_to(home)}" if p.is_relative_to(home) else path


def _model_card(run: LMRun, info: dict[str, Any], metrics: dict[str, float], command: str) -> str:
    m = run.preset.model
    how = "continued" if run.preset.train.init_from else "trained from scratch"
    lines = [
        f"# {run.preset.name}-lm", "",
        (f"A {info.get('architecture', f'{m.layers}-layer Llama-architecture causal LM')} (context {m.context}, "
         f"{info['n_params']:,} parameters) {how} by attnflow's `train-lm` flow on synthetic in-context tasks and "
         "built-in story text."), "",
        f"- Command: `{command}`",
        *([f"- Continued from: `{_home_relative(run.preset.train.init_from)}` (weights fingerprint "
            f"`{modeling.model_fingerprint(str(Path(run.preset.train.init_from).expanduser()))}`)"]
          if run.preset.train.init_from else []),
        *([f"- LoRA (merged into the weights): {run.preset.train.lora}; {info['n_trainable']:,} trainable parameters"]
          if run.preset.train.lora else []),
        *([f"- Training-time attention: `{m.attention}` (removed after training)"]
          if getattr(m.kernel()[1], "train_only", False) else []),
        *([f"- RoPE position interpolation: x{m.rope_scaling:g}"] if m.rope_scaling != 1.0 else []),
        f"- Training data fingerprint: `{run.data_fingerprint}` (mixture + seed {run.preset.train.seed})",
        f"- Steps: {info['steps']}, tokens: {info['tokens']:,} (this process), final loss: "
        + (f"{info['final_loss']:.4f}" if info["final_loss"] is not None else "n/a"),
        f"- Training time: {info['train_seconds']:.0f} s (this process)", "",
        "| task | metric | value |", "|---|---|---|",
    ]
    lines += [f"| {k.split('/')[0]} | {k.split('/', 1)[1]} | {v:.4f} |" for k, v in sorted(metrics.items())]
    return "\n".join(lines) + "\n"


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient, cache_policy=NO_CACHE,
      task_run_name="register {name}")
def register_lm(run_id: str | None, model_dir: str, name: str, alias: str, tags: dict[str, str],
                   experiment: str = "models") -> str:
    """Log a model directory as run artifacts and register it as ``name`` with ``alias`` (e.g. champion)."""
    if run_id is None:  # a run of its own, ended here (FINISHED, or FAILED/KILLED if registering fails)
        with runs.tracked_run(experiment, f"register {name}", tags={"attnflow.kind": "register"},
                              params={"model_dir": model_dir}) as own:
            return register_lm.fn(own, model_dir, name, alias, tags, experiment)
    c = tracking.client()
    c.log_artifacts(run_id, model_dir, artifact_path="model")
    for k, v in tags.items():
        c.set_tag(run_id, k, v)
    try:
        c.get_registered_model(name)
    except Exception:  # noqa: BLE001
        c.create_registered_model(name, description=f"{name}: causal LM trained by attnflow")
    mv = c.create_model_version(name, source=f"{c.get_run(run_id).info.artifact_uri}/model", run_id=run_id,
                                tags=tags)
    c.set_registered_model_alias(name, alias, mv.version)
    print(f"registered {name} version {mv.version} (alias {alias})")
    return str(mv.version)


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient, cache_policy=NO_CACHE,
      task_run_name="log metrics")
def log_final(run_id: str, metrics: dict[str, float], info: dict[str, Any]) -> None:
    c = tracking.client()
    ms = [Metric(tracking.metric_key(f"final/{k}"), float(v), 0, info["steps"]) for k, v in metrics.items()]
    ms += [Metric("train_seconds", float(info["train_seconds"]), 0, info["steps"])]
    c.log_batch(run_id, metrics=ms, params=[Param("n_params", str(info["n_params"]))])
