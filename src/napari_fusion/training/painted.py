"""What both fine-tuning paths share: painted labels, their checks, and the progress they yield.

The label convention is the one of :mod:`.finetune`: 0 = unpainted (ignored), a painted value
``v > 0`` trains class ``v``, ``background_value`` (if given) trains class 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .losses import IGNORE_INDEX

__all__ = ["FinetuneProgress", "check_sparse_labels", "painted_targets", "class_names_for"]


@dataclass
class FinetuneProgress:
    """Yielded after every fine-tuning step (for progress bars and a live loss readout)."""

    step: int
    steps: int
    task_loss: float
    fusion_loss: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    model: Any = None  # the copy being trained (between steps: show its fused image and labels so far)


def check_sparse_labels(sparse_labels, shape: tuple[int, ...], name: str = "painted labels") -> np.ndarray:
    """Validate painted labels against the sources' shape; returns them as int64.

    Errors: other shape, NaN/inf, non-integer or negative values, nothing painted.
    """
    lab = np.asarray(sparse_labels)
    if lab.shape != tuple(shape):
        raise ValueError(
            f"{name} are {'x'.join(map(str, lab.shape)) or 'scalar'} but the sources are "
            f"{'x'.join(map(str, shape))}; paint the labels on the fused image's grid"
        )
    if lab.dtype == np.bool_:
        lab = lab.astype(np.int64)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)):
            raise ValueError(f"{name} contain NaN/inf values; labels must be whole numbers (0 = unpainted)")
        if not np.all(lab == np.round(lab)):
            raise ValueError(f"{name} contain non-integer values; labels must be whole numbers (0 = unpainted)")
    elif not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{name} have unsupported dtype {lab.dtype}; expected integer labels")
    lab = lab.astype(np.int64)
    if lab.min() < 0:
        raise ValueError(f"{name} contain negative values (min {lab.min()}); 0 = unpainted, 1.. = classes")
    if not np.any(lab):
        raise ValueError(f"{name} are empty: nothing is painted (all 0); paint a few strokes of at least two classes")
    return lab


def painted_targets(labels: np.ndarray, background_value: int | None = None) -> np.ndarray:
    """Painted values -> training targets: 0 -> ignored, ``background_value`` -> class 0, v -> v."""
    t = labels.astype(np.int64).copy()
    t[labels == 0] = IGNORE_INDEX
    if background_value is not None:
        if int(background_value) <= 0:
            raise ValueError(f"background_value must be a painted value > 0, got {background_value}")
        t[labels == int(background_value)] = 0
    return t


def class_names_for(class_names, values) -> dict[int, str]:
    """``{value: name}`` for the painted ``values`` from a ``{value: name}`` mapping or a list indexed by value."""
    if class_names is None:
        return {}
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    names = list(class_names)
    return {int(v): str(names[int(v)]) for v in values if 0 <= int(v) < len(names)}
