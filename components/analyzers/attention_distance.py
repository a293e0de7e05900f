"""Attention distance: how far each head of a vision encoder looks, as a mean pixel distance and a profile.

For head h of layer l, query patch i and key patch j on the patch grid (row-major after the class tokens), with
d(i, j) the Euclidean distance between the patch centres in pixels (patch units x ``patch_size``) and A the
attention restricted to patch keys and renormalised (the class token has no position):

    D_{l,h} = mean_{images, query patches i} sum_j A_{l,h}(i, j) d(i, j)          ("mean attention distance")
    P_{l,h}(r) = mean_{images, query patches i} sum_{j : round(d(i, j) / patch_size) = r} A_{l,h}(i, j)

``P`` is the attention strength against 2-D patch distance (in patch units) per head, the view of Li et al.;
``D`` is the per-head summary of Dosovitskiy et al. (ViT, ICLR 2021, "mean attention distance").

Based on Li et al., "How Does Attention Work in Vision Transformers? A Visual Analytics Attempt" (PacificVis /
TVCG 2023, arXiv 2303.13731), whose attention-strength-against-distance view this reproduces per head and layer
(the paper has no code); the head-pruning importance measures of the same paper are the ``head_importance``
analyzer. Images: generated noise images (``build``) or any batch of pixel values (``profile``).

Deviations: the class token is dropped as query and key and the patch attention renormalised (the paper does not
say how it treats it); distances are bucketed by rounding to whole patches. Vision encoders only (ViT, CLIP and
SigLIP vision towers); a 1-D token-distance version for language models is not implemented. Registered with
``needs_images``: the analysis flow loads the model as a vision encoder (tasks/vlm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from components.analyzers.base import AnalysisResult, Analyzer, layer_head_rows, ranked
from components.attention.session import applied
from components.base import ParamError
from components.patches.base import AttentionPatch
from registry import register


@dataclass(frozen=True)
class _ProbRecorder(AttentionPatch):
    """Records every layer's materialised probabilities (no edit)."""

    store: dict | None = None
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = False
    onnx_exportable: ClassVar[bool] = False

    def edit_probs(self, call, probs):
        self.store[call.layer] = (probs.detach(), call.patch_grid, call.n_prefix)
        return probs


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(P, P) Euclidean pixel distance between patch centres on a rows x cols grid (row-major)."""
    rows, cols = grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([r.flatten(), c.flatten()], -1).double() * patch_size  # (P, 2)
    return torch.cdist(pos, pos)  # (P, P)


def distance_stats(probs: torch.Tensor, grid: tuple[int, int], n_prefix: int, patch_size: int,
                   n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean distance (H,), profile (H, n_bins)) of one layer's probabilities (B, H, T, T), averaged over images and
    query patches; the class tokens (first ``n_prefix``) are dropped and patch attention renormalised."""
    a = probs[:, :, n_prefix:, n_prefix:].double()  # (B, H, P, P)
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    dist = patch_distances(grid, patch_size).to(a.device)  # (P, P)
    mean = (a * dist).sum(-1).mean(dim=(0, 2))  # (H,)
    bins = torch.round(dist / patch_size).long().clamp(max=n_bins - 1)  # (P, P)
    onehot = torch.nn.functional.one_hot(bins, n_bins).double()  # (P, P, R)
    profile = torch.einsum("bhij,ijr->hr", a, onehot) / (a.shape[0] * a.shape[2])  # (H, R)
    return mean, profile


@register("attention_distance", version="1.0.0", family="analyzer", paper="arXiv:2303.13731",
          summary="Mean attention distance and distance profile per head of a ViT/CLIP/SigLIP vision encoder.")
