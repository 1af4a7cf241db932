"""PNG / JPEG / TIFF / GeoTIFF readers: gray, RGB and multi-band rasters with their geometry.

Layouts returned: gray ``(H, W)``; RGB ``(H, W, 3)`` (RGBA loses its alpha; an RGB file whose three
channels are equal becomes gray); bands ``(C, H, W)``; ImageJ-style Z stacks ``(Z, Y, X)``. Stored
dtypes are kept (16-bit stays 16-bit). TIFFs larger than ``LAZY_BYTES`` come back memory-mapped
(uncompressed) or as a dask array over the TIFF's tiles/strips instead of being read whole.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..geometry import Grid
from . import common
from .common import ImageReadError, LoadedImage, check_pixels
from .geotiff import GDAL_METADATA, geotransform, grid_from_geotags, raster_type, read_geotags

__all__ = ["read_raster", "normalize_channels", "band_names"]


def _is_gray_rgb(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def normalize_channels(arr: np.ndarray, path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Interleaved ``(H, W[, S])`` pixels -> gray ``(H, W)`` or RGB ``(H, W, 3)``; returns (array, rgb)."""
    if arr.ndim == 2:
        return arr, False
    if arr.ndim != 3:
        raise ImageReadError(path, f"unsupported image layout {arr.shape} (expected H x W gray or H x W x 3 RGB)")
    c = arr.shape[-1]
    if c == 1:
        return arr[..., 0], False
    if c == 2:
        raise ImageReadError(
            path, "has 2 channels per pixel (gray + alpha?); supported: gray, RGB, RGBA or a bands-first stack"
        )
    if c == 4:
        arr = arr[..., :3]
        c = 3
    if c == 3:
        if not isinstance(arr, np.memmap) and _is_gray_rgb(arr):
            return np.ascontiguousarray(arr[..., 0]), False
        return arr, True
    raise ImageReadError(path, f"has {c} interleaved channels; only gray, RGB and RGBA images are read this way")


def _read_png_jpeg(p: Path, fmt: str) -> np.ndarray:
    try:
        if fmt == "png":
            import imagecodecs

            arr = imagecodecs.png_decode(p.read_bytes())  # keeps 16-bit RGB, unlike Pillow
        else:
            import imageio.v3 as iio

            arr = iio.imread(p)
    except Exception as err:
        try:  # palette / odd PNGs: Pillow via imageio
            import imageio.v3 as iio

            arr = iio.imread(p)
        except Exception:
            raise ImageReadError(p, f"cannot decode {fmt.upper()} ({type(err).__name__}: {err})") from err
    return np.asarray(arr)


def _lazy_tiff(p: Path, series_index: int = 0):
    """Memory-map an uncompressed TIFF, else a dask array reading its chunks on demand."""
    import tifffile

    try:
        return tifffile.memmap(str(p), series=series_index, mode="r")
    except Exception:
        pass
    import dask.array as da
    import zarr

    store = tifffile.imread(str(p), aszarr=True, series=series_index)
    z = zarr.open(store, mode="r")
    if hasattr(z, "shape"):
        return da.from_zarr(z)
    return da.from_zarr(z["0"])  # multiscale group: level 0


