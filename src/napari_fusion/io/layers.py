"""Layer <-> Grid: where a napari layer's samples lie in the world, without importing napari.

One adapter for every entry point (the console API, the widgets, the napari writer): a "layer" is a
napari layer or anything shaped like one, i.e. an object (or a ``dict`` of napari layer
attributes, as napari's writer contract passes them) with some of ``data``, ``ndim``, ``scale``,
``translate``, ``rotate``, ``shear``, ``affine``, ``units``, ``rgb`` and ``metadata``. Missing ones
take napari's defaults.

The geometry is the one napari draws with: ``affine @ (translate + rotate @ shear @ diag(scale))``
(napari's ``CompositeAffine`` followed by the layer's ``affine``), so what the user sees overlaid is
what gets fused, also after moving a layer by hand. ``rotate`` and ``shear`` take napari's forms
(an angle in degrees, three angles for 3-D, a matrix; the upper-triangular shear vector or a
triangular matrix). The reader's exact grid in ``metadata["grid"]`` is kept when the layer's
transforms agree with it (or are all napari defaults, for objects that only carry that grid).
Units: the reader's grid's, else the layer's ``units`` (napari's pint names map to the short names
the engine uses: ``millimeter`` -> ``mm``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..geometry import Grid, same_grid

__all__ = [
    "data_to_world",
    "rotate_matrix",
    "shear_matrix",
    "units_of",
    "channel_axis_of",
    "spatial_shape_of",
    "grid_of_layer",
    "placement_of_layer",
]

# napari's (pint's) unit names -> the short names Grid uses (geometry.grid, the readers)
UNIT_NAMES = {
    "pixel": "pixel",
    "millimeter": "mm",
    "meter": "m",
    "micrometer": "um",
    "centimeter": "cm",
    "kilometer": "km",
    "nanometer": "nm",
    "foot": "ft",
    "degree": "degree",
}


def _get(layer: Any, key: str, default: Any = None) -> Any:
    if isinstance(layer, Mapping):
        value = layer.get(key, default)
    else:
        value = getattr(layer, key, default)
    return default if value is None else value


def _meta(layer: Any) -> dict:
    meta = _get(layer, "metadata", None)
    return meta if isinstance(meta, Mapping) else {}


def _meta_grid(layer: Any) -> Grid | None:
    g = _meta(layer).get("grid")
    return g if isinstance(g, Grid) else None


def _data_of(layer: Any) -> Any:
    data = _get(layer, "data", None)
    if data is not None and _get(layer, "multiscale", False):
        data = data[0]
    return data


def layer_ndim(layer: Any) -> int:
    """The layer's number of axes as napari counts them (an RGB(A) colour axis is not one)."""
    ndim = _get(layer, "ndim", None)
    if ndim is not None and not callable(ndim):
        return int(ndim)
    scale = _get(layer, "scale", None)
    if scale is not None:
        return len(np.atleast_1d(np.asarray(scale)))
    data = _data_of(layer)
    if data is None:
        raise ValueError("a layer needs data, ndim or scale to place it in the world")
    return int(np.ndim(data)) - (1 if _get(layer, "rgb", False) else 0)


def _embed(mat: np.ndarray, ndim: int) -> np.ndarray:
    """An MxM matrix in the bottom-right corner of the ndim x ndim identity (napari's rule)."""
    full = np.eye(ndim)
    m = mat.shape[0]
    if m > ndim:
        return np.asarray(mat[-ndim:, -ndim:], float)
    full[ndim - m :, ndim - m :] = mat
    return full


def _rotation_2d(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[c, -s], [s, c]])


def _rotation_3d(alpha: float, beta: float, gamma: float) -> np.ndarray:
    ca, sa = np.cos(np.deg2rad(alpha)), np.sin(np.deg2rad(alpha))
    cb, sb = np.cos(np.deg2rad(beta)), np.sin(np.deg2rad(beta))
    cg, sg = np.cos(np.deg2rad(gamma)), np.sin(np.deg2rad(gamma))
    r_alpha = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    r_beta = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    r_gamma = np.array([[1, 0, 0], [0, cg, -sg], [0, sg, cg]])
    return r_alpha @ r_beta @ r_gamma


