"""napari writer contribution: save one Image layer (TIFF/GeoTIFF, NIfTI, PNG/JPEG) with its geometry.

The geometry written is the layer's: its ``metadata["grid"]`` when the reader (or the Fusion widget)
put one there, else the grid composed from the layer's scale/translate/rotate/affine. A layer whose
``metadata["io_meta"]`` holds the reader's metadata of a GeoTIFF or NIfTI source (or of the source A
it was fused from) keeps that file's GeoKeys/CRS or affine/header.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry import Grid
from ._common import LoadedImage
from .writers import write_image as _write

__all__ = ["write_image", "grid_from_attributes"]

_UNITS = {"millimeter": "mm", "meter": "m", "pixel": "pixel", "micrometer": "um", "kilometer": "km"}


def _units(attributes: dict) -> str:
    u = attributes.get("units")
    if u is None:
        return "pixel"
    u = u[0] if isinstance(u, (list, tuple)) and u else u
    name = str(u)
    return _UNITS.get(name, name)


def grid_from_attributes(spatial: tuple[int, ...], attributes: dict) -> Grid:
    """Grid of a layer's spatial axes from napari attributes (metadata grid first)."""
    meta = attributes.get("metadata") or {}
    g = meta.get("grid")
    if isinstance(g, Grid) and tuple(g.shape) == tuple(spatial):
        return g
    n = len(spatial)

    def tail(key, default):
        v = attributes.get(key)
        if v is None:
            return np.asarray(default, float)
        return np.asarray(v, float)

    scale = tail("scale", np.ones(n))[-n:]
    translate = tail("translate", np.zeros(n))[-n:]
    rotate = tail("rotate", np.eye(n))
    rotate = rotate[-n:, -n:] if rotate.ndim == 2 else np.eye(n)
    shear = tail("shear", np.zeros(n * (n - 1) // 2))
    sh = np.eye(n)
    if shear.ndim == 2:
        sh = shear[-n:, -n:]
    elif shear.size == n * (n - 1) // 2:
        sh[np.triu_indices(n, 1)] = shear
    lin = rotate @ sh @ np.diag(scale)
    base = np.eye(n + 1)
    base[:n, :n] = lin
    base[:n, n] = translate
    extra = attributes.get("affine")
    if extra is not None:
        extra = np.asarray(getattr(extra, "affine_matrix", extra), float)
        if extra.shape[0] > n + 1:
            extra = np.block([[extra[-n - 1 : -1, -n - 1 : -1], extra[-n - 1 : -1, -1:]], [np.zeros((1, n)), np.ones((1, 1))]])
        base = extra @ base
    return Grid(tuple(spatial), base, _units(attributes))


def write_image(path: str, data, attributes: dict) -> list[str]:
    """Write a single Image layer's data; returns the written path (napari's writer contract)."""
    arr = np.asarray(data[0] if attributes.get("multiscale") else data)
    meta = attributes.get("metadata") or {}
    rgb = bool(attributes.get("rgb", False))
    spatial = tuple(arr.shape[:-1]) if rgb else tuple(arr.shape)
    like = None
    io_meta = meta.get("io_meta")
    if isinstance(io_meta, dict) and io_meta:
        grid_like = meta.get("grid") if isinstance(meta.get("grid"), Grid) else None
        like = LoadedImage(
            data=np.empty((0,)),
            grid=grid_like if grid_like is not None else Grid.identity(spatial),
            name=str(attributes.get("name", "image")),
            rgb=rgb,
            meta=io_meta,
        )
        like.data = np.broadcast_to(np.zeros((), arr.dtype), arr.shape)
    grid = grid_from_attributes(spatial, attributes)
    if like is not None:
        like.grid = grid
    out = _write(Path(path), arr, like=like, grid=grid, rgb=rgb)
    return [str(out)]
