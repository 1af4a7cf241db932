"""The one data path of napari-fusion: every entry point (widget, API, CLI, batch) walks it.

::

    A, B (+ Grid, rgb flags) --validate--> B onto A's grid (geometry.bring_onto)
      --colour--> Y of colour sources (BT.601); CbCr of the colour source kept
      --intensity--> [0, 1] (color.to_unit; one mapping per source, for the whole image/volume)
      --runner--> untiled, tiled (large images) or slice by slice (volumes); labels if segmenting
      --finish--> A's range and dtype (color.from_unit), CbCr put back -> FusionResult on A's grid

Which source gives colour: a colour source (RGB that is not gray stored as RGB, R == G == B) gives
its CbCr; if both are colour, A does. The result is RGB when either source is colour, in A's
intensity range and dtype.

Multi-band B (panchromatic A + multispectral B ``(C, h, w)``, pansharpening): the MS bands are
brought onto the PAN grid; the MS intensity I (mean of the unit bands) is fused with the PAN (its
mean and spread first matched to I, as component-substitution pansharpening does); each band is then
multiplied by F / I (Brovey-style ratio injection), so the band ratios - the MS colours - are kept
exactly while the detail comes from the fused intensity F; output ``(C, H, W)`` in the MS dtype and
range on the PAN grid. We chose the ratio over additive detail injection because it keeps hue
exactly and never makes a band negative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .. import color
from ..color import Intensity
from ..geometry import Grid, bring_onto, shape_str
from ..methods.runner import Runner, WrappedRunner, as_runner
from .tiling import Progress, fuse_tiled_steps, run_aligned
from .volumes import fuse_volume_steps

__all__ = [
    "Progress",
    "FusionResult",
    "PreparedPair",
    "fuse_steps",
    "segment_steps",
    "fuse_arrays",
    "enhance_steps",
    "enhance_arrays",
    "prepare_pair",
    "unit_pair",
    "unit_luma",
    "MomentMatch",
    "finish",
    "resolve_runner",
    "input_intensity_of",
    "run_steps",
    "run_unit_steps",
    "fuse_unit",
    "drain",
    "halo_of",
    "align_of",
    "preferred_tile_of",
    "segments_of",
    "AUTO_TILE_PIXELS",
    "AUTO_TILE",
    "PREFERRED_TILE_FACTOR",
]

AUTO_TILE_PIXELS = 4 * 1024 * 1024  # images larger than this (per slice) are tiled when tile=None
AUTO_TILE = 1024
PREFERRED_TILE_FACTOR = 1.5  # a runner's preferred tiles are used for planes above this many tiles
_RATIO_EPS = 1e-3
_MAX_BANDS = 64


@dataclass
class FusionResult:
    """What a fusion gives: the fused image on A's grid, labels for segmenting methods."""

    fused: np.ndarray
    labels: np.ndarray | None
    grid: Grid
    method: str
    classes: tuple | None = None


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


# ------------------------------------------------------------------------------------------------
# runners
# ------------------------------------------------------------------------------------------------
# Runners are :class:`~napari_fusion.methods.runner.Runner` objects: a registry runner is one, a
# user's object or function is adapted once (``as_runner``); the helpers below take either.
def input_intensity_of(runner: Any) -> color.InputIntensity | None:
    """The intensity mapping a runner's model was trained with (its metadata), or None (default)."""
    return as_runner(runner).input_intensity


def resolve_runner(method: Any = None, device: str = "auto") -> tuple[Runner, str, Any]:
    """``(runner, name, Method or None)`` for a method name, a Method, a runner or a function."""
    from ..methods.registry import Method, build_runner, default_method, get_method
    from .device import resolve_device

    if method is None:
        method = default_method()
    if isinstance(method, (str, Method)):
        m = get_method(method)
        return as_runner(build_runner(m, device=resolve_device(device))), m.name, m
    try:
        runner = as_runner(method)
    except TypeError:
        raise TypeError(f"method must be a registered name, a Method, a runner or a function, not {type(method).__name__}") from None
    return runner, runner.name or type(runner).__name__, None


