"""The :class:`Grid`: where an array's samples lie in the world (one homogeneous affine per array),
how two grids relate (same grid, resolution ratio, implied grid of a coarser source, world units).

The conventions are :mod:`napari_fusion.geometry`'s (its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Grid", "same_grid", "resolution_ratio", "implied_grid", "shape_str", "world_conversion"]

_UNIT_TO_MM = {"mm": 1.0, "m": 1000.0, "um": 1e-3, "µm": 1e-3, "cm": 10.0, "km": 1e6}


def shape_str(shape: Sequence[int]) -> str:
    """``(480, 640)`` -> ``'480x640'`` (how error messages name sizes)."""
    return "x".join(str(int(s)) for s in shape)


@dataclass(frozen=True, eq=False)
class Grid:
    """Geometry of an array's spatial axes: ``world = affine @ [index..., 1]``."""

    shape: tuple[int, ...]
    affine: np.ndarray
    units: str = "pixel"

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        aff = np.array(self.affine, dtype=np.float64)
        n = len(shape)
        if aff.shape != (n + 1, n + 1):
            raise ValueError(f"Grid affine must be {n + 1}x{n + 1} for a {n}-D shape {shape}, got {aff.shape}")
        if not np.allclose(aff[n], np.r_[np.zeros(n), 1.0]):
            raise ValueError(f"Grid affine's last row must be [0 ... 0 1], got {aff[n]}")
        if abs(np.linalg.det(aff[:n, :n])) < 1e-12:
            raise ValueError(f"Grid affine is singular:\n{aff}")
        aff.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", aff)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def identity(cls, shape: Sequence[int]) -> "Grid":
        """Index space itself (no known geometry)."""
        return cls(tuple(shape), np.eye(len(shape) + 1), "pixel")

    @classmethod
    def from_scale(
        cls,
        shape: Sequence[int],
        scale: Sequence[float] | float,
        translate: Sequence[float] | float = 0.0,
        units: str = "pixel",
    ) -> "Grid":
        """Axis-aligned grid: ``world = scale * index + translate`` per axis."""
        n = len(shape)
        aff = np.eye(n + 1)
        aff[:n, :n] = np.diag(np.broadcast_to(np.asarray(scale, float), (n,)))
        aff[:n, n] = np.broadcast_to(np.asarray(translate, float), (n,))
        return cls(tuple(shape), aff, units)

    # --- properties ---------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def linear(self) -> np.ndarray:
        return self.affine[: self.ndim, : self.ndim]

    @property
    def scale(self) -> np.ndarray:
        """Sample spacing along each array axis (length of each affine column)."""
        return np.linalg.norm(self.linear, axis=0)

    @property
    def translate(self) -> np.ndarray:
        """World position of index 0 (the centre of the first pixel/voxel)."""
        return self.affine[: self.ndim, self.ndim].copy()

    @property
    def is_identity(self) -> bool:
        return self.units == "pixel" and np.allclose(self.affine, np.eye(self.ndim + 1))

    @property
    def is_axis_aligned(self) -> bool:
        """True when the affine is diagonal (plus translation) with positive spacing."""
        lin = self.linear
        off = lin - np.diag(np.diag(lin))
        return bool(np.all(np.abs(off) <= 1e-6 * self.scale.max()) and np.all(np.diag(lin) > 0))

    def with_shape(self, shape: Sequence[int]) -> "Grid":
        """Same sampling, another extent (e.g. a crop starting at index 0)."""
        return Grid(tuple(shape), self.affine, self.units)

    def crop(self, start: Sequence[int], shape: Sequence[int]) -> "Grid":
        """Grid of ``array[start[0]:start[0]+shape[0], ...]``."""
        aff = self.affine.copy()
        aff[: self.ndim, self.ndim] = (self.affine @ np.r_[np.asarray(start, float), 1.0])[: self.ndim]
        return Grid(tuple(shape), aff, self.units)

    # --- mapping ------------------------------------------------------------------------------
    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """(..., n) indices -> (..., n) world coordinates."""
        idx = np.asarray(index, float)
        return idx @ self.linear.T + self.affine[: self.ndim, self.ndim]

    def world_to_index(self, world: np.ndarray) -> np.ndarray:
        """(..., n) world coordinates -> (..., n) fractional indices."""
        inv = np.linalg.inv(self.affine)
        w = np.asarray(world, float)
        return w @ inv[: self.ndim, : self.ndim].T + inv[: self.ndim, self.ndim]

    def decompose(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scale, translate, direction)`` with ``linear = direction @ diag(scale)``."""
        s = self.scale
        return s, self.translate, self.linear / s

    def layer_kwargs(self) -> dict:
        """napari layer keywords that place an array with this grid in the world.

        Axis-aligned grids give ``scale``/``translate``; oblique ones add an ``affine`` holding the
        direction cosines and origin so that ``layer.scale`` is still the spacing.
        """
        scale, translate, direction = self.decompose()
        kw: dict = {"scale": tuple(float(v) for v in scale)}
        if self.is_axis_aligned:
            kw["translate"] = tuple(float(v) for v in translate)
        else:
            extra = np.eye(self.ndim + 1)
            extra[: self.ndim, : self.ndim] = direction
            extra[: self.ndim, self.ndim] = translate
            kw["affine"] = extra
        if self.units != "pixel":
            kw["units"] = self.units
        return kw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grid):
            return NotImplemented
        return same_grid(self, other)

    def __hash__(self) -> int:
        return hash((self.shape, self.units, np.round(self.affine, 6).tobytes()))

    def __repr__(self) -> str:
        return (
            f"Grid(shape={self.shape}, scale={np.round(self.scale, 6).tolist()}, "
            f"translate={np.round(self.translate, 6).tolist()}, units={self.units!r})"
        )


def same_grid(g1: Grid, g2: Grid, tol: float = 1e-6) -> bool:
    """Same shape, units and affine (within ``tol`` of the spacing)."""
    if g1.shape != g2.shape or g1.units != g2.units:
        return False
    s = max(float(g1.scale.max()), float(g2.scale.max()), 1e-12)
    return bool(np.allclose(g1.affine, g2.affine, atol=tol * s, rtol=0))


def resolution_ratio(shape_b: Sequence[int], shape_a: Sequence[int], max_ratio: int = 16) -> float | None:
    """How many A pixels one B pixel spans (2 for a 2x-coarser B, 0.5 for a 2x-finer one).

    Identical shapes give 1. Otherwise one integer ratio ``r`` (2..``max_ratio``) must explain every
    axis: the coarser size is the finer one divided by ``r`` and rounded down (the finer size exceeds
    ``r`` times the coarser by less than ``r`` pixels, e.g. Landsat PAN 1207 rows vs 603 MS rows) or
    rounded up (an exact ``x[::r, ::r]`` decimation: 481x641 -> 241x321). When several ratios fit
    (tiny images), the one whose ``r`` times the coarser size is closest to the finer size wins.
    Returns None when no ratio fits.
    """
    sa, sb = tuple(int(v) for v in shape_a), tuple(int(v) for v in shape_b)
    if len(sa) != len(sb):
        return None
    if sa == sb:
        return 1.0
    if all(a >= b for a, b in zip(sa, sb)):
        fine, coarse, up = sa, sb, True
    elif all(b >= a for a, b in zip(sa, sb)):
        fine, coarse, up = sb, sa, False
    else:
        return None
    if min(coarse) < 1:
        return None
    best: tuple[int, int] | None = None
    for r in range(2, int(max_ratio) + 1):
        if all(c == f // r or c == -(-f // r) for f, c in zip(fine, coarse)):
            miss = sum(abs(f - r * c) for f, c in zip(fine, coarse))
            if best is None or miss < best[0]:
                best = (miss, r)
    if best is None:
        return None
    r = best[1]
    return float(r) if up else 1.0 / r


def implied_grid(shape_b: Sequence[int], grid_a: Grid, ratio: float | None = None) -> Grid:
    """B's grid when B covers the same field as A at ``ratio`` A pixels per B pixel.

    B pixel ``k`` covers A pixels ``k*r - 0.5 .. (k+1)*r - 0.5`` (corner aligned), so its centre is
    at A index ``(k + 0.5) * r - 0.5``; the result is expressed in A's world.
    """
    if ratio is None:
        ratio = resolution_ratio(shape_b, grid_a.shape)
        if ratio is None:
            raise ValueError(
                f"source B is {shape_str(shape_b)} but source A is {shape_str(grid_a.shape)}; "
                "no known resolution ratio relates them"
            )
    n = grid_a.ndim
    b_to_a = np.eye(n + 1)
    b_to_a[:n, :n] *= ratio
    b_to_a[:n, n] = 0.5 * ratio - 0.5
    return Grid(tuple(shape_b), grid_a.affine @ b_to_a, grid_a.units)


def world_conversion(grid_b: Grid, grid_a: Grid) -> np.ndarray | None:
    """Matrix that converts B's world units into A's, or None when they do not relate."""
    if grid_a.units == grid_b.units:
        return np.eye(grid_a.ndim + 1)
    ua, ub = _UNIT_TO_MM.get(grid_a.units), _UNIT_TO_MM.get(grid_b.units)
    if ua is None or ub is None:
        return None
    m = np.eye(grid_a.ndim + 1)
    m[: grid_a.ndim, : grid_a.ndim] *= ub / ua
    return m
