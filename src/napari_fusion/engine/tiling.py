"""Tiled fusion: run any method on scenes larger than memory, without visible seams.

Layout: along each axis, cores of ``tile`` pixels start every ``tile - overlap`` pixels (the last core
is shorter, never shorter than ``overlap``). Each core is fused from a read window widened by the
method's ``halo`` (context the method needs so that a tile's interior equals the untiled result; the
widening is cropped away) and aligned to ``align`` pixels so pyramids and strided networks see the
same pixel phase as on the whole image. Neighbouring cores overlap by ``overlap`` pixels and are
blended with raised-cosine ramps (sin^2 / cos^2) that sum to exactly one, so no seam shows even for
methods whose output depends on the whole tile (normalisation layers).

Memory: each output pixel is written once, when the last tile covering it is done. What is waiting
is one tile, the right strip of the previous tile and the bottom strips of the previous tile row
(``overlap x width``), so peak memory is set by the tile size, not the scene size. Inputs are read
tile by tile (``a[ys, xs]``), so NumPy, ``np.memmap``/tifffile memmaps, dask and zarr arrays work;
``out`` may be a NumPy, memmap or zarr array.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import numpy as np

from ..methods.runner import as_runner

__all__ = [
    "Progress",
    "drain",
    "tile_cores",
    "count_tiles",
    "blend_ramp",
    "fuse_tiled",
    "fuse_tiled_steps",
    "runner_halo",
    "run_aligned",
]


@dataclass
class Progress:
    """How far a long computation is: ``done`` of ``total`` units (tiles, slices, pairs) in ``stage``."""

    done: int
    total: int
    stage: str

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def drain(gen: Generator[Progress, None, Any], progress: Callable[[Progress], Any] | None) -> Any:
    """Run a step generator to the end, calling ``progress(Progress)`` on each step; its return value."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(p)


