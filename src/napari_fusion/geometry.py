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
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

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


def _spatial(b: np.ndarray, channel_axis: int | None) -> tuple[tuple[int, ...], int | None]:
    if channel_axis is None:
        return tuple(b.shape), None
    ax = channel_axis % b.ndim
    return tuple(s for i, s in enumerate(b.shape) if i != ax), ax


def _world_compatible(grid_b: Grid, grid_a: Grid) -> np.ndarray | None:
    """Matrix that converts B's world units into A's, or None when they do not relate."""
    if grid_a.units == grid_b.units:
        return np.eye(grid_a.ndim + 1)
    ua, ub = _UNIT_TO_MM.get(grid_a.units), _UNIT_TO_MM.get(grid_b.units)
    if ua is None or ub is None:
        return None
    m = np.eye(grid_a.ndim + 1)
    m[: grid_a.ndim, : grid_a.ndim] *= ub / ua
    return m


def _antialias_sigma(lin: np.ndarray) -> np.ndarray:
    """Gaussian sigma per B axis: B is anti-aliased where it is sampled more coarsely than its spacing."""
    step = np.linalg.norm(lin, axis=1)
    return np.where(step > 1.0 + 1e-6, (step - 1.0) / 2.0, 0.0)


def _resample_one(
    x: np.ndarray, a_to_b: np.ndarray, out_shape: tuple[int, ...], order: int, bounds: Sequence[tuple[float, float]] | None = None
) -> np.ndarray:
    """Sample ``x`` (B) at ``a_to_b @ index_A``; 0 outside ``bounds`` (B's footprint, per axis)."""
    from scipy import ndimage

    n = len(out_shape)
    src = np.asarray(x)
    # float32 holds 8/16-bit samples exactly; wider integers and float64 are resampled in float64
    wide = src.dtype == np.float64 or (src.dtype.kind in "iu" and src.dtype.itemsize >= 4)
    work = src.astype(np.float64 if wide else np.float32, copy=False)
    lin = a_to_b[:n, :n]
    sigma = _antialias_sigma(lin)
    if np.any(sigma > 0) and order > 0:
        work = ndimage.gaussian_filter(work, sigma, mode="nearest")
    if np.allclose(lin, np.diag(np.diag(lin))):
        matrix = np.diag(lin)
    else:
        matrix = lin
    out = ndimage.affine_transform(
        work, matrix, offset=a_to_b[:n, n], output_shape=out_shape, order=order, mode="nearest", prefilter=order > 1
    )
    # Zero what lies outside B (beyond half a pixel), instead of smearing its edge.
    if bounds is None:
        bounds = [(-0.5, src.shape[ax] - 0.5) for ax in range(n)]
    inside = np.ones(out_shape, bool)
    for ax in range(n):
        # B coordinate along axis `ax` of every A index, built by broadcasting (1-D when aligned)
        coord = np.full((1,) * n, a_to_b[ax, n], dtype=np.float64)
        for j in range(n):
            if lin[ax, j] != 0:
                shp = [1] * n
                shp[j] = out_shape[j]
                coord = coord + lin[ax, j] * np.arange(out_shape[j], dtype=np.float64).reshape(shp)
        lo, hi = bounds[ax]
        inside &= (coord >= lo - 1e-6) & (coord <= hi + 1e-6)
    if not inside.all():
        out[~inside] = 0
    return _cast_like(out, src.dtype)


