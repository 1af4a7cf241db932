"""Scores: fusion metrics of a fused image against its sources, IoU/Dice of labels against a truth
(painted strokes or a complete label map). What :func:`napari_fusion.evaluate` runs."""
from __future__ import annotations

from typing import Any

import numpy as np

from .engine.pipeline import prepare_pair
from .inputs import as_input, is_layer

__all__ = ["evaluate", "label_scores", "painted_truth", "PAINTED_FRACTION"]


def _unit_y(x: np.ndarray, prepared) -> np.ndarray:
    """A result in A's range (gray, RGB or bands) -> its unit gray/Y with A's intensity mapping."""
    from . import color

    x = np.asarray(x)
    nsp = len(prepared.shape)
    if prepared.bands is not None and x.ndim == nsp + 1 and x.shape[0] == prepared.bands.shape[0]:
        u, _ = color.to_unit(x, prepared.intensity)
        return u.mean(axis=0)
    u, _ = color.to_unit(x, prepared.intensity)
    if u.ndim == nsp + 1 and u.shape[-1] in (3, 4):
        u = color.rgb_to_ycbcr(u[..., :3])[..., 0]
    if u.shape != prepared.shape:
        raise ValueError(f"fused image is {u.shape} (spatial) but source A's grid is {prepared.shape}")
    return u


PAINTED_FRACTION = 0.5  # a truth layer painted in the viewer with fewer nonzero pixels than this is strokes


def painted_truth(truth: Any) -> bool:
    """Whether a ground truth is painted strokes, whose 0 means "unpainted", not a class.

    The rule: a napari Labels layer made in the viewer (no source file in its metadata, not a
    napari-fusion result; a layer marked ``{"napari_fusion": {"role": "strokes"}}`` always counts)
    with fewer than half of its pixels painted (nonzero). Arrays and layers read from a file are
    complete label maps: their 0 is a class (background). Pass ``ignore_unpainted`` to decide it.
    """
    if not is_layer(truth):
        return False
    meta = getattr(truth, "metadata", None) or {}
    info = meta.get("napari_fusion")
    if isinstance(info, dict) and info.get("role"):
        return info.get("role") == "strokes"
    if meta.get("path") or "method" in meta:
        return False
    data = truth.data[0] if getattr(truth, "multiscale", False) else truth.data
    arr = np.asarray(data)
    return bool(arr.size > 0 and np.count_nonzero(arr) < PAINTED_FRACTION * arr.size)


def label_scores(
    pred: Any,
    truth: Any,
    *,
    n_classes: int | None = None,
    class_names: Any = None,
    ignore_index: int | None = None,
    ignore_unpainted: bool = False,
) -> dict[str, float]:
    """IoU and Dice per class, mIoU, mDice and pixel accuracy of ``pred`` against ``truth``
    (:func:`napari_fusion.metrics.segmentation_metrics`).

    ``ignore_unpainted``: the truth is painted strokes (see :func:`painted_truth`), so its 0 pixels
    are left out and class 0 is not scored: its IoU/Dice are dropped and the means run over the
    painted classes and the classes predicted on painted pixels; pixel accuracy is the fraction of
    painted pixels predicted right.
    """
    from .metrics import segmentation_metrics

    if not ignore_unpainted:
        return segmentation_metrics(pred, truth, n_classes=n_classes, ignore_index=ignore_index, class_names=class_names)
    t = np.asarray(truth)
    if ignore_index is not None:
        t = np.where(t == ignore_index, 0, t)
    if not np.any(t):
        raise ValueError("the ground truth has no painted (nonzero) pixels to score")
    out = segmentation_metrics(pred, t, n_classes=n_classes, ignore_index=0, class_names=class_names)
    iou = [k for k in out if k.startswith("IoU/")]
    dice = [k for k in out if k.startswith("Dice/")]
    for k in (iou[0], dice[0]):  # class 0: not a class of painted strokes
        del out[k]
    for mean, keys in (("mIoU", iou[1:]), ("mDice", dice[1:])):
        vals = [out[k] for k in keys if np.isfinite(out[k])]
        out[mean] = float(np.mean(vals)) if vals else float("nan")
    return {k: out[k] for k in [*iou[1:], *dice[1:], "mIoU", "mDice", "pixel_accuracy"]}


def evaluate(
    fused: Any,
    a: Any,
    b: Any,
    *,
    labels: Any = None,
    truth: Any = None,
    n_classes: int | None = None,
    ignore_index: int | None = None,
    ignore_unpainted: bool | None = None,
    max_slices: int | None = 16,
) -> dict[str, float]:
    """Fusion metrics (EN, SD, SF, AG, MI, VIF, Qabf, SSIM, SCD) of a fused image, plus IoU/Dice if labels given.

    Sources and result are compared as the methods saw them: gray/Y on A's grid, 0..255 (rounded
    as an 8-bit file would be). Volumes: the mean over the slices where A or B is not constant, at
    most ``max_slices`` spread over the volume (None: all; :func:`napari_fusion.metrics.scored_slices`).
    ``labels`` / ``truth``: predicted and true label maps for segmentation metrics.
    ``ignore_unpainted``: leave the truth's 0 pixels out and do not score class 0 (painted strokes,
    see :func:`label_scores`); None (default) decides by :func:`painted_truth`: yes for a sparse
    Labels layer painted in the viewer, no for arrays and files. Example::

        scores = evaluate(fused, ir, vi)   # {'EN': 6.9, 'SD': 41.2, ...}
    """
    from .metrics import fusion_metrics, volume_fusion_metrics

    sa, sb, sf = as_input(a, "A"), as_input(b, "B"), as_input(fused, "fused")
    prepared = prepare_pair(sa.data, sb.data, grid_a=sa.grid, grid_b=sb.grid, rgb_a=sa.rgb, rgb_b=sb.rgb, channel_axis_b=sb.channel_axis)
    fy = _unit_y(sf.data, prepared)
    a255, b255, f255 = (np.round(np.clip(v, 0, 1) * 255.0) for v in (prepared.a, prepared.b, fy))
    if a255.ndim == 2:
        out = fusion_metrics(f255, a255, b255)
    else:  # the slices with content, at most max_slices (metrics.scored_slices: the widget's rule too)
        out = volume_fusion_metrics(f255, a255, b255, max_slices=max_slices, names=(sa.name, sb.name))
    if labels is not None and truth is not None:
        lab = np.asarray(as_input(labels, "labels").data)
        tru = np.asarray(as_input(truth, "truth").data)
        unpainted = painted_truth(truth) if ignore_unpainted is None else bool(ignore_unpainted)
        out.update(label_scores(lab, tru, n_classes=n_classes, ignore_index=ignore_index, ignore_unpainted=unpainted))
    return out
