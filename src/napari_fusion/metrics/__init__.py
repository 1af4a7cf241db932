"""Fusion quality metrics (EN ... SCD) and segmentation metrics (IoU, Dice).

Plain NumPy/SciPy: importable without torch, Qt or napari.
"""
from __future__ import annotations

from .fusion import (
    METRIC_DESCRIPTIONS,
    MAX_VOLUME_SLICES,
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
    scored_slices,
    spatial_frequency,
    ssim,
    std,
    vif,
    volume_fusion_metrics,
)
from .segmentation import confusion_matrix, per_class_scores, segmentation_metrics

__all__ = [
    "METRIC_NAMES",
    "METRIC_DESCRIPTIONS",
    "QABF_MAX",
    "VIF_MIN_SIZE",
    "fusion_metrics",
    "volume_fusion_metrics",
    "scored_slices",
    "MAX_VOLUME_SLICES",
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