def rotate_matrix(rotate: Any, ndim: int) -> np.ndarray:
    """napari's ``rotate`` (degrees for 2-D, (yaw, pitch, roll) degrees for 3-D, or a matrix) as
    an ndim x ndim matrix acting on the trailing axes."""
    if rotate is None:
        return np.eye(ndim)
    r = np.asarray(rotate, float)
    if r.ndim == 0:
        r = _rotation_2d(float(r))
    elif r.ndim == 1 and r.size == 3:
        r = _rotation_3d(*r)
    elif r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"rotate must be an angle, three angles or a square matrix, got shape {r.shape}")
    return _embed(r, ndim)


def shear_matrix(shear: Any, ndim: int) -> np.ndarray:
    """napari's ``shear`` (upper-triangular values, or a triangular matrix with ones on the diagonal)
    as an ndim x ndim matrix acting on the trailing axes."""
    if shear is None:
        return np.eye(ndim)
    s = np.asarray(shear, float)
    if s.ndim == 1:
        if s.size == 0:
            return np.eye(ndim)
        n = (1 + np.sqrt(8 * s.size + 1)) / 2  # s.size == n (n - 1) / 2
        if n != np.floor(n):
            raise ValueError(f"{s.size} is not a number of upper-triangular shear values")
        m = np.eye(int(n))
        m[np.triu_indices(int(n), 1)] = s
        s = m
    elif s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"shear must be a vector or a square matrix, got shape {s.shape}")
    return _embed(s, ndim)


def _vector(value: Any, ndim: int, fill: float) -> np.ndarray:
    out = np.full(ndim, fill, float)
    if value is None:
        return out
    v = np.atleast_1d(np.asarray(value, float))
    if v.size > ndim:
        return v[-ndim:].copy()
    if v.size:
        out[ndim - v.size :] = v
    return out


def _affine_of(layer: Any, ndim: int) -> np.ndarray:
    aff = _get(layer, "affine", None)
    mat = getattr(aff, "affine_matrix", aff)
    if mat is None:
        return np.eye(ndim + 1)
    mat = np.asarray(mat, float)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"affine must be a square matrix, got shape {mat.shape}")
    k = mat.shape[0] - 1  # its number of axes
    full = np.eye(ndim + 1)
    if k >= ndim:  # extra leading axes: keep the trailing ones
        full[:ndim, :ndim] = mat[k - ndim : k, k - ndim : k]
        full[:ndim, ndim] = mat[k - ndim : k, k]
    else:  # fewer axes: they act on the trailing ones (napari pads in front)
        full[ndim - k : ndim, ndim - k : ndim] = mat[:k, :k]
        full[ndim - k : ndim, ndim] = mat[:k, k]
    return full


def data_to_world(layer: Any, ndim: int | None = None) -> np.ndarray:
    """The layer's data -> world matrix ((ndim+1) x (ndim+1)), as napari composes it:
    ``affine @ [rotate @ shear @ diag(scale) | translate]``."""
    n = layer_ndim(layer) if ndim is None else int(ndim)
    linear = rotate_matrix(_get(layer, "rotate", None), n) @ shear_matrix(_get(layer, "shear", None), n)
    linear = linear @ np.diag(_vector(_get(layer, "scale", None), n, 1.0))
    inner = np.eye(n + 1)
    inner[:n, :n] = linear
    inner[:n, n] = _vector(_get(layer, "translate", None), n, 0.0)
    return _affine_of(layer, n) @ inner


def _short_unit(u: Any) -> str:
    name = str(u).strip()
    return UNIT_NAMES.get(name, name) or "pixel"