@dataclass(frozen=True)
class AttentionDistance(Analyzer):
    """Mean attention distance and distance profile per head of a vision encoder.

    Parameters
    ----------
    n_images : int
        Generated noise images when rows come from ``build``. Default 8.
    image_size : int
        Side of the generated images in pixels (0: the model config's). Default 0.
    batch_size : int
        Images per forward. Default 8.
    seed : int
        Seed of the generated images. Default 0.
    """

    n_images: int = 8
    image_size: int = 0
    batch_size: int = 8
    seed: int = 0

    component_name: ClassVar[str] = "attention_distance"
    primary_array: ClassVar[str] = "mean_distance"
    needs_images: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"n_images": "2", "batch_size": "2"}

    def __post_init__(self) -> None:
        for name in ("n_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ParamError(f"attention_distance.{name}: {getattr(self, name)} < 1")
        if self.image_size < 0:
            raise ParamError(f"attention_distance.image_size: {self.image_size} < 0")

    def build(self) -> list[dict[str, Any]]:
        return [{"image_seed": self.seed * 100003 + i} for i in range(self.n_images)]

    def check_model(self, config: Any) -> None:
        from components.attention import vision

        layout = vision.layout_of(config)
        if layout is None or layout.kind != "encoder":
            raise ValueError(f"attention_distance needs a vision encoder ({', '.join(vision.ENCODERS)}); got "
                             f"{type(config).__name__}")

    def images(self, config: Any, rows: list[dict[str, Any]]) -> torch.Tensor:
        """(N, C, S, S) standard-normal images, one per row's ``image_seed``."""
        size = self.image_size or config.image_size
        channels = getattr(config, "num_channels", 3)
        return torch.stack([torch.randn(channels, size, size, generator=torch.Generator().manual_seed(r["image_seed"]))
                            for r in rows])

    def analyze(self, model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], *,
                progress: bool = False) -> AnalysisResult:
        self.check_model(model.config)
        return self.profile(model, self.images(model.config, rows))

    @torch.no_grad()
    def profile(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> AnalysisResult:
        """The analysis on given images (N, C, H, W)."""
        self.check_model(model.config)
        patch = model.config.patch_size
        extra = {} if pixel_values.shape[-1] == model.config.image_size else {"interpolate_pos_encoding": True}
        sums: dict[int, list] = {}
        n_bins = None
        for start in range(0, pixel_values.shape[0], self.batch_size):
            batch = pixel_values[start : start + self.batch_size]
            store: dict = {}
            with applied(model, _ProbRecorder(store=store)):
                model(pixel_values=batch.to(next(model.parameters()).device), **extra)
            for layer, (probs, grid, n_prefix) in store.items():
                n_bins = n_bins or int(np.ceil(np.hypot(grid[0] - 1, grid[1] - 1))) + 1  # up to the far corner
                mean, prof = distance_stats(probs, grid, n_prefix, patch, n_bins)
                acc = sums.setdefault(layer, [0.0, 0.0, 0])
                acc[0] = acc[0] + mean * len(batch)
                acc[1] = acc[1] + prof * len(batch)
                acc[2] += len(batch)
        layers = sorted(sums)
        mean = np.stack([(sums[layer][0] / sums[layer][2]).cpu().numpy() for layer in layers])  # (L, H)
        prof = np.stack([(sums[layer][1] / sums[layer][2]).cpu().numpy() for layer in layers])  # (L, H, R)
        table = [{"layer": layer, "head": head, "distance": r, "attention": float(prof[layer, head, r])}
                 for layer in range(prof.shape[0]) for head in range(prof.shape[1]) for r in range(prof.shape[2])]
        return AnalysisResult(
            arrays={"mean_distance": mean, "profile": prof},
            tables={"heads": ranked(layer_head_rows({"mean_distance": mean}), "mean_distance"),
                    "profile": table},
            metrics={"mean_distance_first_layer": float(mean[0].mean()),
                     "mean_distance_last_layer": float(mean[-1].mean()), "n_images": float(pixel_values.shape[0])},
            figures={"mean_distance": ("layer_head", "mean_distance")},
        )
