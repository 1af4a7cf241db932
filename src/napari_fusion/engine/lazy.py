"""Lazy file access for scenes larger than memory: open without reading, read tile by tile.

:func:`open_source` opens a zarr folder, a ``.npy`` (memory-mapped) or a TIFF (memory-mapped when
uncompressed, else a chunked zarr view of its tiles or strips); other formats are read whole.
:class:`OnGrid` reads B resampled onto A's grid one window at a time with
:func:`napari_fusion.geometry.resample` itself (the same interpolation, anti-aliasing, units and
edges as the in-memory :func:`~napari_fusion.geometry.bring_onto`). :func:`scene_samples` tells how
large a file is from its header alone.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..geometry import Grid, index_map, resample, source_window
from ..io.ome_zarr import grid_of_group, level_paths
from ..io.writers import suffix_of
from .jobs import describe_error

__all__ = ["LazySource", "open_source", "sample", "OnGrid", "scene_samples", "LAZY_SUFFIXES"]

LAZY_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy")  # read tile by tile; other formats are read whole


@dataclass
class LazySource:
    """A file opened without reading it: a sliceable array plus its layout and grid."""

    data: Any
    path: Path
    rgb: bool
    bands: bool  # bands-first (C, H, W)
    grid: Grid
    meta: dict
    label: str = ""  # "A" / "B", for messages

    @property
    def spatial(self) -> tuple[int, int]:
        s = tuple(self.data.shape)
        return (s[1], s[2]) if self.bands else (s[0], s[1])

    def _where(self, ys: slice, xs: slice) -> str:
        h, w = self.spatial
        y0, y1, _ = ys.indices(h)
        x0, x1, _ = xs.indices(w)
        return f"rows {y0}-{max(y0, y1 - 1)}, columns {x0}-{max(x0, x1 - 1)}"

    def block(self, ys: slice, xs: slice) -> np.ndarray:
        """Pixels of one tile; ValueError naming the file and the tile when it cannot be read or
        holds NaN/inf (checked on every tile, so nothing non-finite reaches the output)."""
        try:
            blk = np.asarray(self.data[:, ys, xs] if self.bands else self.data[ys, xs])
        except (OSError, ValueError, RuntimeError) as err:  # truncated / corrupt chunk (tifffile, codecs, zarr)
            raise ValueError(f"source {self.label}: cannot read {self._where(ys, xs)} of {self.path}: {describe_error(err)}") from err
        if blk.dtype.kind == "f" and not np.isfinite(blk).all():
            raise ValueError(
                f"source {self.label}: {self.path} has NaN or infinite values in {self._where(ys, xs)}; "
                "fill or mask them before fusing"
            )
        return blk


def open_source(path: str | os.PathLike, name: str) -> LazySource:
    """Open a scene lazily: zarr folder, ``.npy`` (memory-mapped) or TIFF (memmap or chunked zarr view)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"source {name}: {p} does not exist")
    meta: dict = {"path": str(p)}
    if p.is_dir() or suffix_of(p) == ".zarr":
        import zarr

        z = zarr.open(str(p), mode="r")
        attrs = z.attrs  # a group's (a result of this package: OME-Zarr levels), or the array's own
        if not hasattr(z, "shape"):
            z = z[(level_paths(attrs, list(z.array_keys())) or ["0"])[0]]
        data = z
        grid = grid_of_group(attrs, data.shape)
    elif suffix_of(p) == ".npy":
        data = np.load(p, mmap_mode="r")
        grid = None
    elif suffix_of(p) in (".tif", ".tiff"):
        data, grid, meta = _open_tiff(p, name)
    else:
        from ..io import read_image

        img = read_image(p)
        return LazySource(img.data, p, img.rgb, img.channel_axis is not None, img.grid, img.meta, label=name)
    shape = tuple(data.shape)
    rgb = len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4
    bands = len(shape) == 3 and not rgb
    if len(shape) not in (2, 3):
        raise ValueError(f"source {name}: {p} is {shape}; tiled disk-to-disk fusion takes 2-D gray, RGB or bands-first scenes")
    if np.dtype(data.dtype).kind not in "uif":
        raise ValueError(f"source {name}: {p} has unsupported dtype {data.dtype}")
    src = LazySource(data, p, rgb, bands, None, meta, label=name)  # type: ignore[arg-type]
    src.grid = grid if grid is not None else Grid.identity(src.spatial)
    return src


def _check_tiff_complete(tf: Any, p: Path, name: str) -> None:
    """ValueError when the pixel data of the first series runs past the end of the file (truncated)."""
    size = p.stat().st_size
    for page in tf.series[0].pages:
        if page is None:
            continue
        ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts) if n]
        if ends and max(ends) > size:
            raise ValueError(
                f"source {name}: {p} is truncated: its pixel data needs {max(ends)} bytes but the file has {size}"
            )


