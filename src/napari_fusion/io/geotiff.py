"""GeoTIFF georeferencing <-> :class:`~napari_fusion.geometry.Grid`.

World frame of a georeferenced raster: axes ``(-Y, X)`` in the CRS unit (metres for UTM), i.e.
``world[0] = -northing`` and ``world[1] = easting``. Rows go south and columns east, so the affine
of a north-up raster is diagonal with positive spacing, which napari shows north-up with positive
``scale``. Index ``(r, c)`` is the centre of pixel ``(r, c)``.

Raster type matters: with ``PixelIsArea`` (GDAL's default) a tiepoint names the *corner* of the
raster position it ties, with ``PixelIsPoint`` (e.g. Landsat L1 products) it names the pixel
*centre*. Both are honoured when reading and written back as read.
"""
from __future__ import annotations

import numpy as np

from ..geometry import Grid

__all__ = [
    "GEO_TAG_CODES",
    "grid_from_geotags",
    "geotags_from_grid",
    "geotransform",
    "raster_type",
    "PIXEL_IS_AREA",
    "PIXEL_IS_POINT",
]

PIXEL_IS_AREA, PIXEL_IS_POINT = 1, 2
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS = 34735, 34736, 34737
GDAL_METADATA, GDAL_NODATA = 42112, 42113
GEO_TAG_CODES = (
    MODEL_PIXEL_SCALE,
    MODEL_TIEPOINT,
    MODEL_TRANSFORMATION,
    GEO_KEY_DIRECTORY,
    GEO_DOUBLE_PARAMS,
    GEO_ASCII_PARAMS,
    GDAL_METADATA,
    GDAL_NODATA,
)
_LINEAR_UNITS = {9001: "m", 9002: "ft", 9003: "ft", 9036: "km"}
_RASTER_TYPE_KEY, _MODEL_TYPE_KEY, _PROJ_LINEAR_UNITS_KEY = 1025, 1024, 3076


def _geokeys(tags: dict) -> dict[int, int]:
    """Short-valued keys of a GeoKeyDirectory (enough for raster type, model type, units)."""
    d = tags.get(GEO_KEY_DIRECTORY)
    if d is None:
        return {}
    v = [int(x) for x in d[2]]
    out: dict[int, int] = {}
    for i in range(v[3]):
        key, loc, _count, val = v[4 + 4 * i : 8 + 4 * i]
        if loc == 0:
            out[key] = val
    return out


def raster_type(tags: dict) -> int:
    """``PIXEL_IS_AREA`` (1, the default) or ``PIXEL_IS_POINT`` (2) from the GeoKeys."""
    return int(_geokeys(tags).get(_RASTER_TYPE_KEY, PIXEL_IS_AREA))


def _units(tags: dict) -> str:
    keys = _geokeys(tags)
    if keys.get(_MODEL_TYPE_KEY) == 2:  # geographic lat/lon
        return "degree"
    return _LINEAR_UNITS.get(keys.get(_PROJ_LINEAR_UNITS_KEY, 9001), "m")


def grid_from_geotags(tags: dict, shape: tuple[int, int]) -> Grid | None:
    """Grid of a raster from its GeoTIFF tags ``{code: (dtype, count, value)}``; None if not georeferenced."""
    off = 0.0 if raster_type(tags) == PIXEL_IS_POINT else 0.5  # raster coords of pixel (0,0)'s centre
    if MODEL_TRANSFORMATION in tags:
        m = np.asarray(tags[MODEL_TRANSFORMATION][2], float).reshape(4, 4)
        # X = m00 i + m01 j + m03, Y = m10 i + m11 j + m13 with raster (i, j) = (c + off, r + off)
        aff = np.eye(3)
        aff[0, :2] = [-m[1, 1], -m[1, 0]]
        aff[1, :2] = [m[0, 1], m[0, 0]]
        aff[0, 2] = -(m[1, 0] * off + m[1, 1] * off + m[1, 3])
        aff[1, 2] = m[0, 0] * off + m[0, 1] * off + m[0, 3]
        return Grid(tuple(shape), aff, _units(tags))
    if MODEL_PIXEL_SCALE in tags and MODEL_TIEPOINT in tags:
        sx, sy = (float(v) for v in tags[MODEL_PIXEL_SCALE][2][:2])
        i, j, _k, x0, y0, _z = (float(v) for v in tags[MODEL_TIEPOINT][2][:6])
        if not (np.isfinite(sx) and np.isfinite(sy)) or sx == 0 or sy == 0:
            raise ValueError(f"ModelPixelScale ({sx:g}, {sy:g}) has a zero or non-finite pixel size")
        # a negative scale is a flip, kept as such: sy < 0 means rows run north (a south-up raster),
        # sx < 0 columns run west; the grid's affine then has a negative diagonal entry (napari
        # shows it through an affine), as GDAL's geotransform (x0 - i*sx, sx, 0, y0 + j*sy, 0, -sy)
        aff = np.array(
            [[sy, 0.0, -y0 + (off - j) * sy], [0.0, sx, x0 + (off - i) * sx], [0.0, 0.0, 1.0]], dtype=float
        )
        return Grid(tuple(shape), aff, _units(tags))
    return None


