"""Low-level fusion tasks synthesised from real single images, with pixel-level targets.

GIFNet's supervision comes from digital-photography fusion tasks whose ground truth is known because
the inputs are made from it:

- **multi-focus**: a sharp image and a smooth random mask; input A is sharp where the mask is 1 and
  defocused elsewhere, input B the other way round; the target is the sharp image.
- **multi-exposure**: an under-exposed and an over-exposed version (exposure gain, gamma, clipping,
  a little noise in the dark one); the target is the original. A fraction of pairs has both inputs
  badly exposed on the same side, which teaches the focus branch to correct a single image (what
  single-image enhancement relies on).
- **reconstruction**: the image given to both inputs; the target is the image itself.

Everything works on batches of ``(N, 1, H, W)`` tensors in [0, 1] on any device (the GPU makes the
pairs as fast as it trains on them). Random numbers come from a CPU ``torch.Generator`` and are moved
to the device, so a seed gives the same pairs on CPU and GPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_kernels",
    "gaussian_blur",
    "smooth_masks",
    "multi_focus",
    "multi_exposure",
    "reconstruction",
    "is_well_exposed",
]


def _check(x: torch.Tensor, name: str = "images") -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must be a (N, 1, H, W) batch, got shape {tuple(x.shape)}")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``n`` uniform draws in [lo, hi) from the CPU generator, on ``like``'s device and dtype."""
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``(N, 2 * radius + 1)`` normalised 1-D Gaussian kernels, one per sigma (sigma 0 -> a delta)."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (x[None, :] / s) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Blur each image of an ``(N, 1, H, W)`` batch with its own Gaussian sigma (pixels).

    Separable, reflection-padded (no dark borders); the kernel radius is ``ceil(3 * max sigma)``.
    """
    _check(x)
    n, _, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(n)
    radius = max(int(math.ceil(3.0 * float(sigma.max()))), 1)
    k = gaussian_kernels(sigma, radius)  # (N, K)
    # images as channels of one sample: a grouped conv applies each image's own kernel
    y = x.reshape(1, n, h, w)
    y = _reflect_pad(y, radius)
    y = F.conv2d(y, k.reshape(n, 1, 1, -1), groups=n)
    y = F.conv2d(y, k.reshape(n, 1, -1, 1), groups=n)
    return y.reshape(n, 1, h, w)


def _reflect_pad(y: torch.Tensor, r: int) -> torch.Tensor:
    """Reflection pad by ``r`` on every side, repeated when ``r`` exceeds the image (tiny crops)."""
    left = r
    while left > 0:
        step = min(left, y.shape[-1] - 1, y.shape[-2] - 1)
        if step <= 0:
            return F.pad(y, (left,) * 4, mode="replicate")
        y = F.pad(y, (step,) * 4, mode="reflect")
        left -= step
    return y


def smooth_masks(
    n: int,
    h: int,
    w: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    cells: tuple[int, int] = (2, 6),
    softness: tuple[float, float] = (0.0, 0.06),
    half_plane: float = 0.25,
) -> torch.Tensor:
    """``(N, 1, H, W)`` random focus masks in [0, 1], about half of each image "in focus".

    Most masks are blobs: a coarse grid of random values (2-6 cells across) upsampled bicubically and
    cut at its median. A fraction ``half_plane`` are straight foreground/background splits at a random
    angle. ``softness`` (fraction of the image size) sets the width of the border, as a real
    depth-of-field transition has; 0 gives a hard border.
    """
    out = torch.empty(n, 1, h, w, device=device)
    yy = torch.linspace(-0.5, 0.5, h, device=device)[:, None] * h
    xx = torch.linspace(-0.5, 0.5, w, device=device)[None, :] * w
    for i in range(n):
        kind = float(torch.rand(1, generator=generator))
        soft = float(torch.empty(1).uniform_(softness[0], softness[1], generator=generator)) * max(h, w)
        if kind < half_plane:
            theta = float(torch.rand(1, generator=generator)) * 2 * math.pi
            off = (float(torch.rand(1, generator=generator)) - 0.5) * 0.5 * min(h, w)
            d = xx * math.cos(theta) + yy * math.sin(theta) - off  # signed distance in pixels
        else:
            c = int(torch.randint(cells[0], cells[1] + 1, (1,), generator=generator))
            grid = torch.rand(1, 1, c, c, generator=generator).to(device)
            up = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
            # turn the field into an approximate distance: divide by its typical slope per pixel
            slope = (up.max() - up.min()).clamp_min(1e-6) / (max(h, w) / c)
            d = (up - up.median()) / slope
        out[i, 0] = (d > 0).float() if soft < 0.5 else torch.sigmoid(d / soft * 4.0)
    return out


def multi_focus(
    sharp: torch.Tensor,
    generator: torch.Generator | None = None,
    sigma: tuple[float, float] = (1.0, 4.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A multi-focus pair made from sharp images: ``(a, b, target)``, target = ``sharp``.

    ``a = m * sharp + (1 - m) * blur(sharp)`` and ``b`` the complement, with a smooth random mask ``m``
    and a defocus sigma drawn per image from ``sigma``.
    """
    _check(sharp, "sharp images")
    n, _, h, w = sharp.shape
    s = _uniform(n, sigma[0], sigma[1], generator, sharp)
    blurred = gaussian_blur(sharp, s)
    m = smooth_masks(n, h, w, generator, sharp.device).to(sharp.dtype)
    a = m * sharp + (1 - m) * blurred
    b = (1 - m) * sharp + m * blurred
    return a, b, sharp