def _open_tiff(p: Path, name: str) -> tuple[Any, Grid | None, dict]:
    import tifffile

    from ..io.geotiff import grid_from_geotags, read_geotags

    if p.stat().st_size == 0:
        raise ValueError(f"source {name}: {p} is empty (0 bytes)")
    try:
        with tifffile.TiffFile(str(p)) as tf:
            if not tf.series:
                raise ValueError(f"source {name}: {p} holds no image")
            page = tf.pages[0]
            geotags = read_geotags(page)
            series_shape = tuple(tf.series[0].shape)
            _check_tiff_complete(tf, p, name)
    except (tifffile.TiffFileError, struct.error, IndexError, KeyError, OSError) as err:
        raise ValueError(f"source {name}: {p} is not a readable TIFF ({describe_error(err)})") from err
    try:
        data = tifffile.memmap(str(p), mode="r")
    except Exception:
        import zarr

        z = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
        data = z if hasattr(z, "shape") else z["0"]
    if tuple(data.shape) != series_shape:
        data = data.reshape(series_shape)
    meta = {"path": str(p)}
    shape = tuple(data.shape)
    spatial = shape[:2] if (len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4) else shape[-2:]
    grid = None
    if geotags:
        grid = grid_from_geotags(geotags, tuple(spatial))
        if grid is not None:
            meta["geotiff_tags"] = geotags
    return data, grid, meta


def sample(src: LazySource, n_patches: int = 24, patch: int = 64, reader: Callable | None = None,
            shape: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels of evenly spread patches (the whole scene when small), for intensity statistics.

    Layout: gray ``(N,)``, RGB ``(N, 3)``, bands ``(C, N)``; reading 24 x 24 patches instead of
    strided rows keeps chunked (zarr/compressed TIFF) inputs from being decoded many times over.
    ``reader(ys, xs)`` / ``shape`` sample another grid (B resampled onto A's) at the same patches.
    """
    h, w = shape or src.spatial
    read = reader or src.block
    if h * w <= 4_000_000:
        blocks = [read(slice(0, h), slice(0, w))]
    else:
        ys = np.linspace(0, max(h - patch, 0), n_patches).astype(int)
        xs = np.linspace(0, max(w - patch, 0), n_patches).astype(int)
        blocks = [read(slice(y, y + patch), slice(x, x + patch)) for y in ys for x in xs]
    if src.bands:
        return np.concatenate([b.reshape(b.shape[0], -1) for b in blocks], axis=1)
    if src.rgb:
        return np.concatenate([b[..., :3].reshape(-1, 3) for b in blocks], axis=0)
    return np.concatenate([b.reshape(-1) for b in blocks])


class OnGrid:
    """Windows of a lazy source B resampled onto A's grid, each reading only the part of B it needs.

    The mapping is :func:`~napari_fusion.geometry.index_map` (resolution ratio for files without
    geometry, world units converted, no-overlap error, coverage warning) and each window is
    :func:`~napari_fusion.geometry.resample` of :func:`~napari_fusion.geometry.source_window`, so
    a scene read window by window equals ``bring_onto`` of the whole of B.
    """

    def __init__(self, b: LazySource, grid_a: Grid):
        self.b = b
        self.a_to_b = index_map(b.grid, grid_a, names=("source A", f"source B ({b.path})"))

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        b = self.b
        if self.a_to_b is None:
            return b.block(ys, xs)
        start, shape = (ys.start, xs.start), (ys.stop - ys.start, xs.stop - xs.start)
        win = source_window(self.a_to_b, start, shape, b.spatial)
        if win is None:  # the window lies outside B
            lead = (b.data.shape[0],) if b.bands else ()
            return np.zeros(lead + shape + ((b.data.shape[-1],) if b.rgb else ()), dtype=b.data.dtype)
        cax = 0 if b.bands else (-1 if b.rgb else None)
        return resample(b.block(*win), self.a_to_b, shape, channel_axis=cax, out_start=start, b_window=win, shape_b=b.spatial)


def scene_samples(path: str | os.PathLike) -> int:
    """How many samples (pixels x channels) a file holds, from its header, without reading pixels;
    0 for files that are not read lazily (PNG, JPEG, NIfTI: see :data:`LAZY_SUFFIXES`)."""
    p = Path(path)
    suf = suffix_of(p)
    if suf not in LAZY_SUFFIXES or not p.exists():
        return 0
    try:
        if suf == ".npy":
            shape = np.load(p, mmap_mode="r").shape
        elif suf == ".zarr" or p.is_dir():
            import zarr

            z = zarr.open(str(p), mode="r")
            shape = (z if hasattr(z, "shape") else z[(level_paths(z.attrs, list(z.array_keys())) or ["0"])[0]]).shape
        else:
            import tifffile

            with tifffile.TiffFile(str(p)) as tf:
                shape = tf.series[0].shape
    except Exception:  # noqa: BLE001 - unreadable: the job reports it when it reads the file
        return 0
    return int(np.prod(shape))
