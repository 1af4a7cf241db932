"""Classical baselines: every learned method is compared against these."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .registry import Method, register
from .runner import FunctionRunner

__all__ = ["fuse_average", "fuse_max", "fuse_laplacian", "laplacian_pyramid"]


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"runners take two 2-D images of one shape, got {a.shape} and {b.shape}")


def fuse_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of the two sources."""
    _check(a, b)
    return ((a.astype(np.float32) + b.astype(np.float32)) * 0.5).astype(np.float32)


def fuse_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel maximum (max-abs of non-negative unit intensities)."""
    _check(a, b)
    return np.maximum(a, b).astype(np.float32)


_K = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16.0


def gaussian_blur(x: np.ndarray) -> np.ndarray:
    x = ndimage.correlate1d(x, _K, axis=0, mode="reflect")
    return ndimage.correlate1d(x, _K, axis=1, mode="reflect")


def _up(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    z = (shape[0] / x.shape[0], shape[1] / x.shape[1])
    return ndimage.zoom(x, z, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]


def laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """Band-pass levels, finest first, then the low-pass residual."""
    pyr, cur = [], x.astype(np.float32)
    for _ in range(levels):
        if min(cur.shape) < 8:
            break
        low = gaussian_blur(cur)[::2, ::2]
        pyr.append(cur - _up(low, cur.shape))
        cur = low
    pyr.append(cur)
    return pyr


def fuse_laplacian(a: np.ndarray, b: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion: max-abs of band-pass coefficients, mean of the residual."""
    _check(a, b)
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    fused = [np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(pa[:-1], pb[:-1])]
    out = 0.5 * (pa[-1] + pb[-1])
    for band in reversed(fused):
        out = _up(out, band.shape) + band
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _register(name: str, description: str, fn, halo: int = 0) -> None:
    def build(device: str = "cpu", weights=None) -> FunctionRunner:
        if weights is not None:
            raise ValueError("classical methods have no weights to load")
        return FunctionRunner(fn, name, halo=halo, family="classical")

    register(Method(name, description, "classical", build, halo=halo))


_register("average", "Mean of the two sources (classical baseline)", fuse_average)
_register("max", "Per-pixel maximum of the sources (classical baseline)", fuse_max)
_register("laplacian", "Laplacian pyramid, max-abs detail and mean base (classical baseline)", fuse_laplacian, halo=64)