def segments_of(runner: Any, m: Any) -> bool:
    """Whether a runner (of Method ``m``, or None) gives labels."""
    return bool(m is not None and m.segments) or as_runner(runner).segments


def _classes(runner: Runner, m: Any) -> tuple | None:
    if runner.classes:
        return tuple(runner.classes)
    if m is not None and m.extra.get("classes"):
        return tuple(m.extra["classes"])
    return None


def halo_of(runner: Any, m: Any) -> int:
    """The context (pixels) a runner needs around a tile: its ``halo``, else the Method's, else 32."""
    h = as_runner(runner).halo
    if h is None and m is not None:
        h = m.halo
    return int(h) if h is not None else 32


def align_of(runner: Any) -> int:
    """The multiple every runner call is padded to: 32 and the runner's ``pad_multiple``."""
    pm = int(as_runner(runner).pad_multiple or 1)
    return pm * 32 // math.gcd(pm, 32)


def preferred_tile_of(runner: Any) -> int | None:
    """The runner's own tile side on its current device (``preferred_tile``), or None."""
    t = as_runner(runner).preferred_tile
    return int(t) if t else None


def _pick_tile(shape2d: tuple[int, int], tile: Any, preferred: int | None = None) -> tuple[int, int] | None:
    """The tile size to use for one 2-D plane, or None for untiled.

    ``tile=None`` (automatic): planes above ``PREFERRED_TILE_FACTOR`` preferred tiles are split into
    the runner's preferred tiles (a network whose cost per pixel rises once its activations leave
    the CPU cache); otherwise planes above ``AUTO_TILE_PIXELS`` into ``AUTO_TILE`` tiles (memory).
    """
    if tile is None:
        n = shape2d[0] * shape2d[1]
        if preferred and n > PREFERRED_TILE_FACTOR * preferred * preferred and max(shape2d) > preferred:
            return (preferred, preferred)
        return (AUTO_TILE, AUTO_TILE) if n > AUTO_TILE_PIXELS else None
    if tile is False or tile == 0:
        return None
    t = (int(tile), int(tile)) if np.isscalar(tile) else (int(tile[0]), int(tile[1]))
    if shape2d[0] <= t[0] and shape2d[1] <= t[1]:
        return None
    return t


