"""Fusion quality metrics (EN ... SCD) and segmentation metrics (IoU, Dice).

Plain NumPy/SciPy: importable without torch, Qt or napari.
"""
from __future__ import annotations

from . import fusion, segmentation
from .fusion import *  # noqa: F403 - the names of fusion.__all__
from .segmentation import *  # noqa: F403 - the names of segmentation.__all__

__all__ = [*fusion.__all__, *segmentation.__all__]