def tile_cores(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, stop) of the cores along an axis of length ``n``; consecutive cores overlap by ``overlap``."""
    if n <= tile:
        return [(0, n)]
    step = tile - overlap
    cores, s = [], 0
    while True:
        e = min(s + tile, n)
        cores.append((s, e))
        if e >= n:
            return cores
        s += step


def _check_sizes(tile: int | Sequence[int], overlap: int) -> tuple[tuple[int, int], int]:
    ty, tx = (int(tile), int(tile)) if np.isscalar(tile) else (int(tile[0]), int(tile[1]))
    overlap = int(overlap)
    if ty < 8 or tx < 8:
        raise ValueError(f"tile must be at least 8 pixels, got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if 2 * overlap > min(ty, tx):
        raise ValueError(f"overlap {overlap} is more than half the tile {min(ty, tx)}; use a larger tile or a smaller overlap")
    return (ty, tx), overlap


def count_tiles(shape: Sequence[int], tile: int | Sequence[int] = 512, overlap: int = 32) -> int:
    """How many tiles :func:`fuse_tiled` runs for a 2-D ``shape``."""
    (ty, tx), overlap = _check_sizes(tile, overlap)
    return len(tile_cores(int(shape[0]), ty, overlap)) * len(tile_cores(int(shape[1]), tx, overlap))


def blend_ramp(length: int, left: int, right: int) -> np.ndarray:
    """1-D weights of a core: rising sin^2 over ``left``, falling cos^2 over ``right``, ones between.

    A falling ramp of length L and the next core's rising ramp of length L sum to 1 at every pixel.
    """
    w = np.ones(length, dtype=np.float32)
    if left:
        t = (np.arange(left, dtype=np.float64) + 0.5) / left
        w[:left] = np.sin(0.5 * np.pi * t) ** 2
    if right:
        t = (np.arange(right, dtype=np.float64) + 0.5) / right
        w[length - right :] *= (np.cos(0.5 * np.pi * t) ** 2).astype(np.float32)
    return w


def runner_halo(runner_or_fn: Any, default: int = 0) -> int:
    """The context a runner needs around a tile: its ``halo``, else ``default``."""
    h = as_runner(runner_or_fn).halo
    return int(h) if h is not None else int(default)


def _read_window(s: int, e: int, n: int, margin: int, align: int) -> tuple[int, int]:
    r0 = max(0, s - margin)
    if align > 1:
        r0 = (r0 // align) * align
    r1 = min(n, e + margin)
    if align > 1:
        r1 = min(n, r0 + math.ceil((r1 - r0) / align) * align)
    return r0, r1


def _label_cuts(cores: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each core's share of labels: from the middle of its left overlap to the middle of its right one."""
    cuts = [0]
    for (s0, e0), (s1, _) in zip(cores[:-1], cores[1:]):
        cuts.append(s1 + (e0 - s1) // 2)
    cuts.append(cores[-1][1])
    return list(zip(cuts[:-1], cuts[1:]))


def _as_tile_fn(runner_or_fn: Any, want_labels: bool) -> Callable[[np.ndarray, np.ndarray], Any]:
    """What one tile runs: the runner's ``fuse``, or with labels its ``fuse_and_segment`` (a plain
    function asked for labels returns ``(fused, labels)`` itself)."""
    r = as_runner(runner_or_fn)
    return r.fuse_and_segment if want_labels else r.fuse


def run_aligned(fn: Callable[[np.ndarray, np.ndarray], Any], a: np.ndarray, b: np.ndarray, align: int = 32) -> Any:
    """Call ``fn(a, b)`` on copies mirror-padded (bottom/right) to a multiple of ``align``; crop back.

    Every runner call of the engine, tiled or not, goes through here, so a method always sees the
    same pixel phase and sizes whose halvings are exact (pyramids, strided networks): that is what
    makes tiled equal to untiled.
    """
    h, w = a.shape[-2:]
    ph, pw = ((-h) % align, (-w) % align) if align > 1 else (0, 0)
    if ph or pw:
        pad = ((0, ph), (0, pw))
        a = _mirror_pad(a, pad)
        b = _mirror_pad(b, pad)
    res = fn(a, b)
    if not (ph or pw):
        return res
    if isinstance(res, tuple):
        return tuple(np.asarray(r)[..., :h, :w] for r in res)
    return np.asarray(res)[..., :h, :w]


def _mirror_pad(x: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    # half-sample symmetric (ndimage "reflect"); repeated for pads longer than the side
    while pad[0][1] > 0 or pad[1][1] > 0:
        step = ((0, min(pad[0][1], x.shape[0])), (0, min(pad[1][1], x.shape[1])))
        x = np.pad(x, step, mode="symmetric")
        pad = ((0, pad[0][1] - step[0][1]), (0, pad[1][1] - step[1][1]))
    return x


def _default_reader(a: Any, b: Any) -> Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]:
    def read(ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(a[ys, xs], dtype=np.float32), np.asarray(b[ys, xs], dtype=np.float32)

    return read


def fuse_tiled_steps(
    runner_or_fn: Any,
    a: Any,
    b: Any,
    tile: int | Sequence[int] = 512,
    overlap: int = 32,
    out: Any = None,
    *,
    halo: int | None = None,
    align: int = 32,
    labels_out: Any = None,
    read: Callable[[slice, slice], tuple[np.ndarray, np.ndarray]] | None = None,
    write: Callable[[slice, slice, np.ndarray], None] | None = None,
    shape: Sequence[int] | None = None,
    stage: str = "tiles",
) -> Generator[Progress, None, Any]:
    """Generator form of :func:`fuse_tiled`: yields :class:`Progress` after each tile, returns ``out``.

    Stopping the iteration cancels between tiles. ``read(ys, xs) -> (a_unit, b_unit)`` and
    ``write(ys, xs, fused_unit_block)`` replace the plain slicing of ``a``/``b``/``out`` when a caller
    converts intensities or colour on the fly (disk-to-disk fusion); ``labels_out`` (an int array of
    the scene's shape) asks for labels from a segmenting runner, each label pixel taken from the tile
    whose core centre is nearest.
    """
    (ty, tx), overlap = _check_sizes(tile, overlap)
    if shape is None:
        shape = tuple(a.shape[:2])
        if tuple(b.shape[:2]) != shape:
            raise ValueError(f"tiled fusion needs both sources on one grid: A is {a.shape}, B is {b.shape}")
    H, W = int(shape[0]), int(shape[1])
    if H == 0 or W == 0:
        raise ValueError(f"cannot tile an empty scene of shape {tuple(shape)}")
    margin = runner_halo(runner_or_fn) if halo is None else int(halo)
    fn = _as_tile_fn(runner_or_fn, labels_out is not None)
    read = read or _default_reader(a, b)
    if write is None:
        if out is None:
            out = np.empty((H, W), dtype=np.float32)

        def write(ys: slice, xs: slice, block: np.ndarray) -> None:
            out[ys, xs] = block.astype(out.dtype, copy=False) if hasattr(out, "dtype") else block

    rows, cols = tile_cores(H, ty, overlap), tile_cores(W, tx, overlap)
    lrows, lcols = _label_cuts(rows), _label_cuts(cols)
    total = len(rows) * len(cols)
    top_pending: np.ndarray | None = None  # row above's contributions to this row's top overlap
    done = 0
    for i, (y0, y1) in enumerate(rows):
        ov_t = rows[i - 1][1] - y0 if i > 0 else 0
        ov_b = y1 - rows[i + 1][0] if i + 1 < len(rows) else 0
        wy = blend_ramp(y1 - y0, ov_t, ov_b)
        bottom = np.zeros((ov_b, W), dtype=np.float32) if ov_b else None
        right_pending: np.ndarray | None = None
        for j, (x0, x1) in enumerate(cols):
            ov_l = cols[j - 1][1] - x0 if j > 0 else 0
            ov_r = x1 - cols[j + 1][0] if j + 1 < len(cols) else 0
            r0, r1 = _read_window(y0, y1, H, margin, align)
            c0, c1 = _read_window(x0, x1, W, margin, align)
            ua, ub = read(slice(r0, r1), slice(c0, c1))
            res = run_aligned(fn, ua, ub, align)
            fused, lab = (res if labels_out is not None else (res, None))
            fused = np.asarray(fused, dtype=np.float32)
            if fused.shape != (r1 - r0, c1 - c0):
                raise ValueError(f"the method returned a {fused.shape} tile for a {(r1 - r0, c1 - c0)} input")
            core = fused[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
            acc = core * (wy[:, None] * blend_ramp(x1 - x0, ov_l, ov_r)[None, :])
            if ov_l:
                acc[:, :ov_l] += right_pending
            if ov_t:
                acc[:ov_t, ov_l:] += top_pending[:, x0 + ov_l : x1]
            # final where no later tile (right neighbour, next row) still contributes
            h_fin, w_fin = (y1 - y0) - ov_b, (x1 - x0) - ov_r
            if h_fin > 0 and w_fin > 0:
                write(slice(y0, y0 + h_fin), slice(x0, x0 + w_fin), acc[:h_fin, :w_fin])
            right_pending = acc[:, w_fin:].copy() if ov_r else None
            if ov_b:
                bottom[:, x0 : x0 + w_fin] = acc[h_fin:, :w_fin]
            if lab is not None:
                (ly0, ly1), (lx0, lx1) = lrows[i], lcols[j]
                labels_out[ly0:ly1, lx0:lx1] = np.asarray(lab)[ly0 - r0 : ly1 - r0, lx0 - c0 : lx1 - c0]
            done += 1
            yield Progress(done, total, stage)
        top_pending = bottom
    return out


def fuse_tiled(
    runner_or_fn: Any,
    a: Any,
    b: Any,
    tile: int | Sequence[int] = 512,
    overlap: int = 32,
    out: Any = None,
    progress: Callable[[Progress], Any] | None = None,
    **kw: Any,
) -> Any:
    """Fuse two unit images tile by tile; returns ``out`` (a new float32 array when None).

    ``runner_or_fn`` is a runner (``.fuse(a, b)``) or a function ``(a, b) -> fused``; its ``halo``
    attribute (or ``halo=``) sets the context read around each tile. ``progress`` is called with a
    :class:`Progress` after each tile. Example::

        fused = fuse_tiled(build_runner("laplacian"), a_unit, b_unit, tile=1024, halo=64)
    """
    return drain(fuse_tiled_steps(runner_or_fn, a, b, tile, overlap, out, **kw), progress)