def _tile_overlap(runner: Runner, tile: Any, t: tuple[int, int] | None, overlap: int) -> int:
    """Overlap between tiles: none for automatic tiles of a runner whose tiles are exact.

    A runner with ``tiles_exact`` (its halo covers its receptive field) gives the untiled result
    from halo'd tiles, so blending overlaps would only repeat work.
    """
    if t is None:
        return int(overlap)
    if tile is None and runner.tiles_exact:
        return 0
    return min(int(overlap), min(t) // 2)


def run_steps(
    runner: Any,
    prepared: PreparedPair,
    *,
    labels: bool = False,
    tile: Any = None,
    overlap: int = 32,
    halo: int | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    """Run a runner on a prepared pair (untiled, tiled or slice-wise); returns (fused unit, labels)."""
    return (yield from run_unit_steps(runner, prepared.a, prepared.b, volume=prepared.kind == "volume",
                                      labels=labels, tile=tile, overlap=overlap, halo=halo))


def run_unit_steps(
    runner: Any,
    a: np.ndarray,
    b: np.ndarray,
    *,
    volume: bool = False,
    labels: bool = False,
    tile: Any = None,
    overlap: int = 32,
    halo: int | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    """A runner on unit float images of one shape, as the engine runs it; returns (fused unit, labels).

    Every call is aligned (:func:`run_aligned`); ``tile=None`` picks tiles automatically
    (:func:`_pick_tile`); ``volume=True`` runs a 3-D pair slice by slice.
    """
    if a.shape != b.shape:
        raise ValueError(f"unit images must have one shape: A is {a.shape}, B is {b.shape}")
    runner = as_runner(runner)
    fn = runner.fuse_and_segment if labels else runner.fuse
    halo = halo_of(runner, None) if halo is None else int(halo)
    align = align_of(runner)
    pref = preferred_tile_of(runner)
    if volume:
        t = _pick_tile(a.shape[1:], tile, pref)
        ov = _tile_overlap(runner, tile, t, overlap)
        return (yield from fuse_volume_steps(fn, a, b, labels=labels, tile=t, overlap=ov, halo=halo, align=align))
    t = _pick_tile(a.shape, tile, pref)
    if t is None:
        yield Progress(0, 1, "fuse")
        res = run_aligned(fn, a, b, align)
        fused, lab = res if labels else (res, None)
        yield Progress(1, 1, "fuse")
        return np.asarray(fused, dtype=np.float32), None if lab is None else np.asarray(lab, dtype=np.int32)
    lab_out = np.zeros(a.shape, dtype=np.int32) if labels else None
    ov = _tile_overlap(runner, tile, t, overlap)
    fused = yield from fuse_tiled_steps(fn, a, b, t, ov, halo=halo, align=align, labels_out=lab_out)
    return fused, lab_out


def fuse_unit(runner: Any, a: np.ndarray, b: np.ndarray, *, tile: Any = None, overlap: int = 32) -> np.ndarray:
    """Fused unit image of a runner on two 2-D unit images, with the engine's alignment and tiling.

    For callers that prepare their own unit images (benchmarks, training evaluation): no colour,
    intensity range or geometry handling; that is :func:`fuse_arrays`.
    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"fuse_unit takes 2-D images, got shape {a.shape}")
    fused, _ = drain(run_unit_steps(runner, a, b, tile=tile, overlap=overlap), None)
    return fused


def fuse_steps(
    a: Any,
    b: Any,
    method: Any = None,
    *,
    grid_a: Grid | None = None,
    grid_b: Grid | None = None,
    rgb_a: bool | None = None,
    rgb_b: bool | None = None,
    device: str = "auto",
    tile: int | Sequence[int] | None = None,
    overlap: int = 32,
    segment: bool = False,
    channel_axis_b: int | None = None,
    names: tuple[str, str] | None = None,
) -> Generator[Progress, None, FusionResult]:
    """Fuse A and B; a generator that yields :class:`Progress` between tiles/slices, returns a :class:`FusionResult`.

    ``method``: a registered name (None: the default method), a ``Method``, or a runner object (e.g.
    a fine-tuned model). ``tile``: None tiles automatically (planes above the runner's preferred tile,
    else above ~4 Mpx), 0 never tiles, N uses N-pixel tiles.
    ``segment=True`` asks a segmenting method for labels (segmenting methods give them anyway).
    The caller cancels by no longer iterating. Example::

        gen = fuse_steps(ir, vi, "laplacian")
        for p in gen: print(p.done, "/", p.total)   # or: res = fuse_arrays(ir, vi, "laplacian")
    """
    runner, name, m = resolve_runner(method, device)
    prepared = prepare_pair(a, b, grid_a=grid_a, grid_b=grid_b, rgb_a=rgb_a, rgb_b=rgb_b, channel_axis_b=channel_axis_b,
                            input_intensity=input_intensity_of(runner), names=names)
    want = bool(segment) or segments_of(runner, m)
    if want and not runner.can_segment:
        _refuse_non_segmenting(name)
    halo = halo_of(runner, m)
    fused_u, labels = yield from run_steps(runner, prepared, labels=want, tile=tile, overlap=overlap, halo=halo)
    out = finish(fused_u, prepared)
    return FusionResult(out, labels, prepared.grid, name, _classes(runner, m) if want else None)


class _SegmentOnly(WrappedRunner):
    """Takes A as an already fused image: labels from the method's segmenter, A passed on."""

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray):
        return a, self.inner.segment(a, a, a)


def _refuse_non_segmenting(name: str) -> None:
    from ..methods.registry import list_methods

    seg = ", ".join(x.name for x in list_methods(segmenting_only=True)) or "none"
    raise ValueError(f"method {name!r} does not segment; segmenting methods: {seg}")


def segment_steps(
    a: Any,
    b: Any = None,
    method: Any = None,
    *,
    grid_a: Grid | None = None,
    grid_b: Grid | None = None,
    rgb_a: bool | None = None,
    rgb_b: bool | None = None,
    device: str = "auto",
    tile: int | Sequence[int] | None = None,
    overlap: int = 32,
    channel_axis_b: int | None = None,
) -> Generator[Progress, None, FusionResult]:
    """Labels from a segmenting method, for the API and the Segment widget alike.

    With ``b`` the pair is fused and segmented (:func:`fuse_steps` with ``segment=True``); without,
    ``a`` is taken as an image that is already fused and only segmented (``result.fused`` is A).
    """
    runner, name, m = resolve_runner(method, device)
    if not segments_of(runner, m):
        _refuse_non_segmenting(name)
    if b is not None:
        return (yield from fuse_steps(a, b, runner if m is None else m, grid_a=grid_a, grid_b=grid_b, rgb_a=rgb_a, rgb_b=rgb_b,
                                      device=device, tile=tile, overlap=overlap, segment=True, channel_axis_b=channel_axis_b))
    prepared = prepare_pair(a, a, grid_a=grid_a, grid_b=grid_a, rgb_a=rgb_a, rgb_b=rgb_a, input_intensity=input_intensity_of(runner))
    one = _SegmentOnly(runner, name=name, halo=halo_of(runner, m))
    fused_u, labels = yield from run_steps(one, prepared, labels=True, tile=tile, overlap=overlap, halo=one.halo)
    return FusionResult(finish(fused_u, prepared), labels, prepared.grid, name, _classes(runner, m))


def drain(gen: Generator[Progress, None, Any], progress: Callable[[Progress], Any] | None) -> Any:
    """Run a step generator to the end, calling ``progress(Progress)`` on each step; its return value."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(p)


def fuse_arrays(a: Any, b: Any, method: Any = None, *, progress: Callable[[Progress], Any] | None = None, **kw: Any) -> FusionResult:
    """:func:`fuse_steps` run to the end; ``progress(Progress)`` is called along the way."""
    return drain(fuse_steps(a, b, method, **kw), progress)


class _Enhancing(WrappedRunner):
    """``fuse(x, x)`` is the method's single-image ``enhance`` (by default x fused with itself); no labels."""

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.inner.enhance(a)


def enhance_steps(
    image: Any,
    method: Any = "gifnet",
    *,
    grid: Grid | None = None,
    rgb: bool | None = None,
    device: str = "auto",
    tile: int | Sequence[int] | None = None,
    overlap: int = 32,
) -> Generator[Progress, None, FusionResult]:
    """Single-image enhancement: the method's ``enhance`` of the image (by default the image fused with itself)."""
    runner, name, m = resolve_runner(method, device)
    one = _Enhancing(runner, name=name, halo=halo_of(runner, m), classes=())
    return (
        yield from fuse_steps(image, image, one, grid_a=grid, grid_b=grid, rgb_a=rgb, rgb_b=rgb, device=device, tile=tile, overlap=overlap)
    )


def enhance_arrays(image: Any, method: Any = "gifnet", *, progress: Callable[[Progress], Any] | None = None, **kw: Any) -> FusionResult:
    """:func:`enhance_steps` run to the end."""
    return drain(enhance_steps(image, method, **kw), progress)


# the earlier private names, still imported by api.py and tests
_drain, _halo, _align, _preferred_tile, _segments = drain, halo_of, align_of, preferred_tile_of, segments_of