def geotransform(grid: Grid) -> tuple[float, float, float, float, float, float]:
    """GDAL geotransform ``(x_corner, dx, rx, y_corner, ry, dy)`` of a georeferenced grid.

    The origin is the outer corner of pixel (0, 0), as GDAL reports it for both raster types.
    """
    a = grid.affine
    # centre of pixel (r, c): X = a[1,0] r + a[1,1] c + a[1,2];  Y = -(a[0,0] r + a[0,1] c + a[0,2])
    x_c = a[1, 2] - 0.5 * (a[1, 0] + a[1, 1])
    y_c = -(a[0, 2] - 0.5 * (a[0, 0] + a[0, 1]))
    return tuple(float(v) + 0.0 for v in (x_c, a[1, 1], a[1, 0], y_c, -a[0, 1], -a[0, 0]))  # type: ignore[return-value]


def geotags_from_grid(grid: Grid, like_tags: dict | None = None) -> list[tuple]:
    """tifffile ``extratags`` that georeference a raster on ``grid``.

    GeoKeys (CRS, raster type) and GDAL metadata/nodata come from ``like_tags`` (the source that
    gave the grid, e.g. the PAN image); pixel scale + tiepoint (or a transformation matrix for
    rotated grids) are recomputed from the grid so a crop or a resampled grid stays correct.
    """
    like_tags = like_tags or {}
    rtype = raster_type(like_tags) if like_tags else PIXEL_IS_AREA
    off = 0.0 if rtype == PIXEL_IS_POINT else 0.5
    a = grid.affine
    tags: list[tuple] = []
    if abs(a[0, 1]) < 1e-12 and abs(a[1, 0]) < 1e-12 and a[0, 0] > 0 and a[1, 1] > 0:
        sy, sx = a[0, 0], a[1, 1]
        # tie raster position (off, off) -> model (X, Y): the centre of pixel (0,0) for points,
        # its corner for areas
        # centre of pixel (0,0) is at raster (off, off); raster (0, 0) is `off` pixels before it
        x0 = a[1, 2] - off * sx
        y0 = -(a[0, 2] - off * sy)
        tags.append((MODEL_PIXEL_SCALE, 12, 3, (float(sx), float(sy), 0.0), True))
        tags.append((MODEL_TIEPOINT, 12, 6, (0.0, 0.0, 0.0, float(x0), float(y0), 0.0), True))
    else:
        m = np.eye(4)
        # invert the reading formula: world (-Y, X) from raster (i, j) = (c + off, r + off)
        m[0, 0], m[0, 1] = a[1, 1], a[1, 0]
        m[1, 0], m[1, 1] = -a[0, 1], -a[0, 0]
        m[0, 3] = a[1, 2] - off * (a[1, 0] + a[1, 1])
        m[1, 3] = -(a[0, 2] - off * (a[0, 0] + a[0, 1]))
        tags.append((MODEL_TRANSFORMATION, 12, 16, tuple(float(v) for v in m.ravel()), True))
    if GEO_KEY_DIRECTORY in like_tags:
        keys = tuple(int(v) for v in like_tags[GEO_KEY_DIRECTORY][2])
    else:
        # minimal directory: model type projected, raster type, units from the grid
        unit_code = {"m": 9001, "ft": 9002, "km": 9036}.get(grid.units, 9001)
        keys = (1, 1, 0, 3, _MODEL_TYPE_KEY, 0, 1, 1, _RASTER_TYPE_KEY, 0, 1, rtype, _PROJ_LINEAR_UNITS_KEY, 0, 1, unit_code)
    tags.append((GEO_KEY_DIRECTORY, 3, len(keys), keys, True))
    for code, dtype in ((GEO_DOUBLE_PARAMS, 12), (GEO_ASCII_PARAMS, 2), (GDAL_METADATA, 2), (GDAL_NODATA, 2)):
        if code in like_tags:
            _dt, count, value = like_tags[code]
            if dtype == 2:
                value = value if isinstance(value, str) else str(value)
                tags.append((code, 2, 0, value, True))
            else:
                vals = tuple(float(v) for v in np.atleast_1d(value))
                tags.append((code, 12, len(vals), vals, True))
    return tags


def read_geotags(page) -> dict:
    """``{code: (dtype, count, value)}`` of the georeferencing tags of a tifffile page."""
    out = {}
    for code in GEO_TAG_CODES:
        tag = page.tags.get(code)
        if tag is not None:
            out[code] = (int(tag.dtype), int(tag.count), tag.value)
    return out
