"""Bringing source B onto source A's grid: the index map between two grids, resampling (whole or
window by window, anti-aliased where B is finer), :func:`bring_onto`."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .coverage import check_overlap
from .grid import Grid, implied_grid, resolution_ratio, same_grid, shape_str, world_conversion

__all__ = ["bring_onto", "index_map", "resample", "source_window"]


def _spatial(b: np.ndarray, channel_axis: int | None) -> tuple[tuple[int, ...], int | None]:
    if channel_axis is None:
        return tuple(b.shape), None
    ax = channel_axis % b.ndim
    return tuple(s for i, s in enumerate(b.shape) if i != ax), ax


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
    conv = world_conversion(gb, grid_a)
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
