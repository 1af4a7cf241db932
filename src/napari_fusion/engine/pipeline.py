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

The first and last steps (inputs validated and laid out, the unit pair, :func:`finish`) are
:mod:`.prepare`; this module runs the runner between them and holds the generators every entry
point drains. The names of both are imported from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .. import color
from ..geometry import Grid
from ..methods.runner import Runner, WrappedRunner, as_runner
from .prepare import MomentMatch, PreparedPair, finish, prepare_pair, unit_luma, unit_pair
from .tiling import Progress, drain, fuse_tiled_steps, run_aligned
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


@dataclass
class FusionResult:
    """What a fusion gives: the fused image on A's grid, labels for segmenting methods."""

    fused: np.ndarray
    labels: np.ndarray | None
    grid: Grid
    method: str
    classes: tuple | None = None
    boxes: list | None = None  # object boxes from a detection head (``boxes=True``), on A's grid


# a model's detection head runs on the whole 2-D plane (no tiles): above this many pixels, boxes come
# from the labels' connected components instead
DETECT_MAX_PIXELS = 16_000_000


def detector_boxes(runner: Any, prepared: Any) -> list | None:
    """Boxes of a runner's detection head (``detect_boxes``) on a prepared 2-D pair, or None (no
    head, a volume, or a plane too large to run whole)."""
    fn = getattr(as_runner(runner), "detect_boxes", None)
    a = np.asarray(prepared.a)
    if fn is None or a.ndim != 2 or a.size > DETECT_MAX_PIXELS:
        return None
    return fn(prepared.a, prepared.b)


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
    boxes: bool = False,
) -> Generator[Progress, None, FusionResult]:
    """Fuse A and B; a generator that yields :class:`Progress` between tiles/slices, returns a :class:`FusionResult`.

    ``method``: a registered name (None: the default method), a ``Method``, or a runner object (e.g.
    a fine-tuned model). ``tile``: None tiles automatically (planes above the runner's preferred tile,
    else above ~4 Mpx), 0 never tiles, N uses N-pixel tiles.
    ``segment=True`` asks a segmenting method for labels (segmenting methods give them anyway).
    ``boxes=True`` also runs a model's object detection head, if it has one (``FusionResult.boxes``).
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
    found = detector_boxes(runner, prepared) if boxes else None
    return FusionResult(out, labels, prepared.grid, name, _classes(runner, m) if want else None, found)


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
    boxes: bool = False,
) -> Generator[Progress, None, FusionResult]:
    """Labels from a segmenting method, for the API and the Segment widget alike.

    With ``b`` the pair is fused and segmented (:func:`fuse_steps` with ``segment=True``); without,
    ``a`` is taken as an image that is already fused and only segmented (``result.fused`` is A).
    ``boxes=True``: a pair's boxes from the model's detection head too, if it has one.
    """
    runner, name, m = resolve_runner(method, device)
    if not segments_of(runner, m):
        _refuse_non_segmenting(name)
    if b is not None:
        return (yield from fuse_steps(a, b, runner if m is None else m, grid_a=grid_a, grid_b=grid_b, rgb_a=rgb_a, rgb_b=rgb_b,
                                      device=device, tile=tile, overlap=overlap, segment=True, channel_axis_b=channel_axis_b,
                                      boxes=boxes))
    prepared = prepare_pair(a, a, grid_a=grid_a, grid_b=grid_a, rgb_a=rgb_a, rgb_b=rgb_a, input_intensity=input_intensity_of(runner))
    one = _SegmentOnly(runner, name=name, halo=halo_of(runner, m))
    fused_u, labels = yield from run_steps(one, prepared, labels=True, tile=tile, overlap=overlap, halo=one.halo)
    return FusionResult(finish(fused_u, prepared), labels, prepared.grid, name, _classes(runner, m))


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
