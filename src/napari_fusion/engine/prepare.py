"""A pair as a method sees it, and back: inputs validated and laid out, brought onto A's grid as
unit single-channel images (:func:`prepare_pair`, :func:`unit_pair`), and a fused unit image given
A's range, dtype and colour again (:func:`finish`).

The rules (which source gives colour, multi-band B and the F / I ratio, the PAN-to-MS moment match)
are :mod:`napari_fusion.engine.pipeline`'s, the one data path; this is its first and last step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import color
from ..color import Intensity
from ..geometry import Grid, bring_onto, shape_str

__all__ = ["PreparedPair", "prepare_pair", "unit_pair", "unit_luma", "MomentMatch", "finish"]

_RATIO_EPS = 1e-3
_MAX_BANDS = 64


@dataclass
class PreparedPair:
    """Unit single-channel images on A's grid, plus what :func:`finish` needs to give colour/range back."""

    a: np.ndarray  # float32 unit, A's spatial shape: A's Y/gray (multi-band: PAN matched to I)
    b: np.ndarray  # float32 unit, same shape: B's Y/gray on A's grid (multi-band: MS intensity I)
    grid: Grid  # A's grid: the result's
    intensity: Intensity  # how unit values map back (A's range; the MS range for multi-band)
    chroma: np.ndarray | None = None  # (..., 2) CbCr in [0, 1] of the colour source, on A's grid
    chroma_from: str | None = None  # "A" or "B"
    bands: np.ndarray | None = None  # (C, ...) unit MS bands on A's grid (multi-band only)
    kind: str = "image"  # "image", "volume" or "multiband"
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.a.shape)

    def crop(self, ys: slice, xs: slice) -> "PreparedPair":
        """The same pair on a window of a 2-D grid (what :func:`finish` needs for one tile)."""
        win = (ys, xs)
        return PreparedPair(
            self.a[win], self.b[win], self.grid.crop((ys.start, xs.start), (ys.stop - ys.start, xs.stop - xs.start)),
            self.intensity, None if self.chroma is None else self.chroma[win], self.chroma_from,
            None if self.bands is None else self.bands[(slice(None),) + win], self.kind, self.notes,
        )


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
@dataclass
class _Source:
    data: np.ndarray
    name: str  # "A" / "B" (used in error messages)
    rgb: bool
    channel_axis: int | None  # 0 for bands-first multi-band data
    spatial: tuple[int, ...]
    undecided: bool = False  # 3-D without colour: volume or bands, decided by the partner


def _as_array(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"source {name} is missing (None)")
    if isinstance(x, (list, tuple)) and x and hasattr(x[0], "shape") and getattr(x[0], "ndim", 0) >= 2:
        x = x[0]  # multiscale data: full resolution level
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)  # dask/zarr/memmap-like: materialised (the in-memory path)
    except Exception as err:  # pragma: no cover - exotic array types
        raise ValueError(f"source {name} is not an array ({type(x).__name__}): {err}") from err


def _check_dtype(x: np.ndarray, name: str) -> None:
    dt = x.dtype
    if dt == np.bool_ or dt.kind not in "uif":
        what = {"b": "boolean", "c": "complex", "O": "object", "U": "text", "S": "bytes", "V": "structured"}.get(dt.kind, str(dt))
        raise ValueError(f"source {name} has unsupported dtype {dt} ({what}); expected integer or float pixels")


def _is_gray_rgb(x: np.ndarray) -> bool:
    return bool(np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2]))


