"""MLLM representation shift: concept shift vectors from paired inputs, added to the residual stream (steering).

Khayatan, Shukor, Parekh, Dapogny, Cord, "Analyzing Fine-tuning Representation Shift for Multimodal LLMs Steering"
(ICCV 2025, arXiv:2501.03012). Reference code: github.com/mshukor/xl-vlms (``src/analysis/model_steering.py``
``get_steering_vector`` with ``steering_method="shift_of_means"``; ``src/helpers/utils.py`` ``shift_hidden_states``
and ``apply_steering_vector``; the scripts in ``src/examples/steering/``). Read, not copied.

Shift of means at decoder layer l, for two sets of inputs X_A (concept A, the source) and X_B (concept B, the
target), with h_l(x) in R^d the output of decoder layer l (the residual stream) pooled over the token positions
``tokens`` of x:

    v_l = mean_{x in X_B} h_l(x) - mean_{x in X_A} h_l(x)                                   (shift vector)
    h_l(x)_t  <-  h_l(x)_t + alpha * v_l        for every position t in ``scope``            (steering)

Here X_A and X_B are paired scenes (components/benchmarks/_scenes.py): the same scene and the same prompt, one
object drawn in colour ``source`` in X_A and in colour ``target`` in X_B (``concept_pairs``). ``fit`` computes v_l
(``shift_vector``); ``applied`` adds it with a forward hook on decoder layer l, removed on exit.

Defaults (the reference's): ``alpha`` 1; ``scope="all"`` (every prompt token, image tokens included, and every
generated token; the reference's ``start_prompt_token_idx_steering=0``); the hook is on the output of one decoder
layer (``language_model.model.layers.{l}``; layer 31 of LLaVA-1.5-7B for VQA, 19 for captions); ``layer=-1``
here is the last decoder layer. Other scopes follow the reference's options: ``generated``
(``only_generated_tokens``), ``last_prompt`` (``include_last_prompt_token``: the last prompt token and the generated
ones) and ``prompt`` (prompt tokens only). As in the reference, a forward of more than one token is the prompt and a
one-token forward is a decoding step.

Deviations: the reference pools hidden states at the generated answer token of interest (VQA) or over the
generated caption (captions), from the model's own generations on real datasets; here the states are pooled over
prompt positions of paired inputs (``tokens``: ``last`` prompt token by default, or the ``image`` tokens, the
``text`` tokens, ``all``), with no generation. The reference adds the vector at padding positions too (batch
size 1 there); here padding positions (``attention_mask == 0``) are left alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

import torch

from components.base import ParamError
from components.benchmarks import _scenes
from components.patches.base import AttentionPatch
from registry import register

SCOPES = ("all", "prompt", "generated", "last_prompt")
TOKENS = ("last", "image", "text", "all")


def decoder_layers(model: torch.nn.Module, mods: dict[int, torch.nn.Module]) -> dict[int, torch.nn.Module]:
    """The blocks (decoder layers) holding each attention module, by layer index."""
    found: dict[int, torch.nn.Module] = {}
    for parent in model.modules():
        for child in parent.children():
            for layer, mod in mods.items():
                if child is mod:
                    found[layer] = parent
    if len(found) != len(mods):
        raise ValueError(f"{type(model).__name__}: cannot find the decoder layers holding the attention modules")
    return dict(sorted(found.items()))


def steer_mask(scope: str, mask_2d: torch.Tensor | None, batch: int, q_len: int, device) -> torch.Tensor:
    """(B, T) float: 1 at the positions of one forward that ``scope`` steers, 0 elsewhere (padding is never steered).

    ``mask_2d`` is the forward's (B, past + T) attention mask (None: no padding)."""
    real = (torch.ones(batch, q_len, device=device) if mask_2d is None
            else mask_2d[:, -q_len:].to(device=device, dtype=torch.float32))  # (B, T)
    prompt = q_len > 1
    if scope == "all":
        return real
    if scope == "prompt":
        return real if prompt else torch.zeros_like(real)
    if scope == "generated":
        return torch.zeros_like(real) if prompt else real
    if scope == "last_prompt":  # left padding: the last column is every row's last prompt token
        if not prompt:
            return real
        out = torch.zeros_like(real)
        out[:, -1] = real[:, -1]
        return out
    raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")


def pool_positions(tokens: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image_token_id: int) -> torch.Tensor:
    """(B, T) float weights that average a row's hidden states over ``tokens`` (each row sums to 1); inputs are
    left-padded (the last column is the last prompt token)."""
    real = attention_mask.bool()  # (B, T)
    image = input_ids == image_token_id
    sel = {"last": torch.zeros_like(real).index_fill_(1, torch.tensor([real.shape[1] - 1]), True) & real,
           "image": image & real, "text": ~image & real, "all": real}[tokens]
    n = sel.sum(1, keepdim=True)
    if (n == 0).any():
        raise ValueError(f"tokens={tokens!r}: a row has no such position (no image tokens?)")
    return sel.float() / n


