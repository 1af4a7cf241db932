"""3-D volumes: fuse slice by slice along axis 0 after B has been resampled onto A's grid.

Intensities are mapped to [0, 1] once for the whole volume (in :func:`~napari_fusion.engine.pipeline.prepare_pair`),
so every slice uses the same scaling and the fused volume has no slice-to-slice flicker. Slices
where both sources are empty (e.g. outside B's field of view after resampling, or padding) are
not run through the method: they stay 0, with label 0.
"""
from __future__ import annotations

from typing import Any, Callable, Generator, Sequence

import numpy as np

from .tiling import Progress, fuse_tiled_steps, run_aligned

__all__ = ["fuse_volume_steps", "fuse_slice"]


def fuse_slice(
    fn: Callable[[np.ndarray, np.ndarray], Any],
    a: np.ndarray,
    b: np.ndarray,
    *,
    tile: int | Sequence[int] | None = None,
    overlap: int = 32,
    halo: int = 0,
    align: int = 32,
    labels: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One 2-D unit pair through ``fn``, tiled when ``tile`` is smaller than the slice."""
    h, w = a.shape
    if tile is None or (h <= _ty(tile) and w <= _tx(tile)):
        res = run_aligned(fn, a, b, align)
        fused, lab = res if labels else (res, None)
        return np.asarray(fused, dtype=np.float32), None if lab is None else np.asarray(lab, dtype=np.int32)
    lab_out = np.zeros((h, w), dtype=np.int32) if labels else None
    gen = fuse_tiled_steps(fn, a, b, tile, overlap, halo=halo, align=align, labels_out=lab_out)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value, lab_out


def _ty(tile) -> int:
    return int(tile) if np.isscalar(tile) else int(tile[0])


def _tx(tile) -> int:
    return int(tile) if np.isscalar(tile) else int(tile[1])


def fuse_volume_steps(
    fn: Callable[[np.ndarray, np.ndarray], Any],
    a: np.ndarray,
    b: np.ndarray,
    *,
    labels: bool = False,
    tile: int | Sequence[int] | None = None,
    overlap: int = 32,
    halo: int = 0,
    align: int = 32,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    """Fuse two unit volumes ``(Z, Y, X)`` on one grid slice by slice; yields a Progress per slice.

    ``fn(a_slice, b_slice)`` returns the fused slice (or ``(fused, labels)`` when ``labels``).
    Returns ``(fused_unit_volume, labels_volume_or_None)``.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"slice-wise fusion needs two volumes on one grid, got {a.shape} and {b.shape}")
    nz = a.shape[0]
    fused = np.zeros(a.shape, dtype=np.float32)
    lab = np.zeros(a.shape, dtype=np.int32) if labels else None
    for z in range(nz):
        sa, sb = np.asarray(a[z], dtype=np.float32), np.asarray(b[z], dtype=np.float32)
        if sa.any() or sb.any():
            f, l = fuse_slice(fn, sa, sb, tile=tile, overlap=overlap, halo=halo, align=align, labels=labels)
            fused[z] = f
            if lab is not None:
                lab[z] = l
        yield Progress(z + 1, nz, "slices")
    return fused, lab
