"""Writers: PNG/JPEG (8-bit; PNG also 16-bit), TIFF (any dtype, bands), GeoTIFF, NIfTI — all atomic.

Geometry comes from ``grid`` or from ``like`` (the reference source as read, e.g. the PAN GeoTIFF
or the MRI volume), so a fused result keeps A's georeferencing tags or A's affine and header.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..geometry import Grid
from .common import LoadedImage
from .atomic import atomic_path

__all__ = ["write_image", "suffix_of"]

_TILED_BYTES = 64 << 20  # larger TIFFs are written tiled (and as BigTIFF past 3.5 GB)


def suffix_of(path: str | os.PathLike) -> str:
    """Lower-case format suffix: ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _layout(data, like: LoadedImage | None, rgb: bool | None) -> tuple[bool, int | None, tuple[int, ...]]:
    """(rgb, channel_axis, spatial shape) of data to be written."""
    shape = tuple(data.shape)
    if like is not None and rgb is None:
        like_shape = tuple(like.data.shape)
        if like.rgb and len(shape) == 3 and shape[-1] in (3, 4):
            rgb = True
        elif like_shape == shape:
            rgb = like.rgb
    if rgb is None:
        rgb = len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4
    if rgb:
        return True, None, shape[:-1]
    if len(shape) == 3 and like is not None and like.channel_axis is None and like.grid.ndim == 3:
        return False, None, shape  # a volume
    if len(shape) == 3:
        return False, 0, shape[1:]
    return False, None, shape


def _grid_for(spatial: tuple[int, ...], like: LoadedImage | None, grid: Grid | None) -> Grid | None:
    if grid is not None:
        if tuple(grid.shape) != tuple(spatial):
            raise ValueError(f"data is {spatial} (spatial) but the grid given is {grid.shape}")
        return grid
    if like is not None and tuple(like.grid.shape) == tuple(spatial):
        return like.grid
    return None


def _to_8bit(data: np.ndarray, dest: Path, allow16: bool) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype == np.uint8 or (allow16 and arr.dtype == np.uint16):
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and arr.min() >= 0 and arr.max() <= 1:
        return np.rint(arr * 255).astype(np.uint8)
    kinds = "8-bit (PNG also 16-bit) or float in [0, 1]"
    raise ValueError(f"{dest}: {arr.dtype} values cannot go into {suffix_of(dest).upper()[1:]} ({kinds}); save as .tif")


def _write_png_jpeg(dest: Path, data: np.ndarray, rgb: bool) -> None:
    import imageio.v3 as iio

    jpeg = suffix_of(dest) in (".jpg", ".jpeg")
    arr = _to_8bit(data, dest, allow16=not jpeg)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ValueError(f"{dest}: PNG/JPEG hold gray (H, W) or RGB (H, W, 3) images, not {arr.shape}; save as .tif")
    if jpeg and arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    with atomic_path(dest) as tmp:
        if jpeg:
            iio.imwrite(tmp, arr, extension=".jpg", quality=95)
        else:
            iio.imwrite(tmp, arr, extension=".png")


def _gdal_band_metadata(names: list[str]) -> str:
    from xml.sax.saxutils import escape

    items = "".join(
        f'<Item name="DESCRIPTION" sample="{i}" role="description">{escape(str(n))}</Item>' for i, n in enumerate(names)
    )
    return f"<GDALMetadata>{items}</GDALMetadata>"