def concept_pairs(source: str, target: str, n_pairs: int, seed: int = 0,
                  max_objects: int = 4) -> tuple[list[dict], list[dict]]:
    """Paired scenes (A, B): the same scene, one object coloured ``source`` in A and ``target`` in B; the other
    objects use neither colour (so the pair differs in exactly one concept)."""
    for c in (source, target):
        if c not in _scenes.COLOURS:
            raise ParamError(f"rep_shift: colour {c!r} is not one of {', '.join(sorted(_scenes.COLOURS))}")
    if source == target:
        raise ParamError("rep_shift: source and target colours are the same")
    rng = random.Random(seed)
    others = sorted(set(_scenes.COLOURS) - {source, target})
    a, b = [], []
    for _ in range(n_pairs):
        scene = _scenes.sample_scene(rng, max_objects, text_prob=0.0)
        for o in scene["objects"]:
            o["colour"] = rng.choice(others)
        pick = rng.randrange(len(scene["objects"]))
        for scenes, colour in ((a, source), (b, target)):
            s = {"objects": [dict(o) for o in scene["objects"]], "text": None}
            s["objects"][pick]["colour"] = colour
            scenes.append(s)
    return a, b


@torch.no_grad()
def layer_states(model: torch.nn.Module, processor: Any, scenes: Sequence[dict], prompt: str, layer: int,
                 tokens: str = "last", image_size: int = 48, batch_size: int = 8) -> torch.Tensor:
    """(N, d) float32 output of decoder layer ``layer`` for each scene with ``prompt`` ({image} marks the image),
    pooled over ``tokens`` (``pool_positions``)."""
    from components.attention.session import attention_modules

    blocks = decoder_layers(model, attention_modules(model))
    block = blocks[layer % len(blocks)]
    tok = processor.tokenizer
    tok.padding_side = "left"
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        images = [_scenes.render(s, image_size) for s in chunk]
        texts = [prompt.format(image=processor.image_token)] * len(chunk)
        enc = {k: v.to(device) for k, v in processor(images=images, text=texts, return_tensors="pt",
                                                     padding=True).items()}
        seen = {}
        handle = block.register_forward_hook(lambda m, a, o: seen.__setitem__("h", o[0] if isinstance(o, tuple)
                                                                                else o))
        try:
            model(**enc)
        finally:
            handle.remove()
        w = pool_positions(tokens, enc["input_ids"], enc["attention_mask"], model.config.image_token_id)  # (B, T)
        out.append(torch.einsum("bt,btd->bd", w.to(device), seen["h"].float()))  # (B, d)
    return torch.cat(out)


def shift_vector(states_a: torch.Tensor, states_b: torch.Tensor) -> torch.Tensor:
    """The shift of means (d,): mean over X_B minus mean over X_A (float64 accumulation, float32 result)."""
    return (states_b.double().mean(0) - states_a.double().mean(0)).float()


@register("rep_shift", version="1.0.0", family="patch", paper="arXiv:2501.03012",
          summary="Concept shift vector (shift of means over paired scenes) added to a decoder layer's output.")
