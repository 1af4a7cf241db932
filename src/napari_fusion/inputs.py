"""Sources as the pipeline wants them: arrays, napari layers, LoadedImages and paths as one
:class:`SourceInput` (data, grid, colour flag, bands axis, name). napari is never imported here."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import Grid

__all__ = ["SourceInput", "as_input", "is_layer", "grid_kw"]


@dataclass
class SourceInput:
    """One source as the pipeline wants it: data, grid (or None), colour flag, bands axis, a name."""

    data: Any
    grid: Grid | None
    rgb: bool | None
    channel_axis: int | None
    name: str
    like: Any = None  # the LoadedImage it came from (to write results with its geometry)
    layer: Any = None  # the napari layer it came from


def is_layer(x: Any) -> bool:
    """Whether ``x`` is a napari layer (anything with ``.data`` and ``.scale`` that is not an array)."""
    return not isinstance(x, np.ndarray) and hasattr(x, "data") and hasattr(x, "scale")


def _layer_grid(layer: Any, spatial: tuple[int, ...]) -> Grid | None:
    """The layer's grid by the one layer -> grid rule (:func:`napari_fusion.io.layers.grid_of_layer`,
    the widgets' and the writer's too: scale/translate/rotate/shear/affine as napari composes them);
    None for a layer without geometry (index space in pixels)."""
    from .io.layers import grid_of_layer

    grid = grid_of_layer(layer, spatial)
    return None if grid.is_identity else grid


def as_input(x: Any, name: str = "A") -> SourceInput:
    """Turn an array, a napari layer, a LoadedImage or a path into a :class:`SourceInput`."""
    from .io import LoadedImage, read_image

    if isinstance(x, SourceInput):
        return x
    if isinstance(x, (str, os.PathLike)):
        x = read_image(x)
    if isinstance(x, LoadedImage):
        return SourceInput(x.data, x.grid, x.rgb, x.channel_axis, x.name or name, like=x)
    if is_layer(x):
        data = x.data
        if getattr(x, "multiscale", False):
            data = data[0]
        rgb = bool(getattr(x, "rgb", False))
        meta = getattr(x, "metadata", None) or {}
        cax = meta.get("channel_axis") if np.ndim(data) == 3 and not rgb else None
        if cax is not None and isinstance(meta.get("grid"), Grid) and meta["grid"].ndim == 3:
            cax = None  # a volume
        if cax is not None:
            cax = int(cax) % 3
            spatial = tuple(s for i, s in enumerate(data.shape) if i != cax)
        else:
            spatial = tuple(data.shape[:-1]) if rgb else tuple(data.shape)
        grid = _layer_grid(x, spatial)
        return SourceInput(data, grid, rgb, cax, str(getattr(x, "name", name)), layer=x)
    return SourceInput(x, None, None, None, name)


def grid_kw(src: SourceInput, kw: dict, key: str) -> Grid | None:
    """The grid given as keyword ``key`` (taken out of ``kw``), else the source's own."""
    return kw.pop(key, None) or src.grid
