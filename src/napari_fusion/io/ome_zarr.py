"""OME-Zarr (NGFF 0.4) multiscale images: how a disk-to-disk result is laid out in zarr, napari-free.

A result is a zarr v2 group (NGFF 0.4 is defined on zarr v2; chunk keys use ``/``) whose arrays
"0", "1", ... are the pyramid levels, full resolution first, each half the size of the one before.
The group's ``multiscales`` metadata names them with one ``scale`` and one ``translation`` per
level (spacing doubled per level, the centre of a 2x2 mean moved by half a level-0 pixel) and the
axes with their names, types and units as far as the :class:`~napari_fusion.geometry.Grid` knows
them, so that napari (its built-in zarr reader, the ome-zarr plugin, this package's reader) opens
it as a multiscale image. The exact grid (an oblique or flipped affine, which NGFF 0.4 cannot say)
is kept beside it in the group's ``affine`` and ``units`` attributes, which this package reads first.

Layouts: ``"yx"`` (gray), ``"cyx"`` (bands first, multispectral) and ``"yxc"`` (RGB, interleaved).
NGFF 0.4 puts a channel axis before the spatial ones; an RGB result keeps the interleaved layout
that napari and the TIFF writer take, so its axes list the channel last, which strict NGFF
validators flag (napari's own readers open it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..geometry import Grid
from .layers import UNIT_NAMES

__all__ = [
    "NGFF_VERSION",
    "LAYOUTS",
    "create_group",
    "create_level",
    "multiscales_metadata",
    "write_multiscales",
    "level_paths",
    "grid_of_group",
    "multiscale_layout",
    "open_levels",
]

NGFF_VERSION = "0.4"
LAYOUTS = ("yx", "cyx", "yxc")
# the short unit names of a Grid -> the UDUNITS-2 names NGFF takes ("pixel" and "degree" have none)
NGFF_UNITS = {short: long for long, short in UNIT_NAMES.items() if long not in ("pixel", "degree")}
NGFF_UNITS["µm"] = "micrometer"


def create_group(path: str | os.PathLike) -> Any:
    """A new, empty zarr v2 group at ``path`` (NGFF 0.4 is defined on zarr v2)."""
    import zarr

    return zarr.open_group(str(path), mode="w", zarr_format=2)


def create_level(group: Any, name: str, shape: Sequence[int], chunks: Sequence[int], dtype: Any) -> Any:
    """One level array in ``group``, chunk keys separated by ``/`` in a zarr v2 group (NGFF 0.4)."""
    kw: dict = {}
    if getattr(group.metadata, "zarr_format", 3) == 2:
        kw["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    return group.create_array(name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0, **kw)


def _spatial_axes(layout: str) -> list[int]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    return [i for i, ax in enumerate(layout) if ax != "c"]


def _axes(layout: str, units: str) -> list[dict]:
    unit = NGFF_UNITS.get(units)
    axes = []
    for ax in layout:
        if ax == "c":
            axes.append({"name": "c", "type": "channel"})
        else:
            axes.append({"name": ax, "type": "space", **({"unit": unit} if unit else {})})
    return axes


def multiscales_metadata(
    shapes: Sequence[Sequence[int]], grid: Grid | None, layout: str, *, name: str | None = None, kind: str = "mean",
    metadata: dict | None = None,
) -> dict:
    """The ``multiscales`` entry (NGFF 0.4) for levels of ``shapes``, level ``k`` a 2**k reduction.

    Per level: ``scale`` = the grid's spacing times 2**k, ``translation`` = the world position of
    the level's first sample (the centre of the first 2**k x 2**k block). Channel axes get 1 and 0.
    A grid that is not axis-aligned is given by its spacing and origin only (the ``affine``
    attribute beside it keeps the rest).
    """
    spatial = _spatial_axes(layout)
    n = len(layout)
    if grid is None:
        grid = Grid.identity(tuple(shapes[0][i] for i in spatial))
    spacing, origin = np.asarray(grid.scale, float), np.asarray(grid.translate, float)
    datasets = []
    for k, shape in enumerate(shapes):
        if len(shape) != n:
            raise ValueError(f"level {k} is {tuple(shape)}, not {n}-D like layout {layout!r}")
        f = 2.0**k
        scale, shift = [1.0] * n, [0.0] * n
        for j, ax in enumerate(spatial):
            scale[ax] = float(spacing[j] * f)
            shift[ax] = float(origin[j] + spacing[j] * (f - 1) / 2)
        datasets.append({
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}],
        })
    entry: dict = {"version": NGFF_VERSION, "axes": _axes(layout, grid.units), "datasets": datasets, "type": kind}
    if name:
        entry["name"] = name
    if metadata:
        entry["metadata"] = metadata
    return entry


def write_multiscales(group: Any, levels: Sequence[Any], grid: Grid | None, layout: str, **kw: Any) -> dict:
    """Record ``levels`` (arrays "0", "1", ... of ``group``) as one NGFF multiscale image; also the
    exact ``affine`` and ``units`` of ``grid``. Returns the entry written."""
    entry = multiscales_metadata([tuple(z.shape) for z in levels], grid, layout, **kw)
    group.attrs["multiscales"] = [entry]
    if grid is not None:
        group.attrs["affine"] = np.asarray(grid.affine).tolist()
        group.attrs["units"] = grid.units
    return entry


def level_paths(attrs: Any, array_keys: Sequence[str] = ()) -> list[str]:
    """The level arrays of a group: the first ``multiscales`` entry's paths, else the numbered arrays."""
    ms = attrs.get("multiscales") if hasattr(attrs, "get") else None
    if ms:
        return [str(d["path"]) for d in ms[0].get("datasets", [])]
    return sorted((k for k in array_keys if k.isdigit()), key=int)