def _describe(x: Any, name: str, grid: Grid | None, rgb: bool | None, channel_axis: int | None = None) -> _Source:
    """Validate one source and say how its axes are laid out."""
    x = _as_array(x, name)
    _check_dtype(x, name)
    if x.size == 0:
        raise ValueError(f"source {name} is empty (shape {tuple(x.shape)})")
    if x.ndim < 2 or x.ndim > 4:
        raise ValueError(
            f"source {name} has {x.ndim} dimension(s) {tuple(x.shape)}; expected a 2-D image (H, W), "
            "RGB (H, W, 3), bands (C, H, W) or a volume (Z, Y, X)"
        )
    color.check_finite(x, f"source {name}")
    shape = tuple(int(s) for s in x.shape)
    if channel_axis is not None:
        cax = channel_axis % x.ndim
        if cax != 0:
            x = np.moveaxis(x, cax, 0)
        if x.shape[0] == 1:
            return _describe(x[0], name, grid, False)
        return _Source(x, name, False, 0, tuple(x.shape[1:]))
    gshape = tuple(grid.shape) if grid is not None else None
    if rgb:
        if x.ndim < 3 or x.shape[-1] not in (3, 4):
            raise ValueError(f"source {name} is marked RGB but its shape {shape} has no last axis of 3 or 4 colours")
        return _rgb_source(x, name)
    if x.ndim == 2:
        return _Source(x, name, False, None, shape)
    if gshape is not None:
        if gshape == shape:
            return _Source(x, name, False, None, shape)  # a volume (or bands given their own 3-D grid)
        if len(gshape) == x.ndim - 1:
            if shape[:-1] == gshape:  # channel-last
                return _channels_last(x, name, rgb)
            if shape[1:] == gshape:
                return _Source(x, name, False, 0, gshape) if shape[0] > 1 else _describe(x[0], name, grid, False)
        raise ValueError(f"source {name} is {shape} but its grid is {shape_str(gshape)}; they do not match")
    if x.ndim == 4:
        if x.shape[-1] in (3, 4) and rgb is not False:
            return _rgb_source(x, name)
        raise ValueError(
            f"source {name} is 4-D {shape}; expected a (Z, Y, X) volume or a (Z, Y, X, 3) colour volume "
            "(pick one time point or channel first)"
        )
    # 3-D without a grid
    last, first = shape[-1], shape[0]
    if rgb is not False and last in (3, 4) and first > 4:
        return _rgb_source(x, name)
    if (last <= 2 and min(first, shape[1]) > 4) or (4 < last <= 16 and last * 4 <= min(first, shape[1])):
        return _channels_last(x, name, rgb)  # (H, W, C): 1 squeezed; 2 or 5..16 channels refused
    return _Source(x, name, False, None, shape, undecided=True)


def _channels_last(x: np.ndarray, name: str, rgb: bool | None) -> _Source:
    c = x.shape[-1]
    if c == 1:
        return _Source(x[..., 0], name, False, None, tuple(x.shape[:-1]))
    if c in (3, 4) and rgb is not False:
        return _rgb_source(x, name)
    raise ValueError(
        f"source {name} has {c} channels per pixel (shape {tuple(x.shape)}); supported: gray, RGB or RGBA, "
        "or a multi-band stack given bands-first (C, H, W) as source B"
    )


def _rgb_source(x: np.ndarray, name: str) -> _Source:
    x = x[..., :3]  # alpha is dropped
    if _is_gray_rgb(x):
        return _Source(np.ascontiguousarray(x[..., 0]), name, False, None, tuple(x.shape[:-1]))
    return _Source(x, name, True, None, tuple(x.shape[:-1]))