@dataclass(frozen=True)
class RepShift(AttentionPatch):
    """Steer a vision-language model with a concept shift vector (needs ``fit`` or ``with_vector`` first).

    Parameters
    ----------
    source, target : str
        Colours of the paired scenes (concept A -> concept B). Default ``red`` -> ``blue``.
    layer : int
        Decoder layer whose output is read and steered (negative: from the end). Default -1.
    alpha : float
        Steering strength. Default 1.0 (the reference's).
    scope : {"all", "prompt", "generated", "last_prompt"}
        Positions steered. Default ``all``.
    tokens : {"last", "image", "text", "all"}
        Prompt positions pooled into the vector. Default ``last``.
    prompt : str
        The paired inputs' text; ``{image}`` marks the image. Default the train-vlm caption prompt.
    n_pairs : int
        Paired scenes. Default 32.
    image_size : int
        Side of the rendered scenes in pixels (0: the vision encoder's input size). Default 0.
    seed : int
        Scene seed. Default 0.
    """

    source: str = "red"
    target: str = "blue"
    layer: int = -1
    alpha: float = 1.0
    scope: Literal["all", "prompt", "generated", "last_prompt"] = "all"
    tokens: Literal["last", "image", "text", "all"] = "last"
    prompt: str = "{image}\nDescribe the image."
    n_pairs: int = 32
    image_size: int = 0
    seed: int = 0
    _vector: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (d,)

    needs_fit: ClassVar[bool] = True
    needs_images: ClassVar[bool] = True
    onnx_exportable: ClassVar[bool] = False
    onnx_reason: ClassVar[str] = "it adds a fitted shift vector to a decoder layer's output with a module hook"
    example: ClassVar[dict[str, str]] = {"n_pairs": "2", "layer": "0"}

    def __post_init__(self) -> None:
        concept_pairs(self.source, self.target, 0)  # colour names
        if self.scope not in SCOPES or self.tokens not in TOKENS:
            raise ParamError(f"rep_shift: scope must be one of {SCOPES}, tokens one of {TOKENS}")
        if self.n_pairs < 1 or self.image_size < 0:
            raise ParamError("rep_shift: n_pairs must be >= 1 and image_size >= 0")
        if "{image}" not in self.prompt:
            raise ParamError("rep_shift.prompt needs an {image} field")

    def check_model(self, config: Any) -> None:
        super().check_model(config)
        n = config.get_text_config().num_hidden_layers
        if not -n <= self.layer < n:
            raise ParamError(f"rep_shift.layer: {self.layer} is outside the {n} decoder layers")
        if self._vector is not None and self._vector.shape != (config.get_text_config().hidden_size,):
            raise ParamError(f"rep_shift: vector of shape {tuple(self._vector.shape)} for hidden size "
                             f"{config.get_text_config().hidden_size}")

    def acts_on_layer(self, layer: int, n_layers: int) -> bool:
        return False  # no attention edit: the steering is a module hook (model_hooks)

    # -- fitting --------------------------------------------------------------------------------------------------
    def with_vector(self, vector: torch.Tensor) -> "RepShift":
        """A copy steering with a given (d,) vector."""
        return dataclasses.replace(self, _vector=vector.detach().float().cpu().reshape(-1))

    def pairs(self) -> tuple[list[dict], list[dict]]:
        return concept_pairs(self.source, self.target, self.n_pairs, self.seed)

    def fit(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]] | None = None) -> "RepShift":
        """Compute the shift vector on the paired scenes (``tokenizer`` is the model's processor; ``rows`` are not
        read: the pairs are generated from the parameters)."""
        self.check_model(model.config)
        size = self.image_size or model.config.vision_config.image_size
        a, b = self.pairs()
        sa = layer_states(model, tokenizer, a, self.prompt, self.layer, self.tokens, size)
        sb = layer_states(model, tokenizer, b, self.prompt, self.layer, self.tokens, size)
        return self.with_vector(shift_vector(sa, sb))

    def fit_params(self) -> dict[str, Any]:
        """The parameters the shift vector depends on (not ``alpha`` or ``scope``): the key of a cached fit."""
        return {k: getattr(self, k) for k in ("source", "target", "layer", "tokens", "prompt", "n_pairs",
                                              "image_size", "seed")}

    def fitted_state(self) -> dict[str, Any]:
        """The fitted state as plain data ({"vector": list of d floats}); {} when not fitted."""
        return {} if self._vector is None else {"vector": self._vector.tolist()}

    def with_state(self, state: dict[str, Any]) -> "RepShift":
        """A copy with a state from ``fitted_state`` (e.g. a cached fit, tasks/vlm.py ``fit_vlm_component``)."""
        return self.with_vector(torch.tensor(state["vector"], dtype=torch.float32))

    def fit_record(self) -> dict[str, Any]:
        if self._vector is None:
            return {}
        digest = hashlib.sha256(self._vector.numpy().tobytes()).hexdigest()[:16]
        return {"fingerprint": digest, "vector_norm": float(self._vector.norm())}

    # -- steering -------------------------------------------------------------------------------------------------
    def model_hooks(self, model: torch.nn.Module, session: Any) -> list:
        """The forward hook adding ``alpha * v`` to decoder layer ``layer``'s output (called by ``applied``)."""
        from components.attention.session import check_patchable

        mods = check_patchable(model)
        if self._vector is None:
            raise ParamError("rep_shift has no shift vector: call fit(model, processor) or with_vector(v) first")
        blocks = decoder_layers(model, mods)
        block = blocks[self.layer % len(blocks)]
        if self.alpha == 0:
            return []  # alpha = 0 is the unsteered model exactly
        vec = self._vector

        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output  # (B, T, d)
            sel = steer_mask(self.scope, session.attention_mask_2d, h.shape[0], h.shape[1], h.device)  # (B, T)
            h = h + (self.alpha * sel[..., None] * vec.to(h.device)).to(h.dtype)  # (B, T, d)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return [block.register_forward_hook(hook)]