def _read_tiff(p: Path) -> tuple[np.ndarray, bool, int | None, Grid, dict]:
    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tf:
            if not tf.series:
                raise ImageReadError(p, "TIFF holds no image series")
            series = tf.series[0]
            axes = series.axes
            page = tf.pages[0]
            photometric = int(page.photometric) if page.photometric is not None else None
            geotags = read_geotags(page)
            extras = tuple(getattr(page, "extrasamples", ()) or ())
            lazy = p.stat().st_size > common.LAZY_BYTES
            data = _lazy_tiff(p) if lazy else series.asarray()
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(p, f"cannot read as TIFF ({type(err).__name__}: {err})") from err
    meta: dict = {"path": str(p), "format": "tiff", "tiff_axes": axes, "photometric": photometric}
    if np.iscomplexobj(data) or data.dtype == np.bool_ or data.dtype.kind not in "uif":
        raise ImageReadError(p, f"unsupported pixel type {data.dtype} (expected integers or floats)")
    # drop singleton non-spatial axes
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] != 1]
    if len(keep) != data.ndim:
        data = data.reshape(tuple(data.shape[i] for i in keep))
        axes = "".join(axes[i] for i in keep)
    rgb, channel_axis = False, None
    is_rgb_photo = photometric == 2  # RGB
    if axes == "YX":
        pass
    elif axes == "YXS":
        s = data.shape[-1]
        if s in (3, 4) and (is_rgb_photo or s == 3 or extras):
            data, rgb = normalize_channels(data, p) if not lazy else (data[..., :3], True)
        elif s == 2:
            normalize_channels(data, p)  # raises the 2-channel error
        else:
            data = np.moveaxis(data, -1, 0)
            channel_axis = 0
    elif len(axes) == 3 and axes.endswith("YX"):
        lead = axes[0]
        if lead == "S" and is_rgb_photo and data.shape[0] in (3, 4):
            data = np.moveaxis(data[:3], 0, -1)
            data, rgb = normalize_channels(data, p) if not lazy else (data, True)
        elif lead == "Z":
            meta["volume"] = True
        else:
            channel_axis = 0
    else:
        raise ImageReadError(p, f"unsupported TIFF layout: axes {axes!r}, shape {tuple(data.shape)}")
    spatial = tuple(s for i, s in enumerate(data.shape) if i != channel_axis and not (rgb and i == data.ndim - 1))
    grid = None
    if geotags and len(spatial) == 2:
        try:
            grid = grid_from_geotags(geotags, spatial)
        except Exception as err:
            raise ImageReadError(p, f"unreadable GeoTIFF georeferencing ({err})") from err
    if grid is not None:
        meta["geotiff_tags"] = geotags
        meta["raster_type"] = "PixelIsPoint" if raster_type(geotags) == 2 else "PixelIsArea"
        meta["geotransform"] = geotransform(grid)
    else:
        grid = Grid.identity(spatial)
    if lazy:
        meta["lazy"] = True
    if channel_axis is not None and GDAL_METADATA in geotags:
        names = band_names(geotags[GDAL_METADATA][2], data.shape[channel_axis])
        if names:
            meta["band_names"] = names
    return data, rgb, channel_axis, grid, meta


def band_names(gdal_metadata: str | bytes, n: int) -> list[str] | None:
    """Band descriptions (``<Item name="DESCRIPTION" sample="i" role="description">``) of GDAL metadata XML."""
    import xml.etree.ElementTree as ET

    try:
        text = gdal_metadata.decode() if isinstance(gdal_metadata, bytes) else str(gdal_metadata)
        root = ET.fromstring(text.strip("\x00 "))
    except ET.ParseError:
        return None
    names: dict[int, str] = {}
    for item in root.iter("Item"):
        if item.get("name", "").upper() == "DESCRIPTION" and item.get("sample") is not None and item.text:
            names[int(item.get("sample"))] = item.text.strip()
    if len(names) != n:
        return None
    return [names[i] for i in range(n)]


def read_raster(path: str | os.PathLike, fmt: str, *, name: str | None = None, modality: str | None = None) -> LoadedImage:
    """Read a PNG / JPEG / TIFF file (``fmt`` from :func:`~napari_fusion.io.common.detect_format`)."""
    p = Path(path)
    if fmt in ("png", "jpeg"):
        arr = _read_png_jpeg(p, fmt)
        if np.iscomplexobj(arr) or arr.dtype == np.bool_ or arr.dtype.kind not in "uif":
            raise ImageReadError(p, f"unsupported pixel type {arr.dtype}")
        data, rgb = normalize_channels(arr, p)
        channel_axis = None
        grid = Grid.identity(data.shape[:2])
        meta = {"path": str(p), "format": fmt}
    elif fmt == "tiff":
        data, rgb, channel_axis, grid, meta = _read_tiff(p)
    else:
        raise ImageReadError(p, f"not a raster image format: {fmt}")
    check_pixels(data, p)
    return LoadedImage(
        data=data,
        grid=grid,
        name=name or p.stem,
        rgb=rgb,
        channel_axis=channel_axis,
        modality=modality,
        meta=meta,
    )
