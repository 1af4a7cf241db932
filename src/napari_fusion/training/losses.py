"""Losses of task-driven fusion: the learnable fusion loss and the segmentation task loss.

Fusion loss (TDFusion): ``L = L_int(w) + lambda_grad * L_grad``.
- ``L_int``: per-pixel weighted error to the two sources, with weights ``w = (w_a, w_b)`` (softmax
  over the two sources, from the loss generation module).
  ``"l1"`` (TDFusion's form, the default of new trainings): ``2 * mean(w_a |F-A| + w_b |F-B|)``; its
  per-pixel minimiser is the weighted median, i.e. the source whose weight is larger: the fused image
  keeps each source's own contrast where the loss says to follow it (no washed-out average).
  ``"l2"`` (files trained before 2026-11-30): ``2 * mean(w_a (F-A)^2 + w_b (F-B)^2)``, minimised by the
  convex blend ``w_a A + w_b B``. The factor 2 makes the neutral start (0.5, 0.5) the sum of the two.
- ``L_grad``: L1 between the fused Sobel gradient magnitude and the larger of the sources' (fixed,
  the paper's), or of the sources' scaled by the learned weights (``grad_target="weighted"``).
Task loss: cross-entropy with an ignore value (unpainted or unlabelled pixels), optional class weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "sobel",
    "gradient_magnitude",
    "INTENSITY_KINDS",
    "intensity_loss",
    "GRAD_TARGETS",
    "gradient_loss",
    "fusion_loss",
    "task_loss",
    "class_weights_from_counts",
]

IGNORE_INDEX = -100  # label value the task loss skips (torch's default ignore_index)

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives (x, y) of an (N, 1, H, W) image, replicate-padded (no border artefact)."""
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype).reshape(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(xp, kx), F.conv2d(xp, ky)


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|d/dx| + |d/dy| (L1 gradient magnitude) of an (N, 1, H, W) image."""
    gx, gy = sobel(x)
    return gx.abs() + gy.abs()


INTENSITY_KINDS = ("l1", "l2")


def intensity_loss(
    fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, kind: str = "l2"
) -> torch.Tensor:
    """Learned intensity term ``2 * mean(w_a d(F,A) + w_b d(F,B))``, ``d`` = |.| (l1) or (.)^2 (l2);
    ``weights`` is (N, 2, H, W)."""
    if weights.shape[1] != 2:
        raise ValueError(f"intensity weights need 2 channels (one per source), got {tuple(weights.shape)}")
    if kind not in INTENSITY_KINDS:
        raise ValueError(f"intensity loss kind must be one of {INTENSITY_KINDS}, got {kind!r}")
    if kind == "l1":
        return 2.0 * (weights[:, :1] * (fused - a).abs() + weights[:, 1:2] * (fused - b).abs()).mean()
    return 2.0 * (weights[:, :1] * (fused - a).pow(2) + weights[:, 1:2] * (fused - b).pow(2)).mean()


GRAD_TARGETS = ("max", "weighted")


def gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None,
                  target: str = "max") -> torch.Tensor:
    """Texture term: L1 between |grad F| and a target gradient magnitude.

    ``"max"`` (TDFusion's fixed term): ``max(|grad A|, |grad B|)``, so the fused image takes the
    stronger texture of either source everywhere. ``"weighted"``: ``max(s_a |grad A|, s_b |grad B|)``
    with ``s = min(1, 2 w)`` from the learned intensity weights ``w`` (N, 2, H, W): the same as
    ``"max"`` at the neutral start (0.5, 0.5), and where the loss module follows one source
    (``w_a`` -> 1) the other source's texture fades out of the target, so the learned loss decides
    texture as well as intensity (an extension of the paper's loss, ours)."""
    if target not in GRAD_TARGETS:
        raise ValueError(f"gradient target must be one of {GRAD_TARGETS}, got {target!r}")
    ga, gb = gradient_magnitude(a), gradient_magnitude(b)
    if target == "weighted":
        if weights is None:
            raise ValueError("the weighted gradient target needs the intensity weights")
        s = (2.0 * weights).clamp(max=1.0)
        ga, gb = s[:, :1] * ga, s[:, 1:2] * gb
    return (gradient_magnitude(fused) - torch.maximum(ga, gb)).abs().mean()


def fusion_loss(
    fused: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    weights: torch.Tensor,
    grad_weight: float = 1.0,
    intensity: str = "l2",
    max_weight: float = 0.0,
    grad_target: str = "max",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total learnable fusion loss and its parts (``{"int": ..., "grad": ..., "max": ...}``).

    ``max_weight``: weight of a fixed l1 term towards the brighter source, ``|F - max(A, B)|``
    (SeAFusion's intensity loss). The learned per-pixel weights choose between the sources; with
    weights near 0.5 the l1 term alone leaves a blend of low contrast, which this term lifts.
    ``grad_target``: see :func:`gradient_loss`.
    """
    li = intensity_loss(fused, a, b, weights, intensity)
    lg = gradient_loss(fused, a, b, weights, grad_target)
    total = li + grad_weight * lg
    parts = {"int": li, "grad": lg}
    if max_weight:
        lm = (fused - torch.maximum(a, b)).abs().mean()
        total = total + max_weight * lm
        parts["max"] = lm
    return total, parts


def task_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over labelled pixels only; pixels equal to ``ignore_index`` contribute nothing.

    Returns 0 (with a graph) when no pixel is labelled, so a batch of unlabelled crops is harmless.
    Raises ValueError if a label is outside ``0..n_classes-1`` (and not the ignore value).
    """
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0] or logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match (N,C,H,W)/(N,H,W)")
    labels = labels.long()
    n = logits.shape[1]
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    lv = labels[valid]
    lo, hi = int(lv.min()), int(lv.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"labels hold values {lo}..{hi} but the segmenter has classes 0..{n - 1}")
    w = class_weights.to(device=logits.device, dtype=logits.dtype) if class_weights is not None else None
    return F.cross_entropy(logits, labels, weight=w, ignore_index=ignore_index)


def class_weights_from_counts(counts, power: float = 0.5, cap: float = 20.0) -> torch.Tensor:
    """Inverse-frequency class weights ``(1/f)^power`` normalised to mean 1, capped (rare classes count more)."""
    c = torch.as_tensor(counts, dtype=torch.float64).clamp_min(1.0)
    w = (c.sum() / c).pow(power)
    w = w / w.mean()
    return w.clamp(max=cap).float()