def _layout_of(attrs: Any, shape: Sequence[int]) -> str | None:
    """The layout the axes name (``"yx"``, ``"cyx"``, ``"yxc"``, or another such as ``"tczyx"``);
    for a group without ``multiscales``, the one this package writes for that shape."""
    ms = attrs.get("multiscales") if hasattr(attrs, "get") else None
    if not ms:
        if len(shape) == 2:
            return "yx"
        return ("yxc" if shape[-1] in (3, 4) and shape[0] > 4 else "cyx") if len(shape) == 3 else None
    axes = ms[0].get("axes") or []
    names = "".join(str(a.get("name", "?") if isinstance(a, dict) else a)[:1].lower() for a in axes)
    return names if len(names) == len(shape) else None


def grid_of_group(attrs: Any, shape: Sequence[int]) -> Grid | None:
    """The grid of level 0 (``shape``): the exact ``affine``/``units`` attributes when present, else
    the first level's ``scale`` and ``translation`` and the axes' unit; None when neither is there."""
    shape = tuple(int(s) for s in shape)
    aff = attrs.get("affine") if hasattr(attrs, "get") else None
    if aff is not None:
        aff = np.asarray(aff, float)
        n = aff.shape[0] - 1
        spatial = shape[-n:] if len(shape) == n or not (len(shape) == 3 and shape[-1] in (3, 4)) else shape[:n]
        return Grid(tuple(spatial), aff, str(attrs.get("units", "pixel")))
    ms = attrs.get("multiscales") if hasattr(attrs, "get") else None
    if not ms:
        return None
    axes = ms[0].get("axes") or []
    types = [a.get("type", "space") if isinstance(a, dict) else "space" for a in axes] or ["space"] * len(shape)
    space = [i for i, t in enumerate(types) if t == "space"]
    scale, shift = [1.0] * len(shape), [0.0] * len(shape)
    for t in ms[0]["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation":
            shift = [float(v) for v in t["translation"]]
    units = {a.get("unit") for i, a in enumerate(axes) if i in space and isinstance(a, dict)}
    unit = UNIT_NAMES.get(units.pop(), "pixel") if len(units) == 1 and None not in units else "pixel"
    return Grid.from_scale([shape[i] for i in space], [scale[i] for i in space], [shift[i] for i in space], unit)


def multiscale_layout(path: str | os.PathLike) -> str | None:
    """The layout (one of :data:`LAYOUTS`) of a zarr group at ``path`` holding multiscale levels
    this package can place (NGFF ``multiscales`` on y/x axes, or its own numbered levels); None for
    anything else (not a group, other axes such as time or z: napari's own readers take those)."""
    p = Path(path)
    if not p.is_dir() or not any((p / f).is_file() for f in (".zgroup", "zarr.json")):
        return None
    try:
        import zarr

        g = zarr.open_group(str(p), mode="r")
        paths = level_paths(g.attrs, list(g.array_keys()))
        layout = _layout_of(g.attrs, g[paths[0]].shape) if paths else None
    except Exception:  # noqa: BLE001 - not a readable group: not ours to open
        return None
    return layout if layout in LAYOUTS else None


def open_levels(path: str | os.PathLike) -> tuple[list, Grid | None, str | None]:
    """The levels of a multiscale zarr group as dask arrays (full resolution first), the grid of
    level 0 and the layout (``"yx"``, ``"cyx"``, ``"yxc"``, or what other axes name)."""
    import dask.array as da
    import zarr

    g = zarr.open_group(str(path), mode="r")
    paths = level_paths(g.attrs, list(g.array_keys()))
    if not paths:
        raise ValueError(f"{path}: a zarr group without multiscale levels")
    levels = [da.from_zarr(g[k]) for k in paths]
    return levels, grid_of_group(g.attrs, levels[0].shape), _layout_of(g.attrs, levels[0].shape)
