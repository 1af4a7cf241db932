"""Where an array's samples lie in the world, and bringing source B onto source A's grid.

A :class:`Grid` maps array indices (in the array's own axis order, spatial axes only) to world
coordinates with one homogeneous affine. The world frame is the one napari displays, so a layer's
``scale`` / ``translate`` (or ``affine``) come straight from its grid:

- plain images: index space itself (``units="pixel"``), or the implied grid of a coarser source
  (e.g. a 4x-coarser multispectral image gets scale 4 and a 1.5-pixel shift, so that MS pixel
  ``k`` covers PAN pixels ``4k .. 4k+3``);
- GeoTIFF: metres (or the CRS's unit), world axes ``(-northing, easting)`` so that north is up and
  napari's scale stays positive (see :mod:`napari_fusion.io.geotiff`);
- NIfTI: millimetres, world axes ``(S, P, L)`` (see :mod:`napari_fusion.io.nifti`).

Index ``i`` is the *centre* of pixel ``i`` (napari's convention); pixel ``i`` spans ``i - 0.5 ..
i + 0.5`` in index space.

Modules: :mod:`.grid` (the Grid, resolution ratios, units), :mod:`.resampling` (B onto A's grid,
whole or window by window), :mod:`.coverage` (how much of A's grid B covers). Every name is
imported from here.
"""
from __future__ import annotations

from .coverage import MIN_COVERAGE, CoverageWarning, check_overlap, coverage
from .grid import Grid, implied_grid, resolution_ratio, same_grid, shape_str
from .resampling import bring_onto, index_map, resample, source_window

__all__ = [
    "Grid",
    "bring_onto",
    "index_map",
    "resample",
    "source_window",
    "resolution_ratio",
    "implied_grid",
    "same_grid",
    "shape_str",
    "coverage",
    "check_overlap",
    "CoverageWarning",
    "MIN_COVERAGE",
]
