"""Readers and writers: images, multi-band/GeoTIFF, NIfTI, pair folders; atomic writes.

Plain functions (no Qt, no napari) used by the API, the CLI and the napari reader/writer
contributions (:mod:`.napari_reader`, :mod:`.napari_writer`)::

    img = read_image("pan.tif")          # LoadedImage(data, grid, name, rgb, channel_axis, modality, meta)
    a, b = read_pair("remote/Landsat8")   # a pair folder, a Pair, or two paths
    pairs = find_pairs("RoadScene")       # [Pair(name, path_a, path_b, modality_a, modality_b), ...]
    write_image("fused.tif", fused, like=a)
"""
from __future__ import annotations

import os
from pathlib import Path

from .common import LAZY_BYTES, ImageReadError, LoadedImage, Pair, detect_format
from .pairs import find_pairs, read_pair
from .writers import write_image

__all__ = [
    "LoadedImage",
    "Pair",
    "ImageReadError",
    "read_image",
    "read_pair",
    "find_pairs",
    "write_image",
    "detect_format",
    "LAZY_BYTES",
]


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read one image file (PNG, JPEG, TIFF/GeoTIFF, NIfTI), chosen by content and extension.

    Raises :class:`ImageReadError` (a ValueError) naming the file for missing, empty, corrupt or
    unsupported files (dtype, channel count) and for NaN/inf pixels.
    """
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "nifti":
        from .nifti import read_nifti

        return read_nifti(p)
    from .images import read_raster

    return read_raster(p, fmt)
