"""LM presets: model size knobs, training hyper-parameters and the data mixture, read from YAML.

A preset (``registry/presets/lm/<name>.yaml``) has three sections::

    model:   {layers: 4, hidden: 128, heads: 4, kv_heads: 2, intermediate: 344, context: 512, vocab_size: 512}
    train:   {steps: 4000, batch_size: 32, lr: 3.0e-3, warmup: 200, weight_decay: 0.1, ...}
    mixture: [{task: "kv_retrieval(n_pairs=8)", weight: 0.3}, {text: "builtin:stories", weight: 0.1}, ...]

``include: <preset>`` merges a base preset (sections merge key by key; ``mixture`` is replaced). Every value is
validated here, so a bad preset fails before a tokenizer or a model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from components.base import ParamError, _coerce, check_range


#: ``train.init_from: preset:<name>`` continues from the output of another LM preset (a training stage)
PRESET_REF = "preset:"


@dataclass(frozen=True)
class ModelSpec:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 172
    context: int = 256
    vocab_size: int = 512  # BPE entries (the number tokens come on top)
    number_tokens: int = 0  # 0: digits one per token; n: every 1..n-digit string is one token (n=3: +1,110 tokens)
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    attention: str = "sdpa"  # "sdpa"/"eager", or an attention kernel spec: "softmax", "lightning(block=64)", ...
    qk_layernorm: bool = False  # LayerNorm on each head's q and k before RoPE (installs the softmax kernel if needed)
    rope_scaling: float = 1.0  # linear RoPE position interpolation (Chen et al. 2023): positions / factor; 1 = none

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "intermediate", "context"):
            check_range(f"model.{name}", getattr(self, name), 1)
        check_range("model.vocab_size", self.vocab_size, 64)
        check_range("model.number_tokens", self.number_tokens, 0, 3)
        check_range("model.rope_scaling", self.rope_scaling, 1.0)
        if self.hidden % self.heads:
            raise ParamError(f"model.hidden={self.hidden} must be divisible by model.heads={self.heads}")
        if self.heads % self.kv_heads:
            raise ParamError(f"model.heads={self.heads} must be divisible by model.kv_heads={self.kv_heads}")
        _, kernel = self.kernel()
        if kernel is not None:
            kernel.check_shape(self.layers, self.heads, self.kv_heads, self.hidden // self.heads)

    def kernel(self) -> tuple[str, Any]:
        """(transformers implementation to build with, attention kernel or None); validates the spec."""
        from components.kernels.base import resolve

        return resolve(self.attention, self.qk_layernorm)


@dataclass(frozen=True)
class LoRASpec:
    """``train.lora``: low-rank adapters (peft) on the named linear modules; everything else stays frozen.

    ``trainable`` lists extra parameter-name substrings trained in full (LongLoRA / SinkLoRA train
    ``embed,norm``); the default trains the adapters only."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    trainable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_range("train.lora.r", self.r, 1)
        check_range("train.lora.alpha", self.alpha, 0.0, None, lo_open=True)
        check_range("train.lora.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ParamError(f"train.lora.target_modules={self.target_modules!r} must name at least one module")


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: Literal["float32", "bfloat16"] = "float32"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    eval_every: int = 500
    eval_examples: int = 32
    log_every: int = 10
    seed: int = 0
    threads: int = 0  # torch threads (0 = leave torch's default)
    init_from: str = ""  # model directory to continue from, or "preset:<name>" (trained first); "" = random init
    z_loss: float = 0.0  # weight of the output z-loss, mean(log^2 Z) over predicted tokens (Wortsman et al.: 1e-4)
    independent_weight_decay: bool = False  # decay by (lr_t / lr) * weight_decay, not lr_t * weight_decay
    task_loss: Literal["all", "answers"] = "all"  # generated task examples: loss on every token, or on answers only
    lora: Any = None  # LoRASpec (a mapping in YAML: {r, alpha, dropout, target_modules, trainable}) or None

    def __post_init__(self) -> None:
        if isinstance(self.lora, str) and self.lora.strip().lower() in ("", "none", "null"):
            object.__setattr__(self, "lora", None)
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", _build(LoRASpec, self.lora, "train.lora"))
        elif self.lora is not None and not isinstance(self.lora, LoRASpec):
            raise ParamError(f"train.lora={self.lora!r} must be a mapping {{r, alpha, dropout, target_modules}}")
        check_range("train.steps", self.steps, 1)
        check_range("train.batch_size", self.batch_size, 1)
        check_range("train.lr", self.lr, 0.0, None, lo_open=True)
        check_range("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range("train.warmup", self.warmup, 0)
        check_range("train.weight_decay", self.weight_decay, 0.0)
        check_range("train.grad_clip", self.grad_clip, 0.0)
        check_range("train.checkpoint_every", self.checkpoint_every, 1)
        check_range("train.keep_checkpoints", self.keep_checkpoints, 1)
        check_range("train.eval_every", self.eval_every, 1)
        check_range("train.z_loss", self.z_loss, 0.0)
        if self.dtype not in ("float32", "bfloat16"):
            raise ParamError(f"train.dtype={self.dtype!r} must be float32 or bfloat16")
        if self.init_from.startswith(PRESET_REF):
            from registry.specs import SpecError, load_preset

            ref = self.stage_preset
            try:
                load_preset(ref if Path(ref).expanduser().is_file() else f"lm/{ref}")
            except SpecError as e:
                raise ParamError(f"train.init_from={self.init_from!r}: {e}") from None
        elif self.init_from:
            root = Path(self.init_from).expanduser()
            missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (root / f).is_file()]
            if missing:
                raise ParamError(f"train.init_from={self.init_from!r} is not a model directory, train-lm's or a "
                                 f"pretrained checkpoint (missing {', '.join(missing)})")

    @property
    def stage_preset(self) -> str:
        """The preset (name or YAML path) ``init_from: preset:<ref>`` continues from ('' otherwise)."""
        return self.init_from.removeprefix(PRESET_REF) if self.init_from.startswith(PRESET_REF) else ""


@dataclass(frozen=True)
class MixtureItem:
    """One source of training sequences: a generated benchmark spec or a text source."""

    weight: float
    task: str | None = None  # benchmark spec, e.g. "kv_retrieval(n_pairs=8)"
    text: str | None = None  # text source: file, hf:<id>, builtin:stories
    text_field: str = "text"

    def __post_init__(self) -> None:
        check_range("mixture.weight", self.weight, 0.0, None, lo_open=True)
        if (self.task is None) == (self.text is None):
            raise ParamError("each mixture item needs exactly one of task: or text:")


@dataclass(frozen=True)
class LMPreset:
    name: str
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    mixture: tuple[MixtureItem, ...] = ()

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], overrides: dict[str, Any] | None = None) -> "LMPreset":
        """Build and validate; ``overrides`` are dotted keys such as ``{"train.steps": 50}``."""
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for key, value in (overrides or {}).items():
            section, _, attr = key.partition(".")
            if section not in ("model", "train") or not attr:
                raise ParamError(f"override {key!r} must look like model.<knob> or train.<knob>")
            if attr.startswith("lora.") and section == "train":  # train.lora.r=8: one key of the LoRA mapping
                lora = data.setdefault("train", {}).get("lora")
                data["train"]["lora"] = {**(dict(lora) if isinstance(lora, dict) else {}), attr[5:]: value}
                continue
            data.setdefault(section, {})[attr] = value
        unknown = set(data) - {"model", "train", "mixture"}
        if unknown:
            raise ParamError(f"preset {name}: unknown section(s) {', '.join(sorted(unknown))}; "
                             "valid: include, mixture, model, train")
        model = _build(ModelSpec, data.get("model", {}), "model")
        train = _build(TrainSpec, data.get("train", {}), "train")
        items = tuple(_build(MixtureItem, item, "mixture") for item in data.get("mixture") or [])
        if not items:
            raise ParamError(f"preset {name}: the mixture is empty")
        return cls(name=name, model=model, train=train, mixture=items)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def continuing_from(self, model_dir: str) -> "LMPreset":
        """This preset with ``train.init_from`` set to a model directory (a resolved ``preset:`` stage)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, init_from=model_dir))


# Knobs added after presets were first trained: left out of run keys while at their defaults, so the run directory
# (and resumption) of an existing preset does not change.
ADDED_KNOBS = {"model": {"qk_layernorm": False, "number_tokens": 0, "rope_scaling": 1.0},
               "train": {"z_loss": 0.0, "independent_weight_decay": False, "init_from": "", "task_loss": "all",
                         "lora": None}}


def compact(d: dict[str, Any]) -> dict[str, Any]:
    """``to_dict()`` without the added knobs that sit at their defaults."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for section, knobs in ADDED_KNOBS.items():
        for knob, default in knobs.items():
            if section in out and out[section].get(knob, default) == default:
                out[section].pop(knob, None)
    return out


def _build(kind: type, values: dict[str, Any], section: str) -> Any:
    fields = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - fields
    if unknown:
        raise ParamError(f"{section}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(fields))}")
    hints = get_type_hints(kind)
    try:
        return kind(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})
    except TypeError as e:
        raise ParamError(f"{section}: {e}") from None
