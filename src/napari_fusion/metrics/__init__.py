"""Fusion quality metrics (EN ... SCD) and segmentation metrics (IoU, Dice).

Plain NumPy/SciPy: importable without torch, Qt or napari.
"""
from __future__ import annotations

from .fusion import (
    METRIC_DESCRIPTIONS,
    METRIC_NAMES,
    QABF_MAX,
    VIF_MIN_SIZE,
    as_gray255,
    average_gradient,
    entropy,
    fusion_metrics,
    mutual_information,
    qabf,
    scd,
    spatial_frequency,
    ssim,
    std,
    vif,
)
from .segmentation import confusion_matrix, per_class_scores, segmentation_metrics

__all__ = [
    "METRIC_NAMES",
    "METRIC_DESCRIPTIONS",
    "QABF_MAX",
    "VIF_MIN_SIZE",
    "fusion_metrics",
    "segmentation_metrics",
    "confusion_matrix",
    "per_class_scores",
    "as_gray255",
    "entropy",
    "std",
    "spatial_frequency",
    "average_gradient",
    "mutual_information",
    "vif",
    "qabf",
    "ssim",
    "scd",
]