def source_window(a_to_b: np.ndarray, start: Sequence[int], shape: Sequence[int], shape_b: Sequence[int]) -> tuple[slice, ...] | None:
    """The part of B that :func:`resample` of the window ``start``/``shape`` of A's grid reads
    (None: the window lies outside B), with the margin the anti-aliasing and the linear
    interpolation need, so that resampling window by window equals :func:`bring_onto` (order <= 1)."""
    n = len(shape)
    lin = a_to_b[:n, :n]
    corners = np.array(np.meshgrid(*[[s, s + max(k - 1, 0)] for s, k in zip(start, shape)], indexing="ij"), float)
    cb = corners.reshape(n, -1).T @ lin.T + a_to_b[:n, n]
    margin = 2 + np.ceil(4.0 * _antialias_sigma(lin) + 0.5).astype(int)  # gaussian_filter's radius, truncate=4
    lo = np.maximum(np.floor(cb.min(axis=0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(cb.max(axis=0)).astype(int) + margin + 1, np.asarray(shape_b, int))
    return None if np.any(lo >= hi) else tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def resample(
    b: np.ndarray,
    a_to_b: np.ndarray,
    out_shape: Sequence[int],
    *,
    order: int = 1,
    channel_axis: int | None = None,
    out_start: Sequence[int] | None = None,
    b_window: Sequence[slice] | None = None,
    shape_b: Sequence[int] | None = None,
) -> np.ndarray:
    """B sampled at ``a_to_b @ index_A`` (:func:`index_map`) over ``out_shape``; B's dtype kept.

    For a window of A's grid starting at ``out_start``, ``b`` may hold only ``b_window``
    (:func:`source_window`) of a B of spatial shape ``shape_b``: the result equals that window of
    resampling all of B. ``channel_axis`` names a non-spatial axis kept as is.
    """
    out_shape = tuple(int(v) for v in out_shape)
    n = len(out_shape)
    bounds = None
    if out_start is not None or b_window is not None:
        o = np.zeros(n) if out_start is None else np.asarray(out_start, float)
        w = np.zeros(n) if b_window is None else np.array([s.start or 0 for s in b_window], float)
        a_to_b = a_to_b.copy()
        a_to_b[:n, n] += a_to_b[:n, :n] @ o - w
        if shape_b is not None:
            bounds = [(-0.5 - w[ax], shape_b[ax] - 0.5 - w[ax]) for ax in range(n)]
    data = np.asarray(b)
    if channel_axis is None:
        return _resample_one(data, a_to_b, out_shape, order, bounds)
    moved = np.moveaxis(data, channel_axis % data.ndim, 0)
    out = np.stack([_resample_one(ch, a_to_b, out_shape, order, bounds) for ch in moved])
    return np.moveaxis(out, 0, channel_axis % data.ndim)


#: below this fraction of A's grid covered by B, :func:`bring_onto` warns (:class:`CoverageWarning`)
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
    conv = _world_compatible(grid_b, grid_a)
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


def _cast_like(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return out > 0.5
    return out.astype(dtype, copy=False)


def bring_onto(
    b: np.ndarray,
    grid_b: Grid,
    grid_a: Grid,
    *,
    order: int = 1,
    channel_axis: int | None = None,
    names: tuple[str, str] = ("source A", "source B"),
) -> np.ndarray:
    """Resample source B onto source A's grid (same world, A's shape); B's dtype is kept.

    - Same grid: ``b`` is returned unchanged (no copy).
    - 2-D, B without geometry (or both without): the shapes must be related by an integer
      resolution ratio (:func:`resolution_ratio`); B is resized as if it covered A's field.
    - Otherwise B is sampled through its affine: ``index_B = grid_b⁻¹ · grid_a · index_A``
      (``scipy.ndimage.affine_transform``, spline ``order``), anti-aliased when B is finer.
      A pixels whose centre falls inside B's footprint (out to its pixels' outer edges) get a
      value (the edge value beyond B's last pixel centre); those outside it get 0.

    ``channel_axis`` names a non-spatial axis of ``b`` (bands, RGB) kept as is.
    Raises ValueError naming both shapes when no relation is known, and (:func:`check_overlap`)
    when B covers none of A's grid; warns (:class:`CoverageWarning`) when B covers less than
    :data:`MIN_COVERAGE` of it. ``names`` are (A, B) as the user knows them, for those messages.
    """
    spatial_b, cax = _spatial(b, channel_axis)
    if tuple(grid_b.shape) != spatial_b:
        raise ValueError(
            f"source B's data is {shape_str(spatial_b)} (spatial) but its grid says {shape_str(grid_b.shape)}"
        )
    a_to_b = index_map(grid_b, grid_a, names)
    if a_to_b is None:
        return b
    return resample(b, a_to_b, grid_a.shape, order=order, channel_axis=cax)


def index_map(grid_b: Grid, grid_a: Grid, names: tuple[str, str] = ("source A", "source B")) -> np.ndarray | None:
    """``a_to_b``: A's index -> B's (fractional) index at the same world point; None when B lies on
    A's grid. Grids without geometry are related by their shapes' ratio, world units converted;
    the errors and the coverage warning of :func:`bring_onto`."""
    if grid_b.ndim != grid_a.ndim:
        raise ValueError(
            f"source B is {grid_b.ndim}-D ({shape_str(grid_b.shape)}) but source A is {grid_a.ndim}-D "
            f"({shape_str(grid_a.shape)}); cannot bring one onto the other"
        )
    if same_grid(grid_b, grid_a):
        return None
    gb = grid_b
    if grid_b.is_identity or (grid_a.is_identity and grid_b.units != "pixel"):
        # B has no geometry of its own (or A has none to relate B's to): use the shapes' ratio.
        ratio = resolution_ratio(grid_b.shape, grid_a.shape)
        if ratio is None:
            raise ValueError(
                f"source B is {shape_str(grid_b.shape)} but source A is {shape_str(grid_a.shape)}; "
                "no known resolution ratio relates them"
            )
        gb = implied_grid(grid_b.shape, grid_a, ratio)
    conv = _world_compatible(gb, grid_a)
    if conv is None:
        raise ValueError(
            f"source B is {shape_str(grid_b.shape)} in {grid_b.units!r} but source A is "
            f"{shape_str(grid_a.shape)} in {grid_a.units!r}; their world coordinates do not relate"
        )
    a_to_b = np.linalg.inv(conv @ gb.affine) @ grid_a.affine
    if np.allclose(a_to_b, np.eye(grid_a.ndim + 1), atol=1e-6) and gb.shape == grid_a.shape:
        return None
    check_overlap(gb, grid_a, names)
    return a_to_b