def units_of(layer: Any, axes: Any = None) -> str:
    """The world units of the layer's spatial axes: the reader's grid's, else the layer's own
    ``units`` on ``axes`` (all by default) when they agree, else ``"pixel"``."""
    g = _meta_grid(layer)
    if g is not None and g.units:
        return str(g.units)
    units = _get(layer, "units", None)
    if units is None:
        return "pixel"
    if isinstance(units, str) or not hasattr(units, "__len__"):
        return _short_unit(units)
    units = list(units)
    if axes is not None:
        units = [units[i] for i in axes if -len(units) <= i < len(units)]
    names = {_short_unit(u) for u in units}
    return names.pop() if len(names) == 1 else "pixel"


def channel_axis_of(layer: Any) -> int | None:
    """The bands axis of a layer holding a whole multi-band stack, else None.

    The reader records the file's ``channel_axis`` in the metadata of every layer it makes; it names
    an axis of *this* layer only when the layer has one more axis than the reader's grid (bands kept
    together). RGB layers have none (napari does not count the colour axis).
    """
    if _get(layer, "rgb", False):
        return None
    ax = _meta(layer).get("channel_axis")
    g = _meta_grid(layer)
    if ax is None or g is None:
        return None
    n = layer_ndim(layer)
    return int(ax) % n if n == g.ndim + 1 else None


def spatial_shape_of(layer: Any, channel_axis: int | None = None) -> tuple[int, ...]:
    """The spatial shape of the layer's full-resolution data (colour and bands axes left out)."""
    data = _data_of(layer)
    if data is None:
        raise ValueError("a layer without data has no spatial shape")
    shape = tuple(int(s) for s in np.shape(data))
    if _get(layer, "rgb", False):
        shape = shape[:-1]
    ax = channel_axis_of(layer) if channel_axis is None else channel_axis
    if ax is not None:
        ax = int(ax) % len(shape)
        shape = shape[:ax] + shape[ax + 1 :]
    return shape


def grid_of_layer(layer: Any, shape: Any = None, *, channel_axis: int | None = None) -> Grid:
    """Where the layer's samples lie in the world, as a :class:`~napari_fusion.geometry.Grid`.

    ``shape``: the spatial shape (default: the layer's data without colour/bands axes). The
    transform axes kept are the layer's axes except the bands axis (``channel_axis``, default
    :func:`channel_axis_of`); when that still leaves more axes than ``shape`` has, the trailing ones.
    """
    try:
        n_layer = layer_ndim(layer)
    except ValueError:  # no data, ndim or scale: the shape's axes, untransformed
        if shape is None:
            raise
        n_layer = len(tuple(shape))
    if channel_axis is None:
        channel_axis = channel_axis_of(layer)
    spatial = tuple(int(s) for s in (spatial_shape_of(layer, channel_axis) if shape is None else shape))
    n = len(spatial)
    m = data_to_world(layer, n_layer)
    axes = list(range(n_layer))
    if channel_axis is not None and n_layer == n + 1:
        axes.remove(int(channel_axis) % n_layer)
    if len(axes) < n:
        raise ValueError(f"a {n_layer}-D layer cannot place a {n}-D array ({spatial})")
    axes = axes[len(axes) - n :]
    keep = [*axes, n_layer]
    m = m[np.ix_(keep, keep)]
    g = _meta_grid(layer)
    if g is not None and tuple(g.shape) == spatial:
        untouched = np.allclose(m, np.eye(n + 1))
        if untouched or same_grid(g, Grid(spatial, m, g.units)):
            return g  # the reader's exact grid, as shown
    return Grid(spatial, m, units_of(layer, axes))


def placement_of_layer(layer: Any) -> dict:
    """napari keywords (scale, translate, rotate, shear, affine) that place a new layer with the
    same axes exactly where ``layer`` is (e.g. a result on its source A)."""
    n = layer_ndim(layer)
    return {
        "scale": tuple(float(v) for v in _vector(_get(layer, "scale", None), n, 1.0)),
        "translate": tuple(float(v) for v in _vector(_get(layer, "translate", None), n, 0.0)),
        "rotate": rotate_matrix(_get(layer, "rotate", None), n),
        "shear": shear_matrix(_get(layer, "shear", None), n),
        "affine": _affine_of(layer, n),
    }
