"""No-reference fusion quality metrics on 0..255 gray / Y images (plain NumPy/SciPy).

Conventions follow the Python evaluators of the image-fusion literature (the ``Evaluator`` of
MMIF-CDDFuse and the codebases derived from it) so that numbers can be compared with published
tables:

- images are 2-D gray or luma (BT.601 Y) arrays in 0..255; floats are accepted;
- EN and MI use 256-bin histograms of the rounded values;
- MI, VIF, SSIM and SCD are sums of two terms, one per source (``X(A, F) + X(B, F)``);
- VIF is the multi-scale pixel-domain VIF (4 scales, Gaussian windows 17/9/5/3, noise variance 2);
- Qabf is Xydeas-Petrovic with Sobel edges and the usual constants;
- SSIM is scikit-image's ``structural_similarity`` with its defaults (7x7 uniform window).

Two deliberate, documented differences from that evaluator:

- MI is in bits (log2), like EN and the MATLAB evaluators (VIFB, PIAFusion's ``analysis_MI``), so
  that ``MI(A, A) == EN(A)``. The CDDFuse Python evaluator used ``sklearn.mutual_info_score``,
  which is in nats: multiply our value by ``ln 2 = 0.693`` to compare with its tables.
- SSIM uses ``data_range=255`` (the range of the images, as MATLAB's ``ssim`` does for 8-bit
  images). Older scikit-image silently took ``data_range=2`` for float arrays, which is what the
  CDDFuse evaluator's published SSIM values used; pass ``data_range=2`` to reproduce them.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import ndimage

__all__ = [
    "METRIC_NAMES",
    "METRIC_DESCRIPTIONS",
    "fusion_metrics",
    "volume_fusion_metrics",
    "scored_slices",
    "MAX_VOLUME_SLICES",
    "entropy",
    "std",
    "spatial_frequency",
    "average_gradient",
    "mutual_information",
    "vif",
    "qabf",
    "ssim",
    "scd",
    "as_gray255",
    "VIF_MIN_SIZE",
    "QABF_MAX",
]

METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM", "SCD")

METRIC_DESCRIPTIONS: dict[str, str] = {
    "EN": "Entropy (bits) of the fused image's 256-bin histogram: how much information it holds.",
    "SD": "Standard deviation of the fused image (grey levels): contrast.",
    "SF": "Spatial frequency: RMS of horizontal and vertical pixel differences; detail and sharpness.",
    "AG": "Average gradient magnitude of the fused image: texture and sharpness.",
    "MI": "Mutual information (bits) MI(A,F) + MI(B,F): information carried over from both sources.",
    "VIF": "Visual information fidelity VIF(A,F) + VIF(B,F) (multi-scale, pixel domain): perceived fidelity to the sources.",
    "Qabf": "Xydeas-Petrovic edge transfer Q^AB/F (0..~0.97): how well source edges survive in the fused image.",
    "SSIM": "Structural similarity SSIM(A,F) + SSIM(B,F): local structure kept from both sources (max 2).",
    "SCD": "Sum of correlations of differences corr(F-B, A) + corr(F-A, B): complementary information transferred.",
}
"""One line per metric, shown by the Evaluate widget and the docs. All are higher-is-better."""

VIF_MIN_SIZE = 41
"""Smallest image side the 4-scale VIF can be computed on (its 'valid' filters shrink the image)."""

_TOL = 1e-3  # float slack on the 0..255 range (values from float arithmetic)


# --------------------------------------------------------------------------- input checks
def _as_image(x, name: str) -> np.ndarray:
    """A validated float64 2-D 0..255 image, or a ValueError naming ``name`` and the problem."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        raise ValueError(f"{name} is boolean; fusion metrics take 0..255 gray/Y images")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} has unsupported dtype {arr.dtype}; fusion metrics take 0..255 gray/Y images")
    if arr.ndim != 2:
        hint = " (colour: pass its Y channel, e.g. as_gray255(rgb))" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else ""
        raise ValueError(f"{name} is {arr.ndim}-D with shape {arr.shape}; fusion metrics take 2-D gray/Y images{hint}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{name} contains {int(arr.size - finite.sum())} NaN/inf value(s); metrics need finite pixels")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_TOL or hi > 255 + _TOL:
        raise ValueError(
            f"{name} has values in {lo:g}..{hi:g}; fusion metrics take 0..255 gray/Y images "
            "(convert with napari_fusion.metrics.as_gray255)"
        )
    return arr