def _expose(x: torch.Tensor, ev: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Exposure change: gain ``2**ev`` (clipped like a sensor), then a tone curve ``x**gamma``."""
    y = (x * torch.pow(2.0, ev)[:, None, None, None]).clamp(0.0, 1.0)
    return y.clamp_min(1e-6).pow(gamma[:, None, None, None])


def multi_exposure(
    img: torch.Tensor,
    generator: torch.Generator | None = None,
    both_bad: float = 0.25,
    noise: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A multi-exposure pair ``(a, b, target)`` from well-exposed images (target = ``img``).

    Usually ``a`` is under-exposed (-2.5..-0.5 EV, gamma 1..1.8, with a little noise) and ``b``
    over-exposed (+0.5..+2 EV, gamma 0.6..1); with probability ``both_bad`` both are under- or both
    over-exposed by different amounts. A and B are swapped at random.
    """
    _check(img, "well-exposed images")
    n = img.shape[0]
    ev_u = _uniform(n, -2.5, -0.5, generator, img)
    g_u = _uniform(n, 1.0, 1.8, generator, img)
    ev_o = _uniform(n, 0.5, 2.0, generator, img)
    g_o = _uniform(n, 0.6, 1.0, generator, img)
    mode = torch.rand(n, generator=generator)
    same = mode < both_bad
    over_side = torch.rand(n, generator=generator) < 0.5
    # both under: replace the over-exposure by a milder under-exposure; both over: the converse
    ev_b = torch.where((same & ~over_side).to(img.device), ev_u * 0.4, ev_o)
    g_b = torch.where((same & ~over_side).to(img.device), 1.0 + (g_u - 1.0) * 0.5, g_o)
    ev_a = torch.where((same & over_side).to(img.device), ev_o * 0.4 + 0.3, ev_u)
    g_a = torch.where((same & over_side).to(img.device), 1.0 - (1.0 - g_o) * 0.5, g_u)
    a = _expose(img, ev_a, g_a)
    b = _expose(img, ev_b, g_b)
    if noise > 0:
        z = torch.randn(img.shape, generator=generator).to(img.device, img.dtype)
        dark = (ev_a < 0).to(img.dtype)[:, None, None, None]
        a = (a + noise * dark * z).clamp(0.0, 1.0)
    swap = (torch.rand(n, generator=generator) < 0.5).to(img.device)[:, None, None, None]
    a, b = torch.where(swap, b, a), torch.where(swap, a, b)
    return a, b, img


def reconstruction(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reconstruction task: the image to both inputs, the image as target."""
    _check(img)
    return img, img, img


def is_well_exposed(x, lo: float = 0.25, hi: float = 0.72, spread: float = 0.35) -> bool:
    """Whether a unit image (NumPy or tensor) is a usable multi-exposure target.

    Mean intensity within ``[lo, hi]`` and a 2-98 percentile spread of at least ``spread``: dark
    night scenes, blown-out skies and flat crops are not "well exposed" and would teach the wrong tone.
    """
    import numpy as np

    v = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    v = v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v.astype(np.float32)
    m = float(v.mean())
    p2, p98 = np.percentile(v, (2, 98))
    return lo <= m <= hi and (p98 - p2) >= spread
