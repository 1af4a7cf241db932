"""How much of source A's grid source B covers: refused when none, warned when little."""
from __future__ import annotations

import warnings

import numpy as np

from .grid import Grid, shape_str, world_conversion

__all__ = ["coverage", "check_overlap", "CoverageWarning", "MIN_COVERAGE"]


MIN_COVERAGE = 0.10


class CoverageWarning(UserWarning):
    """Source B covers only a small part of source A's grid: most of the result is A alone."""


def _inside_count(a_to_b: np.ndarray, shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> int:
    """How many A pixel centres ``a_to_b`` maps inside B's footprint (to its pixels' outer edges).

    Exact. Axis-aligned mappings (each B axis follows one A axis) are counted axis by axis; others
    chunk A's grid along its first axis so that memory stays bounded.
    """
    n = len(shape_a)
    lin, off = a_to_b[:n, :n], a_to_b[:n, n]
    nz = np.abs(lin) > 0
    lo = np.array([-0.5 - 1e-6] * n)
    hi = np.array([s - 0.5 + 1e-6 for s in shape_b], float)
    if np.all(nz.sum(axis=1) == 1) and np.all(nz.sum(axis=0) == 1):
        count = 1
        for ax in range(n):  # B axis ax depends on A axis j only
            j = int(np.flatnonzero(nz[ax])[0])
            coord = lin[ax, j] * np.arange(shape_a[j], dtype=np.float64) + off[ax]
            count *= int(np.count_nonzero((coord >= lo[ax]) & (coord <= hi[ax])))
        return count
    rest = int(np.prod(shape_a[1:])) if n > 1 else 1
    step = max(1, (1 << 22) // max(rest, 1))
    total = 0
    for start in range(0, shape_a[0], step):
        stop = min(shape_a[0], start + step)
        sub = (stop - start, *shape_a[1:])
        inside = np.ones(sub, bool)
        for ax in range(n):
            coord = np.full((1,) * n, off[ax] + lin[ax, 0] * start, dtype=np.float64)
            for j in range(n):
                if lin[ax, j] != 0:
                    shp = [1] * n
                    shp[j] = sub[j]
                    coord = coord + lin[ax, j] * np.arange(sub[j], dtype=np.float64).reshape(shp)
            inside &= (coord >= lo[ax]) & (coord <= hi[ax])
        total += int(np.count_nonzero(inside))
    return total


def _extent_str(grid: Grid) -> str:
    """World bounding box of a grid's footprint (pixel outer edges), e.g. ``'[-0.5..479.5] x [...] mm'``."""
    n = grid.ndim
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in grid.shape], indexing="ij")).reshape(n, -1).T
    w = grid.index_to_world(corners)
    lo, hi = w.min(axis=0), w.max(axis=0)
    box = " x ".join(f"[{a:.4g}..{b:.4g}]" for a, b in zip(lo, hi))
    return f"{box} {grid.units}"


def coverage(grid_b: Grid, grid_a: Grid) -> float:
    """Fraction (0..1) of A's pixel centres that lie inside B's footprint, through both affines.

    Pixel grids related only by their shapes (no geometry) should go through :func:`implied_grid`
    first, as :func:`bring_onto` does. Raises ValueError when the grids' units do not relate.
    """
    conv = world_conversion(grid_b, grid_a)
    if conv is None:
        raise ValueError(f"grids in {grid_b.units!r} and {grid_a.units!r} do not relate")
    if grid_b.ndim != grid_a.ndim:
        raise ValueError(f"a {grid_b.ndim}-D grid cannot cover a {grid_a.ndim}-D one")
    a_to_b = np.linalg.inv(conv @ grid_b.affine) @ grid_a.affine
    total = int(np.prod(grid_a.shape))
    return _inside_count(a_to_b, tuple(grid_a.shape), tuple(grid_b.shape)) / total if total else 0.0


def check_overlap(
    grid_b: Grid,
    grid_a: Grid,
    names: tuple[str, str] = ("source A", "source B"),
    min_fraction: float = MIN_COVERAGE,
) -> float:
    """The fraction of A's grid that B covers; refuses none, warns below ``min_fraction``.

    - 0 (the grids do not overlap): ValueError naming both sources, their sizes and world extents;
      fusing would return A alone (halved by averaging methods) as if it had worked.
    - below ``min_fraction``: :class:`CoverageWarning` saying how much of A is covered.
    ``names`` are (A, B) as the user knows them (file paths or layer names).
    """
    na, nb = names
    frac = coverage(grid_b, grid_a)
    if frac <= 0.0:
        raise ValueError(
            f"{nb} does not overlap {na}: {nb} ({shape_str(grid_b.shape)}, world {_extent_str(grid_b)}) covers "
            f"none of {na}'s grid ({shape_str(grid_a.shape)}, world {_extent_str(grid_a)}); fusing them would "
            f"give {na} alone. Check that both show the same scene / subject and that their georeferencing "
            "or affines are right"
        )
    if frac < min_fraction:
        warnings.warn(
            f"{nb} covers only {frac:.1%} of {na}'s grid ({shape_str(grid_a.shape)}); the rest of the "
            f"fused result comes from {na} alone. {nb}: world {_extent_str(grid_b)}; {na}: world "
            f"{_extent_str(grid_a)}",
            CoverageWarning,
            stacklevel=3,
        )
    return frac