def _as_triplet(fused, a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate fused, a, b together: each a 0..255 2-D image, one shape, not unit-range floats."""
    f, x, y = _as_image(fused, "fused"), _as_image(a, "source A"), _as_image(b, "source B")
    if not (f.shape == x.shape == y.shape):
        raise ValueError(
            f"fused is {_hw(f)}, source A is {_hw(x)} and source B is {_hw(y)}; "
            "metrics need the three images on one grid"
        )
    # Unit-range floats (the pipeline's working range) would pass the range check and give
    # meaningless numbers; rounded 0..255 images that happen to be dark (0/1 values) are fine.
    raw = [np.asarray(v) for v in (fused, a, b)]
    if all(np.issubdtype(r.dtype, np.floating) for r in raw) and max(float(v.max()) for v in (f, x, y)) <= 1.0 \
            and any(np.any(v != np.round(v)) for v in (f, x, y)):
        raise ValueError(
            "fused, source A and source B all lie in [0, 1]: fusion metrics take 0..255 images; "
            "multiply unit images by 255 (or use napari_fusion.metrics.as_gray255)"
        )
    return f, x, y


def _hw(x: np.ndarray) -> str:
    return "x".join(str(s) for s in x.shape)


def as_gray255(x, *, rgb: bool | None = None, quantize: bool = True, name: str = "image") -> np.ndarray:
    """Any image -> float64 2-D gray/Y in 0..255, the input the metrics expect.

    RGB(A) (last axis 3/4, or ``rgb=True``) becomes its BT.601 luma. 8-bit data keeps its values;
    floats already in [0, 1] are scaled by 255; other ranges (16-bit, MRI floats) are stretched with
    :func:`napari_fusion.color.intensity_of`. ``quantize`` rounds to integers, as saving an 8-bit
    image would: the field evaluates fused images read back from 8-bit files.
    """
    from ..color import intensity_of

    arr = np.asarray(x)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    is_rgb = (arr.ndim == 3 and arr.shape[-1] in (3, 4)) if rgb is None else rgb
    if is_rgb:
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"{name} with shape {arr.shape} is not an (H, W, 3) RGB image")
    elif arr.ndim != 2:
        raise ValueError(f"{name} is {arr.ndim}-D with shape {arr.shape}; expected a 2-D gray or (H, W, 3) RGB image")
    if arr.dtype == np.uint8:
        lo, span = 0.0, 255.0
    elif np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and arr.min() >= 0 and arr.max() <= 1:
        lo, span = 0.0, 1.0
    else:
        inten = intensity_of(arr[..., :3] if is_rgb else arr, name)
        lo, span = inten.lo, inten.span
    v = (arr.astype(np.float64) - lo) / span
    if is_rgb:
        v = v[..., 0] * 0.299 + v[..., 1] * 0.587 + v[..., 2] * 0.114
    v = np.clip(v * 255.0, 0.0, 255.0)
    return np.round(v) if quantize else v


# --------------------------------------------------------------------------- single-image metrics
def entropy(img) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of the rounded image."""
    x = _as_image(img, "image")
    counts = np.bincount(_levels(x).ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / x.size
    return float(-(p * np.log2(p)).sum())


def std(img) -> float:
    """SD: population standard deviation of the pixel values."""
    return float(np.std(_as_image(img, "image")))


def spatial_frequency(img) -> float:
    """SF: sqrt(mean(horizontal difference^2) + mean(vertical difference^2))."""
    x = _as_image(img, "image")
    rf = np.mean(np.diff(x, axis=1) ** 2) if x.shape[1] > 1 else 0.0
    cf = np.mean(np.diff(x, axis=0) ** 2) if x.shape[0] > 1 else 0.0
    return float(np.sqrt(rf + cf))


def average_gradient(img) -> float:
    """AG: mean of sqrt((gx^2 + gy^2) / 2) with central differences (one-sided at the borders)."""
    x = _as_image(img, "image")
    if min(x.shape) < 2:
        raise ValueError(f"image is {_hw(x)}; the average gradient needs at least 2x2 pixels")
    gy, gx = np.gradient(x)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# --------------------------------------------------------------------------- reference metrics
def _levels(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.intp)


def _mi_bits(x: np.ndarray, y: np.ndarray) -> float:
    joint = np.bincount((_levels(x) * 256 + _levels(y)).ravel(), minlength=256 * 256).reshape(256, 256)
    pxy = joint / x.size
    px, py = pxy.sum(axis=1), pxy.sum(axis=0)
    nz = pxy > 0
    return float((pxy[nz] * np.log2(pxy[nz] / np.outer(px, py)[nz])).sum())


def mutual_information(fused, a, b) -> float:
    """MI = MI(A, F) + MI(B, F), in bits, from 256x256 joint histograms of rounded values."""
    f, x, y = _as_triplet(fused, a, b)
    return _mi(f, x, y)


def _mi(f: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return _mi_bits(x, f) + _mi_bits(y, f)


def _gauss1d(n: int) -> np.ndarray:
    """Normalised 1-D factor of the n x n Gaussian window (sigma n/5) of the VIF evaluators."""
    r = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-(r * r) / (2.0 * (n / 5.0) ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering: only outputs whose window lies inside the image."""
    r = (len(g) - 1) // 2
    out = ndimage.correlate1d(x, g, axis=0, mode="constant")
    out = ndimage.correlate1d(out, g, axis=1, mode="constant")
    return out[r : x.shape[0] - r, r : x.shape[1] - r]


def _vif_term(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float = 2.0, eps: float = 1e-10) -> float:
    """Pixel-domain, 4-scale VIF of ``dist`` against ``ref``; 1.0 when ``ref`` has no variance."""
    num = den = 0.0
    for scale in range(1, 5):
        g = _gauss1d(2 ** (5 - scale) + 1)
        if scale > 1:
            ref = _filter_valid(ref, g)[::2, ::2]
            dist = _filter_valid(dist, g)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, g), _filter_valid(dist, g)
        s1 = np.maximum(_filter_valid(ref * ref, g) - mu1 * mu1, 0.0)
        s2 = np.maximum(_filter_valid(dist * dist, g) - mu2 * mu2, 0.0)
        s12 = _filter_valid(ref * dist, g) - mu1 * mu2
        gain = s12 / (s1 + eps)
        sv = s2 - gain * s12
        flat1 = s1 < eps  # no reference signal: nothing to preserve, all distortion is noise
        gain[flat1] = 0.0
        sv[flat1] = s2[flat1]
        s1[flat1] = 0.0
        flat2 = s2 < eps  # no distorted signal
        gain[flat2] = 0.0
        sv[flat2] = 0.0
        neg = gain < 0  # anti-correlated: treated as no gain, all distortion
        sv[neg] = s2[neg]
        gain[neg] = 0.0
        sv = np.maximum(sv, eps)
        num += float(np.sum(np.log10(1.0 + gain * gain * s1 / (sv + sigma_nsq))))
        den += float(np.sum(np.log10(1.0 + s1 / sigma_nsq)))
    return 1.0 if den == 0.0 else num / den


def vif(fused, a, b) -> float:
    """VIF = VIF(A, F) + VIF(B, F), multi-scale pixel-domain visual information fidelity."""
    return _vif(*_as_triplet(fused, a, b))


def _vif(f: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    if min(f.shape) < VIF_MIN_SIZE:
        raise ValueError(f"images are {_hw(f)}; the 4-scale VIF needs at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE} pixels")
    return _vif_term(x, f) + _vif_term(y, f)


_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def _edges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel edge strength and orientation (arctan(gy/gx), pi/2 where gx == 0); zero padding."""
    gx = ndimage.correlate(x, _SOBEL_X, mode="constant")
    gy = ndimage.correlate(x, _SOBEL_Y, mode="constant")
    strength = np.hypot(gx, gy)
    angle = np.full_like(x, math.pi / 2)
    nz = gx != 0
    angle[nz] = np.arctan(gy[nz] / gx[nz])
    return strength, angle


def _edge_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    """Q^{XF}: per-pixel edge strength and orientation preservation (Xydeas-Petrovic sigmoids)."""
    hi, lo = np.maximum(g_src, g_f), np.minimum(g_src, g_f)
    rel = np.divide(lo, hi, out=np.zeros_like(hi), where=hi > 0)
    rel[(hi > 0) & (g_src == g_f)] = 1.0
    ang = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (rel - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (ang - 0.8)))
    return q_g * q_a


QABF_MAX = 0.9994 / (1.0 + math.exp(-15.0 * 0.5)) * 0.9879 / (1.0 + math.exp(-22.0 * 0.2))
"""Qabf of a perfect fusion (F = A = B) with the field's constants, about 0.9748."""


def qabf(fused, a, b) -> float:
    """Q^AB/F: edge information of A and B preserved in F, weighted by source edge strength.

    Returns 0.0 when neither source has any edge (nothing to preserve).
    """
    return _qabf(*_as_triplet(fused, a, b))


def _qabf(f: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    ga, aa = _edges(x)
    gb, ab = _edges(y)
    gf, af = _edges(f)
    w = float(np.sum(ga + gb))
    if w == 0.0:
        return 0.0
    return float(np.sum(_edge_preservation(ga, aa, gf, af) * ga + _edge_preservation(gb, ab, gf, af) * gb) / w)


def ssim(fused, a, b, *, data_range: float = 255.0) -> float:
    """SSIM = SSIM(A, F) + SSIM(B, F) with scikit-image defaults (7x7 uniform window)."""
    return _ssim(*_as_triplet(fused, a, b), data_range=data_range)


def _ssim(f: np.ndarray, x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    from skimage.metrics import structural_similarity

    if min(f.shape) < 7:
        raise ValueError(f"images are {_hw(f)}; SSIM's 7x7 window needs at least 7x7 pixels")
    return float(structural_similarity(f, x, data_range=data_range) + structural_similarity(f, y, data_range=data_range))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant (no information to correlate)."""
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float(np.sum(xc * xc)) * float(np.sum(yc * yc)))
    return 0.0 if den == 0.0 else float(np.sum(xc * yc)) / den


def scd(fused, a, b) -> float:
    """SCD = corr(F - B, A) + corr(F - A, B): sum of the correlations of differences.

    A constant difference (e.g. F == A) contributes 0 instead of the evaluators' NaN.
    """
    return _scd(*_as_triplet(fused, a, b))


def _scd(f: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return _corr(f - y, x) + _corr(f - x, y)


# --------------------------------------------------------------------------- all together
_FUNCS = {
    "EN": lambda f, a, b: entropy(f),
    "SD": lambda f, a, b: std(f),
    "SF": lambda f, a, b: spatial_frequency(f),
    "AG": lambda f, a, b: average_gradient(f),
    "MI": _mi,
    "VIF": _vif,
    "Qabf": _qabf,
    "SSIM": _ssim,
    "SCD": _scd,
}


def _pick(which: Iterable[str] | str | None) -> list[str]:
    if which is None:
        return list(METRIC_NAMES)
    if isinstance(which, str):
        which = [which]
    lookup = {n.lower(): n for n in METRIC_NAMES}
    out = []
    for w in which:
        key = lookup.get(str(w).lower())
        if key is None:
            raise ValueError(f"unknown fusion metric {w!r}; known metrics: {', '.join(METRIC_NAMES)}")
        if key not in out:
            out.append(key)
    return out


def fusion_metrics(fused, a, b, which: Iterable[str] | str | None = None) -> dict[str, float]:
    """The fusion metrics of a fused image against its two sources, in METRIC_NAMES order.

    ``fused``, ``a`` and ``b`` are 2-D gray/Y images in 0..255 on one grid (see :func:`as_gray255`).
    ``which`` picks a subset by name (case-insensitive); all nine by default.
    """
    names = _pick(which)
    f, x, y = _as_triplet(fused, a, b)  # validate once, with the three names
    return {n: float(_FUNCS[n](f, x, y)) for n in names}


MAX_VOLUME_SLICES = 16
"""Most slices of a volume the fusion metrics are averaged over (spread evenly over the volume)."""


def scored_slices(a, b, max_slices: int | None = MAX_VOLUME_SLICES) -> list[int]:
    """The slices (axis 0) of a volume pair that its fusion metrics are averaged over.

    A slice counts when A or B varies on it: a constant slice (background outside a head, padding)
    has no edges, detail or information for a fusion to keep, and several metrics are undefined on
    it. With more than ``max_slices`` such slices, ``max_slices`` of them spread evenly from the first
    to the last are kept (None: all). The one rule of the API, the CLI and the Evaluate widget.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[:1] != b.shape[:1]:
        raise ValueError(f"volumes with {a.shape[0]} and {b.shape[0]} slices")
    keep = [z for z in range(a.shape[0]) if a[z].max() > a[z].min() or b[z].max() > b[z].min()]
    if max_slices is not None and len(keep) > int(max_slices):
        if int(max_slices) < 1:
            raise ValueError(f"max_slices must be 1 or more (or None for all), not {max_slices}")
        keep = [keep[i] for i in np.linspace(0, len(keep) - 1, int(max_slices)).round().astype(int)]
    return keep


def volume_fusion_metrics(
    fused,
    a,
    b,
    which: Iterable[str] | str | None = None,
    *,
    max_slices: int | None = MAX_VOLUME_SLICES,
    names: tuple[str, str] = ("A", "B"),
) -> dict[str, float]:
    """:func:`fusion_metrics` of a volume (slices along axis 0, 0..255 like the 2-D case): the mean
    over :func:`scored_slices`. Raises ValueError, naming the sources, when both are constant on every
    slice."""
    keep = scored_slices(a, b, max_slices)
    if not keep:
        raise ValueError(f"source A {names[0]!r} and source B {names[1]!r} are constant: nothing to evaluate")
    per = [fusion_metrics(fused[z], a[z], b[z], which) for z in keep]
    return {k: float(np.mean([p[k] for p in per])) for k in per[0]}