def _write_tiff(
    dest: Path,
    data,
    rgb: bool,
    channel_axis: int | None,
    grid: Grid | None,
    like: LoadedImage | None,
    band_names: list[str] | None = None,
) -> None:
    import tifffile

    from .geotiff import geotags_from_grid

    extratags: list[tuple] = []
    like_tags = like.meta.get("geotiff_tags") if like is not None else None
    if grid is not None and grid.ndim == 2 and (like_tags or grid.units not in ("pixel", "mm")):
        extratags = geotags_from_grid(grid, like_tags)
    if channel_axis is not None:
        n = data.shape[channel_axis]
        names = band_names or (like.meta.get("band_names") if like is not None else None)
        if names and len(names) == n:
            extratags = [t for t in extratags if t[0] != 42112]
            extratags.append((42112, 2, 0, _gdal_band_metadata(list(names)), True))
        elif band_names:
            raise ValueError(f"{dest}: {len(band_names)} band names for {n} bands")
    arr = data
    kind = np.dtype(arr.dtype)
    if kind == np.bool_:
        arr = np.asarray(arr).astype(np.uint8)
    elif kind.kind not in "uif":
        raise ValueError(f"{dest}: cannot write pixel type {kind} to TIFF")
    if rgb and arr.shape[-1] == 4:
        arr = arr[..., :3]
    nbytes = int(np.prod(arr.shape)) * np.dtype(arr.dtype).itemsize
    kw: dict = {
        "photometric": "rgb" if rgb else "minisblack",
        "compression": "zlib",
        "extratags": extratags,
        "metadata": None,
        "bigtiff": nbytes > 3_500_000_000,
    }
    if channel_axis is not None:
        kw["planarconfig"] = "separate"
    h, w = (arr.shape[-3:-1] if rgb else arr.shape[-2:])
    lazy = not isinstance(arr, np.ndarray) or isinstance(arr, np.memmap)
    if (nbytes > _TILED_BYTES or lazy) and h >= 256 and w >= 256:
        kw["tile"] = (_TILE, _TILE)
    with atomic_path(dest) as tmp:
        if lazy and "tile" in kw and arr.ndim <= 3:
            # dask / zarr / memmap: computed and written one tile at a time (memory ~ one tile)
            tifffile.imwrite(tmp, _tiles(arr, rgb), shape=arr.shape, dtype=arr.dtype, **kw)
        else:
            tifffile.imwrite(tmp, np.asarray(arr), **kw)


_TILE = 256


def _tiles(arr, rgb: bool):
    """Tiles of a 2-D / RGB / bands-first array in TIFF order (plane, tile row, tile column), zero-padded."""
    planes = [arr] if (arr.ndim == 2 or rgb) else [arr[i] for i in range(arr.shape[0])]
    for plane in planes:
        h, w = plane.shape[:2]
        for y in range(0, h, _TILE):
            for x in range(0, w, _TILE):
                block = np.asarray(plane[y : y + _TILE, x : x + _TILE])
                if block.shape[:2] != (_TILE, _TILE):
                    pad = [(0, _TILE - block.shape[0]), (0, _TILE - block.shape[1])] + [(0, 0)] * (block.ndim - 2)
                    block = np.pad(block, pad)
                yield block


def write_image(
    path: str | os.PathLike,
    data,
    *,
    like: LoadedImage | None = None,
    grid: Grid | None = None,
    rgb: bool | None = None,
    band_names: list[str] | None = None,
) -> Path:
    """Write ``data`` atomically; the format comes from the extension.

    ``.png`` / ``.jpg``: gray or RGB, 8-bit (PNG also 16-bit; floats in [0, 1] are scaled to 0..255).
    ``.tif``: any integer/float dtype, gray, RGB or bands-first ``(C, H, W)``; georeferenced (GeoTIFF)
    when the grid is (``like``'s GeoKeys, raster type and CRS are kept). ``.nii`` / ``.nii.gz``:
    ``(Z, Y, X)`` volumes in the reader's (S, P, L) order, with ``like``'s affine and header.
    ``rgb`` overrides the guess of whether a trailing axis of 3/4 is colour; ``band_names`` label the
    bands of a multi-band TIFF (GDAL band descriptions, read back as ``meta["band_names"]``).
    """
    dest = Path(path)
    suf = suffix_of(dest)
    if suf in (".nii", ".nii.gz"):
        from .nifti import write_nifti

        spatial = tuple(data.shape[1:]) if np.ndim(data) == 4 else tuple(data.shape)
        return write_nifti(dest, np.asarray(data), _grid_for(spatial, like, grid), like)
    is_rgb, cax, spatial = _layout(data, like, rgb)
    g = _grid_for(spatial, like, grid)
    if suf in (".png", ".jpg", ".jpeg"):
        _write_png_jpeg(dest, data, is_rgb)
    elif suf in (".tif", ".tiff"):
        _write_tiff(dest, data, is_rgb, cax, g, like, band_names)
    else:
        raise ValueError(f"{dest}: unknown output format {suf or '(no extension)'}; use .png, .jpg, .tif, .nii or .nii.gz")
    return dest
