"""napari writer contribution: save one Image layer (TIFF/GeoTIFF, NIfTI, PNG/JPEG) with its geometry.

The geometry written is the layer's as napari shows it: its scale/translate/rotate/shear/affine
composed as napari does, or exactly its ``metadata["grid"]`` (put there by the reader or the Fusion
widget) when those agree with it (:mod:`napari_fusion.io.layers`, the rule the API and the widgets
use too). A layer whose
``metadata["io_meta"]`` holds the reader's metadata of a GeoTIFF or NIfTI source (or of the source A
it was fused from) keeps that file's GeoKeys/CRS or affine/header.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry import Grid
from .common import LoadedImage
from .layers import grid_of_layer
from .writers import write_image as _write

__all__ = ["write_image", "grid_from_attributes"]


def grid_from_attributes(spatial: tuple[int, ...], attributes: dict) -> Grid:
    """Grid of a layer's spatial axes from its napari attributes, by the one layer -> grid rule
    (:func:`napari_fusion.io.layers.grid_of_layer`: the reader's grid when the transforms agree with
    it, else scale/translate/rotate/shear/affine as napari composes them)."""
    return grid_of_layer(attributes, tuple(spatial))


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
