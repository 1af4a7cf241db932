"""Multi-scale filter features of unit images, as interactive pixel classifiers use them.

Per image and per scale sigma: the Gaussian-smoothed intensity, its gradient magnitude and the two
eigenvalues of its Hessian (blobs and ridges): the intensity / edge / texture features of
``skimage.feature.multiscale_basic_features``, computed here with separable torch convolutions so
that they are fast on the CPU, run on a GPU and are differentiable (a task loss on them reaches the
fusion net that made the fused image).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FEATURE_SIGMAS", "FEATURES_PER_SCALE", "filter_bank", "pixel_features", "feature_halo", "n_features"]

FEATURE_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)
FEATURES_PER_SCALE = 4  # intensity, gradient magnitude, two Hessian eigenvalues


def _kernel(sigma: float, device, dtype) -> torch.Tensor:
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of (N, C, H, W) with mirrored borders (falls back to replicate on tiny images)."""
    k = _kernel(sigma, x.device, x.dtype)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _diff(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Central difference along H (dim=-2) or W (dim=-1), replicate borders."""
    pad = (1, 1, 0, 0) if dim == -1 else (0, 0, 1, 1)
    xp = F.pad(x, pad, mode="replicate")
    if dim == -1:
        return 0.5 * (xp[..., :, 2:] - xp[..., :, :-2])
    return 0.5 * (xp[..., 2:, :] - xp[..., :-2, :])


def filter_bank(x: torch.Tensor, sigmas: Sequence[float] = FEATURE_SIGMAS) -> torch.Tensor:
    """(N, 1, H, W) unit images -> (N, 4 * len(sigmas), H, W) features (scaled to similar ranges)."""
    out = []
    for s in sigmas:
        g = gaussian_blur(x, float(s))
        gy, gx = _diff(g, -2), _diff(g, -1)
        hyy, hxx = _diff(gy, -2), _diff(gx, -1)
        hxy = _diff(gx, -2)
        tr, det_term = hxx + hyy, torch.sqrt((hxx - hyy) ** 2 + 4 * hxy**2 + 1e-12)
        scale = float(s)  # scale-normalised derivatives: comparable across sigmas
        out += [g, torch.sqrt(gx**2 + gy**2 + 1e-12) * scale, 0.5 * (tr + det_term) * scale**2, 0.5 * (tr - det_term) * scale**2]
    return torch.cat(out, 1)


def n_features(n_images: int, sigmas: Sequence[float] = FEATURE_SIGMAS) -> int:
    return n_images * FEATURES_PER_SCALE * len(sigmas)


def feature_halo(sigmas: Sequence[float] = FEATURE_SIGMAS) -> int:
    """Context pixels a tile needs on each side for its features to equal the whole image's."""
    return int(math.ceil(3.0 * max(sigmas))) + 3


@torch.no_grad()
def pixel_features(*images: np.ndarray, sigmas: Sequence[float] = FEATURE_SIGMAS, device: str | torch.device = "cpu",
                   extra: int = 0) -> np.ndarray:
    """2-D unit images of one shape -> (H, W, n_features) float32 features, image by image.

    ``extra``: that many more channels at the end, left for the caller to fill (uninitialised), so
    that adding a few features to millions of pixels does not copy them all again.
    """
    if not images:
        raise ValueError("pixel_features needs at least one image")
    shape = np.shape(images[0])
    for i, im in enumerate(images):
        if np.ndim(im) != 2 or np.shape(im) != shape:
            raise ValueError(f"feature image {i} is {np.shape(im)}; every image must be 2-D of shape {shape}")
    per = FEATURES_PER_SCALE * len(sigmas)
    out = np.empty((*shape, per * len(images) + int(extra)), np.float32)
    view = torch.from_numpy(out)
    for i, im in enumerate(images):  # written straight into the (H, W, C) result: no concatenated copy
        t = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None, None].to(device)
        view[..., i * per : (i + 1) * per].copy_(filter_bank(t, sigmas)[0].permute(1, 2, 0))
    return out