def _decide(sa: _Source, sb: _Source) -> tuple[_Source, _Source]:
    """Resolve 3-D sources that could be volumes or band stacks from their partner's layout."""
    if sa.undecided:
        if len(sb.spatial) == 2 and not sb.undecided:
            raise ValueError(
                f"source A is 3-D {shape_str(sa.data.shape)} but source B is 2-D {shape_str(sb.spatial)}; "
                "for pan/multispectral pass the panchromatic image as A and the bands (C, H, W) as B"
            )
        sa.undecided = False
    if sb.undecided:
        if len(sa.spatial) == 2:
            if sb.data.shape[0] > _MAX_BANDS:
                raise ValueError(
                    f"source B is 3-D {shape_str(sb.data.shape)} but source A is 2-D {shape_str(sa.spatial)}; "
                    "one is a volume and the other a single image"
                )
            sb = _Source(sb.data, sb.name, False, 0, tuple(sb.data.shape[1:]))
        sb.undecided = False
    if sb.channel_axis is not None and len(sb.spatial) == 3:
        raise ValueError(
            f"source {sb.name} is 4-D {shape_str(sb.data.shape)}: a series of {sb.data.shape[0]} volumes; "
            "pick one volume (time point or channel) to fuse with source A"
        )
    if sa.channel_axis is not None:
        raise ValueError(
            f"source A is multi-band {shape_str(sa.data.shape)}; pass the panchromatic (single-band) image as A "
            "and the multispectral bands as B"
        )
    if len(sa.spatial) != len(sb.spatial):
        raise ValueError(
            f"source A is {len(sa.spatial)}-D ({shape_str(sa.spatial)}) but source B is {len(sb.spatial)}-D "
            f"({shape_str(sb.spatial)}); fuse two images or two volumes"
        )
    return sa, sb


# ------------------------------------------------------------------------------------------------
# prepare / finish
# ------------------------------------------------------------------------------------------------
def prepare_pair(
    a: Any,
    b: Any,
    *,
    grid_a: Grid | None = None,
    grid_b: Grid | None = None,
    rgb_a: bool | None = None,
    rgb_b: bool | None = None,
    channel_axis_b: int | None = None,
    input_intensity: color.InputIntensity | None = None,
    names: tuple[str, str] | None = None,
) -> PreparedPair:
    """Validate a pair and bring it to unit single-channel images on A's grid.

    ``input_intensity``: the mapping to [0, 1] the method was trained with
    (:func:`input_intensity_of` its runner); None = the default mapping of every source.
    ``names``: what to call A and B in error messages (file or layer names).

    ``rgb_a`` / ``rgb_b``: True if the last axis is colour, None to infer (a last axis of 3/4 on an
    image larger than 4 pixels). ``channel_axis_b`` marks B as multi-band (pan/MS); a 3-D B paired
    with a 2-D A is taken as bands-first ``(C, h, w)`` too. Raises ValueError naming the source for
    empty data, unsupported dtypes or channel counts, NaN/inf, 2-D vs 3-D mismatches and sizes that
    no grid or resolution ratio relates.
    """
    na, nb = ("A", "B") if not names else (f"A ({names[0]})", f"B ({names[1]})")
    sa = _describe(a, na, grid_a, rgb_a)
    sb = _describe(b, nb, grid_b, rgb_b, channel_axis_b)
    sa, sb = _decide(sa, sb)
    ga = grid_a if grid_a is not None else Grid.identity(sa.spatial)
    gb = grid_b if grid_b is not None else Grid.identity(sb.spatial)
    for g, s in ((ga, sa), (gb, sb)):
        if tuple(g.shape) != s.spatial:
            raise ValueError(f"source {s.name} is {shape_str(s.spatial)} (spatial) but its grid is {shape_str(g.shape)}")
    notes: list[str] = []

    # intensities: one mapping per source, from its own samples (before resampling adds empty margins)
    ia = color.intensity_of(sa.data, "source A", spec=input_intensity)
    ib = color.intensity_of(sb.data, "source B", spec=input_intensity)

    cax = -1 if sb.rgb else sb.channel_axis
    b_on = bring_onto(sb.data, gb, ga, order=1, channel_axis=cax, names=(f"source {sa.name}", f"source {sb.name}"))
    if b_on is not sb.data:
        notes.append(f"B resampled from {shape_str(sb.spatial)} onto A's grid {shape_str(sa.spatial)}")

    prepared = unit_pair(sa.data, b_on, ia, ib, grid=ga, rgb_a=sa.rgb, rgb_b=sb.rgb, bands_b=sb.channel_axis is not None)
    if prepared.bands is not None:
        notes.append(f"multi-band B: {prepared.bands.shape[0]} bands; PAN fused with the MS intensity, bands scaled by F/I")
    prepared.notes[:0] = notes
    return prepared


