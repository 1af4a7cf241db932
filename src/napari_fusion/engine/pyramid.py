"""Pyramids: the 2x multiscale levels of a disk-to-disk result, its tiled (Geo)TIFF, lazy reading.

:func:`build_pyramid` adds 2x2-mean levels "1", "2", ... beside level "0" of a zarr group, block by
block (the group's OME-Zarr ``multiscales`` metadata is :mod:`napari_fusion.io.ome_zarr`'s); :func:`zarr_to_tiff` streams the levels into one tiled, compressed (Geo)TIFF with the
pyramid as SubIFDs; :func:`open_lazy` gives the levels of either back as dask arrays, for
``viewer.add_image(levels, multiscale=True)``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Grid
from ..io.ome_zarr import create_level, level_paths
from ..io.writers import suffix_of
from .tiling import Progress

__all__ = ["build_pyramid", "zarr_to_tiff", "open_lazy"]


def build_pyramid(group: Any, z0: Any, *, bands: bool, min_side: int = 256):
    """2x2-mean levels "1", "2", ... until the smaller side is below ``min_side``; block by block."""
    levels = [z0]
    cur = z0
    k = 0
    while True:
        h, w = (cur.shape[1], cur.shape[2]) if bands else (cur.shape[0], cur.shape[1])
        if min(h, w) // 2 < min_side:
            break
        k += 1
        nh, nw = h // 2, w // 2
        shape = (cur.shape[0], nh, nw) if bands else ((nh, nw) + tuple(cur.shape[2:]))
        nxt = create_level(group, str(k), shape, cur.chunks, cur.dtype)
        step = 2048
        nblocks = math.ceil(2 * nh / step)
        for bi, r in enumerate(range(0, 2 * nh, step)):
            for c in range(0, 2 * nw, step):
                r1, c1 = min(r + step, 2 * nh), min(c + step, 2 * nw)
                blk = np.asarray(cur[:, r:r1, c:c1] if bands else cur[r:r1, c:c1]).astype(np.float32)
                if bands:
                    red = 0.25 * (blk[:, 0::2, 0::2] + blk[:, 1::2, 0::2] + blk[:, 0::2, 1::2] + blk[:, 1::2, 1::2])
                else:
                    red = 0.25 * (blk[0::2, 0::2] + blk[1::2, 0::2] + blk[0::2, 1::2] + blk[1::2, 1::2])
                if np.dtype(cur.dtype).kind in "ui":
                    red = np.rint(red)
                red = red.astype(cur.dtype)
                if bands:
                    nxt[:, r // 2 : r1 // 2, c // 2 : c1 // 2] = red
                else:
                    nxt[r // 2 : r1 // 2, c // 2 : c1 // 2] = red
            yield Progress(bi + 1, nblocks, f"pyramid level {k}")
        levels.append(nxt)
        cur = nxt
    return levels


def zarr_to_tiff(
    levels: list, out_path: Path, *, rgb: bool, bands: bool, grid: Grid | None = None, geotiff_tags: dict | None = None,
    tile: int = 256,
) -> None:
    """Stream zarr levels into a tiled, zlib-compressed (Geo)TIFF with the pyramid as SubIFDs (at
    ``out_path`` directly: the caller makes the write atomic); georeferenced like the source whose
    ``geotiff_tags`` are given, on ``grid``."""
    import tifffile

    from ..io.geotiff import geotags_from_grid

    extratags = geotags_from_grid(grid, geotiff_tags) if geotiff_tags and grid is not None else []

    def tiles(z):
        if bands:
            for ch in range(z.shape[0]):
                for r in range(0, z.shape[1], tile):
                    for c in range(0, z.shape[2], tile):
                        yield np.asarray(z[ch, r : r + tile, c : c + tile])
        else:
            for r in range(0, z.shape[0], tile):
                for c in range(0, z.shape[1], tile):
                    yield np.asarray(z[r : r + tile, c : c + tile])

    z0 = levels[0]
    nbytes = int(np.prod(z0.shape)) * np.dtype(z0.dtype).itemsize
    kw = dict(
        tile=(tile, tile),
        compression="zlib",
        photometric="rgb" if rgb else "minisblack",
        planarconfig="separate" if bands else None,
        metadata=None,
    )
    with tifffile.TiffWriter(str(out_path), bigtiff=nbytes > 3_000_000_000) as tw:
        tw.write(tiles(z0), shape=z0.shape, dtype=z0.dtype, subifds=len(levels) - 1, extratags=extratags, **kw)
        for z in levels[1:]:
            tw.write(tiles(z), shape=z.shape, dtype=z.dtype, subfiletype=1, **kw)


def open_lazy(path: str | os.PathLike) -> list:
    """Multiscale levels (full resolution first) of a zarr or TIFF result as dask arrays, for napari.

    A zarr group's levels are those its OME-Zarr ``multiscales`` metadata names (else its numbered
    arrays).
    ``viewer.add_image(open_lazy("fused.tif"), multiscale=True)`` reads only the tiles in view.
    """
    import dask.array as da
    import zarr

    p = Path(path)
    if p.is_dir() or suffix_of(p) == ".zarr":
        g = zarr.open(str(p), mode="r")
    else:
        import tifffile

        g = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
    if hasattr(g, "shape"):
        return [da.from_zarr(g)]
    return [da.from_zarr(g[k]) for k in level_paths(g.attrs, list(g.array_keys()))]
