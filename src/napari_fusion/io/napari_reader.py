"""napari reader contribution: files, pair folders and multiscale zarr (OME-Zarr) results -> Image
layers placed in world coordinates.

No napari import here: the reader returns plain LayerData tuples ``(data, kwargs, "image")``.
Each layer's ``metadata`` carries the :class:`~napari_fusion.geometry.Grid` (``"grid"``), the
modality, the source path and the reader's metadata (``"io_meta"``: GeoTIFF tags, NIfTI header),
so fusing from layers and saving the result keep the exact geometry.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..geometry import Grid
from .common import LoadedImage, central_window
from .ome_zarr import multiscale_layout

__all__ = ["get_reader", "layer_data", "multiscale_layer_data", "read_layers", "band_colormaps", "READ_SUFFIXES"]

READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")
_PYRAMID_MIN = 4096  # lazy 2-D scenes larger than this get a strided multiscale pyramid

# Bands of multispectral sensors are usually stored in wavelength order (Landsat B2-B4; IKONOS,
# GeoEye-1: blue, green, red, NIR; WorldView-2: coastal, blue, green, yellow, red, red-edge, NIR1-2).
_BAND_COLORS = {
    3: ("blue", "green", "red"),
    4: ("blue", "green", "red", None),
    8: (None, "blue", "green", None, "red", None, None, None),
}
_B_COLORMAP = {"PET": "inferno", "SPECT": "inferno", "CT": "gray", "vi": "gray", "ms": "gray", "ir": "gray"}


def _suffix_ok(path: str) -> bool:
    return path.lower().endswith(READ_SUFFIXES)


def get_reader(path: str | Sequence[str]) -> Callable | None:
    """Return a reader for image files of known types or a folder with a known pair layout, else None."""
    if isinstance(path, (list, tuple)):
        paths = [str(p) for p in path]
        if not paths or not all(_accepts(p) for p in paths):
            return None
        return read_layers
    return read_layers if _accepts(str(path)) else None


def _accepts(path: str) -> bool:
    p = Path(path)
    if p.is_dir() and multiscale_layout(p) is not None:
        return True
    if p.is_dir():
        from .pairs import find_pairs

        try:
            return bool(find_pairs(p, missing="ignore"))
        except OSError:
            return False
    return p.is_file() and _suffix_ok(path)


def read_layers(path: str | Sequence[str]) -> list[tuple]:
    """LayerData tuples for one or more files, or the first pair of a pair folder."""
    from . import read_image
    from .pairs import read_pair

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[tuple] = []
    for p in paths:
        if Path(p).is_dir() and multiscale_layout(p) is not None:
            out.append(multiscale_layer_data(p))
        elif Path(p).is_dir():
            a, b = read_pair(p)
            out.append(layer_data(a, role="a"))
            out.append(layer_data(b, role="b"))
        else:
            out.append(layer_data(read_image(p)))
    return out


def multiscale_layer_data(path: str | os.PathLike) -> tuple:
    """One LayerData tuple for a multiscale zarr group (an OME-Zarr result of ``fuse-large``): its
    levels as dask arrays with ``multiscale=True``, placed by level 0's grid; bands become one layer
    per band, as for a multi-band file."""
    from .ome_zarr import open_levels

    levels, grid, layout = open_levels(path)
    z0 = levels[0]
    rgb = layout == "yxc"
    channel_axis = 0 if layout == "cyx" else None
    if grid is None:
        grid = Grid.identity(z0.shape[1:] if channel_axis == 0 else z0.shape[:2])
    name = Path(path).name.removesuffix(".zarr") or Path(path).name
    meta = {"path": str(path), "format": "ome-zarr", "levels": len(levels)}
    data, kw, kind = layer_data(LoadedImage(z0, grid, name, rgb=rgb, channel_axis=channel_axis, meta=meta))
    if len(levels) > 1:
        data = levels
        kw["multiscale"] = True
    return (data, kw, kind)


def _contrast(data, rgb: bool) -> tuple[float, float] | None:
    """Robust display range: full 0..255 for 8-bit, 0.5-99.5 percentiles of a subsample otherwise.

    In-memory arrays are subsampled with a stride; lazy ones (memmap, dask) in a central window
    only, so opening a huge scene does not decode all of it.
    """
    if np.dtype(data.dtype) == np.uint8:
        return (0.0, 255.0)
    if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
        n = int(np.prod(data.shape))
        step = max(1, int(np.ceil((n / 1_000_000) ** (1 / data.ndim))))
        sample = np.asarray(data[tuple(slice(None, None, step) for _ in range(data.ndim))], dtype=np.float64)
    else:
        sample = np.asarray(data[central_window(data.shape, 1024)], dtype=np.float64)
    if sample.size == 0:
        return None
    lo, hi = np.percentile(sample, (0.5, 99.5))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1
    return (float(lo), float(hi))


def _band_colour(name: str) -> str | None:
    """'B2 blue' -> 'blue'; red-edge, NIR, coastal and unknown bands -> None."""
    low = name.lower()
    if "edge" in low:
        return None
    m = re.search(r"\b(blue|green|red)\b", low)
    return m.group(1) if m else None


def band_colormaps(n: int, names: Sequence[str] | None = None) -> tuple[list[str], list[bool]]:
    """Colormaps and visibility of ``n`` bands: blue/green/red bands coloured, the rest gray and hidden."""
    if names and len(names) == n:
        cols = [_band_colour(str(nm)) for nm in names]
    else:
        cols = list(_BAND_COLORS.get(n, (None,) * n))
    if not any(cols):
        return ["gray"] * n, [i == 0 for i in range(n)]
    return [c or "gray" for c in cols], [c is not None for c in cols]


def _pyramid(data) -> list:
    levels = [data]
    h, w = data.shape[-2:]
    f = 2
    while max(h, w) // f >= 1024:
        levels.append(data[..., ::f, ::f])
        f *= 2
    return levels


def layer_data(img: LoadedImage, role: str | None = None) -> tuple:
    """One LayerData tuple (or a band-split one) for a loaded image.

    ``role`` ``"b"`` marks the partner of a pair: it is drawn over A half-transparent (colour
    images) or additively with a modality colormap, so both are visible at once.
    """
    kw: dict = {"name": img.name}
    geo = img.grid.layer_kwargs()
    data = img.data
    meta = {
        "grid": img.grid,
        "modality": img.modality,
        "path": img.meta.get("path"),
        "rgb": img.rgb,
        "channel_axis": img.channel_axis,
        "io_meta": img.meta,
    }
    kw["metadata"] = meta
    if img.channel_axis is not None and img.grid.ndim == 3:
        # 4-D series (T, Z, Y, X): one layer with a leading non-spatial axis
        geo = _prepend_axis(geo)
        kw.update(geo)
        kw["colormap"] = "gray"
        kw["contrast_limits"] = _contrast(data, False)
    elif img.channel_axis is not None:
        n = data.shape[img.channel_axis]
        cmaps, visible = band_colormaps(n, img.meta.get("band_names"))
        names = img.meta.get("band_names") or [str(i + 1) for i in range(n)]
        kw.update(geo)
        kw["channel_axis"] = img.channel_axis
        kw["name"] = [f"{img.name} {nm}" for nm in names]
        kw["colormap"] = cmaps
        kw["visible"] = visible
        kw["blending"] = "additive"
        kw["contrast_limits"] = [_contrast(np.take(data, i, axis=img.channel_axis), False) for i in range(n)]
        kw["metadata"] = meta
    else:
        kw.update(geo)
        if img.rgb:
            kw["rgb"] = True
            if np.dtype(data.dtype) != np.uint8:
                kw["contrast_limits"] = _contrast(data, True)
        else:
            kw["contrast_limits"] = _contrast(data, False)
            kw["colormap"] = "gray"
        if role == "b":
            if img.rgb:
                kw["opacity"] = 0.5
            else:
                kw["colormap"] = _B_COLORMAP.get(img.modality or "", "magenta")
                kw["blending"] = "additive"
                kw["opacity"] = 0.6
    big = data.ndim >= 2 and max(data.shape[-2:] if not img.rgb else data.shape[-3:-1]) > _PYRAMID_MIN
    if big and img.meta.get("lazy") and not img.rgb and img.channel_axis is None:
        data = _pyramid(data)
        kw["multiscale"] = True
    return (data, kw, "image")


def _prepend_axis(geo: dict) -> dict:
    out = dict(geo)
    out["scale"] = (1.0, *geo["scale"])
    if "translate" in geo:
        out["translate"] = (0.0, *geo["translate"])
    if "affine" in geo:
        a = np.asarray(geo["affine"])
        n = a.shape[0]
        b = np.eye(n + 1)
        b[1:, 1:] = a
        out["affine"] = b
    return out
