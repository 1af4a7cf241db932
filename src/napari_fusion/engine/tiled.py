"""Huge scenes disk to disk: the pipeline's path, walked one tile at a time, memory bounded.

:func:`fuse_file_tiled` opens both files lazily (:mod:`.lazy`), brings B onto A's grid window by
window with :func:`napari_fusion.geometry.resample`, and gives each tile to the same functions as
the in-memory path (:mod:`.pipeline`): ``unit_pair`` (intensities to [0, 1], luma of colour
sources, the PAN-to-MS moment match), the runner in its preferred tiles (``fuse_unit``) and
``finish`` (A's range and dtype, CbCr put back, MS bands scaled by F / I). Only what needs the
whole scene is taken from samples of it instead: each source's intensity mapping (with the
model's own ``input_intensity``) and the moment match. Tiles are blended by
:func:`~napari_fusion.engine.tiling.fuse_tiled_steps`; the result streams into a chunked zarr or a
tiled (Geo)TIFF with a multiscale pyramid (:mod:`.pyramid`); a zarr result is an OME-Zarr (NGFF
0.4) multiscale image (:mod:`napari_fusion.io.ome_zarr`) that napari opens as one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import color
from ..io.writers import suffix_of
from .lazy import OnGrid, open_source, sample
from .pyramid import build_pyramid, zarr_to_tiff
from .tiling import Progress, fuse_tiled_steps

__all__ = ["fuse_file_tiled", "fuse_file_tiled_steps", "refuse_output_over_source", "TILED_SUFFIXES"]

TILED_SUFFIXES = (".zarr", ".tif", ".tiff")  # what a disk-to-disk result can be written as


def refuse_output_over_source(out_path: str | os.PathLike, path_a: str | os.PathLike, path_b: str | os.PathLike) -> None:
    """ValueError when a tiled output would replace a source (same path, or one folder inside the other)."""
    out = Path(out_path)
    for label, src in (("A", Path(path_a)), ("B", Path(path_b))):
        o, s = out.resolve(), src.resolve()
        same = o == s
        if not same and out.exists() and src.exists():
            try:
                same = os.path.samefile(out, src)
            except OSError:
                same = False
        if same or o in s.parents or s in o.parents:
            raise ValueError(f"output {out} would replace source {label} ({src}): choose another output path")


class _Tiles:
    """Each window of the scene as the pipeline prepares a pair (``unit_pair``), the last one kept
    so that writing a tile's finished part (inside the window just read) reads nothing again."""

    def __init__(self, a, bon: OnGrid, ia, ib, match):
        self.a, self.bon, self.ia, self.ib, self.match = a, bon, ia, ib, match
        self.last: tuple[slice, slice, Any] | None = None

    def prepared(self, ys: slice, xs: slice):
        from .pipeline import unit_pair

        a, b = self.a, self.bon.b
        grid = a.grid.crop((ys.start, xs.start), (ys.stop - ys.start, xs.stop - xs.start))
        p = unit_pair(a.block(ys, xs), self.bon.read(ys, xs), self.ia, self.ib, grid=grid, rgb_a=a.rgb, rgb_b=b.rgb,
                      bands_b=b.bands, match=self.match)
        self.last = (ys, xs, p)
        return p

    def read(self, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
        p = self.prepared(ys, xs)
        return p.a, p.b

    def at(self, ys: slice, xs: slice):
        if self.last is not None:
            wy, wx, p = self.last
            if wy.start <= ys.start and ys.stop <= wy.stop and wx.start <= xs.start and xs.stop <= wx.stop:
                return p.crop(slice(ys.start - wy.start, ys.stop - wy.start), slice(xs.start - wx.start, xs.stop - wx.start))
        return self.prepared(ys, xs)


def fuse_file_tiled_steps(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    out_path: str | os.PathLike,
    method: Any = None,
    tile: int = 1024,
    overlap: int = 32,
    *,
    device: str = "auto",
    pyramid: bool = True,
    chunk: int = 512,
    overwrite: bool = True,
):
    """Generator form of :func:`fuse_file_tiled`: yields Progress per tile (then per pyramid level)."""
    from .pipeline import (MomentMatch, align_of, finish, fuse_unit, halo_of, input_intensity_of, preferred_tile_of, resolve_runner,
                           unit_luma)

    out_path = Path(out_path)
    refuse_output_over_source(out_path, path_a, path_b)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists (pass overwrite=True)")
    osuf = suffix_of(out_path)
    if osuf not in TILED_SUFFIXES:
        raise ValueError(f"{out_path}: tiled output must be .zarr or .tif/.tiff")
    a = open_source(path_a, "A")
    b = open_source(path_b, "B")
    if a.bands:
        raise ValueError(f"source A ({a.path}) is multi-band {tuple(a.data.shape)}; pass the panchromatic scene as A")
    runner, name, m = resolve_runner(method, device)
    halo, align = halo_of(runner, m), align_of(runner)
    # what needs the whole scene, from samples of it (the whole scene when it is small)
    spec = input_intensity_of(runner)
    ia = color.intensity_of(sample(a), "source A", spec=spec)
    ib = color.intensity_of(sample(b), "source B", spec=spec)
    bon = OnGrid(b, a.grid)
    H, W = a.spatial
    match = None
    if b.bands:  # PAN matched to the MS intensity, on the same A-grid pixels as in memory (<= 4 Mpx)
        ms_i = color.to_unit(sample(b, reader=bon.read, shape=(H, W)), ib)[0].mean(axis=0)
        match = MomentMatch.fit(unit_luma(sample(a), ia, a.rgb)[0], ms_i)
    tiles = _Tiles(a, bon, ia, ib, match)

    # output layout: the MS bands (bands-first), RGB when either source is colour, else gray
    if b.bands:
        oshape, odtype, ochunks = (int(b.data.shape[0]), H, W), np.dtype(b.data.dtype), (1, chunk, chunk)
    elif a.rgb or b.rgb:
        oshape, odtype, ochunks = (H, W, 3), np.dtype(a.data.dtype), (chunk, chunk, 3)
    else:
        oshape, odtype, ochunks = (H, W), np.dtype(a.data.dtype), (chunk, chunk)
    if odtype.kind == "f":
        odtype = np.dtype(np.float32)

    from ..io.atomic import atomic_path
    from ..io.ome_zarr import create_group, create_level, write_multiscales

    # everything (the zarr, or the scratch zarr of a TIFF) lives in atomic_path's private folder:
    # a failed or killed run leaves no target behind, and the next run removes the folder
    with atomic_path(out_path) as tmp:
        store = tmp if osuf == ".zarr" else tmp.parent / "levels.zarr"
        group = create_group(store)
        z0 = create_level(group, "0", oshape, ochunks, odtype)

        def write(ys: slice, xs: slice, f: np.ndarray) -> None:
            out = finish(f, tiles.at(ys, xs)).astype(odtype, copy=False)
            if b.bands:
                z0[:, ys, xs] = out
            else:
                z0[ys, xs] = out

        ov = min(int(overlap), int(tile) // 2)
        # each I/O tile runs as the engine runs any plane: in the runner's preferred (cache-sized) tiles
        fn = (lambda x, y: fuse_unit(runner, x, y)) if preferred_tile_of(runner) else runner
        yield from fuse_tiled_steps(fn, None, None, tile, ov, halo=halo, align=align, read=tiles.read, write=write, shape=(H, W),
                                    stage="tiles")
        levels = [z0]
        if pyramid:
            levels = yield from build_pyramid(group, z0, bands=b.bands)
        group.attrs["napari_fusion"] = {"method": name, "levels": len(levels), "source_a": str(a.path), "source_b": str(b.path)}
        layout = "cyx" if b.bands else ("yxc" if len(oshape) == 3 else "yx")
        write_multiscales(group, levels, a.grid, layout, name=out_path.stem, metadata={"method": "2x2 mean", "fused_by": name})
        if osuf != ".zarr":
            zarr_to_tiff(levels, tmp, rgb=len(oshape) == 3 and not b.bands, bands=b.bands, grid=a.grid,
                         geotiff_tags=a.meta.get("geotiff_tags"))
    return out_path


def fuse_file_tiled(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    out_path: str | os.PathLike,
    method: Any = None,
    tile: int = 1024,
    overlap: int = 32,
    *,
    device: str = "auto",
    pyramid: bool = True,
    progress: Callable[[Progress], Any] | None = None,
    **kw: Any,
) -> Path:
    """Fuse two scenes on disk into a chunked zarr (``.zarr``) or tiled (Geo)TIFF (``.tif``), tile by tile.

    Inputs: uncompressed TIFF (memory-mapped), tiled/compressed TIFF (read chunk by chunk), zarr or
    ``.npy``; gray, RGB or (B only) bands-first multispectral; B on A's grid, georeferenced, or an
    integer factor coarser (resampled per tile). Peak memory is a few tiles plus one overlap strip
    of the scene's width, whatever the scene size. The output keeps A's georeferencing and holds a
    2x pyramid for lazy display (:func:`~napari_fusion.engine.pyramid.open_lazy`). Example::

        fuse_file_tiled("pan_20k.tif", "ms_5k.tif", "fused.tif", "laplacian", tile=2048)
    """
    from .pipeline import drain

    return drain(fuse_file_tiled_steps(path_a, path_b, out_path, method, tile, overlap, device=device, pyramid=pyramid, **kw), progress)