@dataclass(frozen=True)
class MomentMatch:
    """``x -> (x - mean) * gain + target``, clipped to [0, 1]: the PAN's mean and spread matched to
    the MS intensity (component-substitution pansharpening). Fitted on the whole pair in memory,
    on samples of the scene by the tiled disk-to-disk path (:mod:`.tiled`); applied alike."""

    mean: float
    gain: float
    target: float

    @classmethod
    def fit(cls, x: np.ndarray, ref: np.ndarray) -> "MomentMatch":
        sx, sr = float(np.std(x)), float(np.std(ref))
        return cls(float(np.mean(x)), sr / sx if sx > 1e-8 else 1.0, float(np.mean(ref)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) * self.gain + self.target, 0.0, 1.0).astype(np.float32)


def unit_luma(x: np.ndarray, inten: Intensity, rgb: bool, name: str = "image") -> tuple[np.ndarray, np.ndarray | None]:
    """Stored values -> unit intensity; of a colour source its luma Y, with its CbCr (BT.601)."""
    u, _ = color.to_unit(x, inten, name)
    if not rgb:
        return u, None
    ycc = color.rgb_to_ycbcr(u)
    return ycc[..., 0], ycc[..., 1:]


def unit_pair(
    a: np.ndarray,
    b_on: np.ndarray,
    ia: Intensity,
    ib: Intensity,
    *,
    grid: Grid,
    rgb_a: bool = False,
    rgb_b: bool = False,
    bands_b: bool = False,
    match: MomentMatch | None = None,
) -> PreparedPair:
    """A and B already on one grid (``grid``; B bands-first when ``bands_b``) -> the unit
    single-channel images a runner sees, with what :func:`finish` needs to map a result back.

    ``ia`` / ``ib``: each source's intensity mapping (:func:`color.intensity_of` of the whole
    source). ``match``: the PAN-to-MS moment match, fitted on this pair when None. The tiled
    disk-to-disk path calls this per tile with mappings and a match taken from the whole scene.
    """
    ua, chroma_a = unit_luma(a, ia, rgb_a, "source A")
    ub, chroma_b = unit_luma(b_on, ib, rgb_b, "source B")
    chroma, chroma_from = (chroma_a, "A") if chroma_a is not None else (chroma_b, "B" if chroma_b is not None else None)
    ua = np.ascontiguousarray(ua, dtype=np.float32)
    if bands_b:  # pan / multispectral
        bands = np.ascontiguousarray(ub, dtype=np.float32)
        inten = bands.mean(axis=0)
        pan = (match or MomentMatch.fit(ua, inten))(ua)
        return PreparedPair(pan, inten, grid, ib, chroma, chroma_from, bands, "multiband", [])
    kind = "volume" if ua.ndim == 3 else "image"
    return PreparedPair(ua, np.ascontiguousarray(ub, dtype=np.float32), grid, ia, chroma, chroma_from, None, kind, [])


def finish(fused_unit: np.ndarray, prepared: PreparedPair) -> np.ndarray:
    """A fused unit image -> A's range and dtype, the colour source's CbCr put back.

    For multi-band pairs each MS band is scaled by fused / MS intensity and returned ``(C, H, W)``
    in the MS range and dtype.
    """
    f = np.clip(np.asarray(fused_unit, dtype=np.float32), 0.0, 1.0)
    if f.shape != prepared.shape:
        raise ValueError(f"fused image is {shape_str(f.shape)} but the prepared pair is {shape_str(prepared.shape)}")
    if prepared.bands is not None:
        gain = (f + _RATIO_EPS) / (prepared.b + _RATIO_EPS)
        return color.from_unit(np.clip(prepared.bands * gain[None], 0.0, 1.0), prepared.intensity)
    if prepared.chroma is not None:
        rgb = color.ycbcr_to_rgb(np.concatenate([f[..., None], prepared.chroma], axis=-1))
        return color.from_unit(rgb, prepared.intensity)
    return color.from_unit(f, prepared.intensity)
