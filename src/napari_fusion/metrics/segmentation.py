"""Segmentation metrics: confusion matrix, per-class IoU and Dice, their means, pixel accuracy.

Conventions: rows of the confusion matrix are the truth, columns the prediction; pixels whose truth
is ``ignore_index`` are left out; a class absent from both truth and prediction has IoU/Dice NaN and
does not enter the means (it was neither found nor missed).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "segmentation_metrics", "per_class_scores"]


def _as_labels(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN/inf; labels must be integer class values")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} holds non-integer values (dtype {arr.dtype}); labels must be integer class values")
        return arr.astype(np.int64)
    raise ValueError(f"{name} has unsupported dtype {arr.dtype}; labels must be integer class values")


def confusion_matrix(pred, truth, n_classes: int | None = None, ignore_index: int | None = None) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: ``cm[t, p]`` pixels of true class t predicted as p.

    ``n_classes`` defaults to one more than the largest label seen (ignored pixels excluded).
    Labels must lie in 0..n_classes-1, except truth pixels equal to ``ignore_index``.
    """
    p, t = _as_labels(pred, "prediction"), _as_labels(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"prediction has shape {p.shape} but truth has shape {t.shape}; they must match")
    keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    p, t = p[keep], t[keep]
    if n_classes is None:
        n_classes = int(max(p.max(initial=0), t.max(initial=0))) + 1
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    for arr, name in ((t, "truth"), (p, "prediction")):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
            extra = "" if ignore_index is None or name == "prediction" else f" other than ignore_index {ignore_index}"
            raise ValueError(f"{name} holds label {bad}{extra}, outside the classes 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and Dice from a confusion matrix; NaN for a class absent from truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        dice = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return iou, dice


def _class_name(names: Any, i: int) -> str:
    if names is None or i >= len(names):
        return str(i)
    item = names[i]
    if isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[1], str):
        return item[1]  # (index, name, colour) rows such as methods.classes.BRATS_CLASSES
    return str(getattr(item, "name", item))


def segmentation_metrics(
    pred,
    truth,
    n_classes: int | None = None,
    ignore_index: int | None = None,
    class_names: Sequence[Any] | None = None,
) -> dict[str, float]:
    """IoU and Dice per class, their means over present classes, and pixel accuracy.

    Keys: ``"IoU/<class>"`` and ``"Dice/<class>"`` for every class (named by ``class_names``, a
    sequence of strings, :class:`~napari_fusion.methods.registry.ClassInfo` or ``(index, name,
    colour)`` rows, indexed by label value; the label value otherwise), then ``"mIoU"``, ``"mDice"`` and ``"pixel_accuracy"``.
    """
    if n_classes is None and class_names is not None:
        n_classes = len(class_names)
    cm = confusion_matrix(pred, truth, n_classes=n_classes, ignore_index=ignore_index)
    iou, dice = per_class_scores(cm)
    out: dict[str, float] = {}
    for i in range(cm.shape[0]):
        out[f"IoU/{_class_name(class_names, i)}"] = float(iou[i])
    for i in range(cm.shape[0]):
        out[f"Dice/{_class_name(class_names, i)}"] = float(dice[i])
    present = ~np.isnan(iou)
    out["mIoU"] = float(iou[present].mean()) if present.any() else float("nan")
    out["mDice"] = float(dice[present].mean()) if present.any() else float("nan")
    total = cm.sum()
    out["pixel_accuracy"] = float(np.trace(cm) / total) if total else float("nan")
    return out
