"""Colour and intensity conventions shared by every entry point.

Colour sources are fused through their luma: RGB -> YCbCr (ITU-R BT.601, full range), Y is fused,
CbCr of the colour source is put back. Intensities are brought to [0, 1] before a method sees them
and mapped back to the reference source's range afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "is_color",
    "Intensity",
    "InputIntensity",
    "intensity_of",
    "to_unit",
    "from_unit",
    "check_finite",
]

# BT.601 full-range (JPEG) matrices, for values in [0, 1]; Cb/Cr centred on 0.5.
_RGB2YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    dtype=np.float64,
)
_YCC2RGB = np.linalg.inv(_RGB2YCC)


def is_color(x: np.ndarray) -> bool:
    """True for an (..., H, W, 3) RGB or (..., H, W, 4) RGBA array."""
    return x.ndim >= 3 and x.shape[-1] in (3, 4)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., 3) YCbCr in [0, 1] (BT.601 full range)."""
    rgb = np.asarray(rgb, dtype=np.float32)[..., :3]
    ycc = rgb @ _RGB2YCC.T.astype(np.float32)
    ycc[..., 1:] += 0.5
    return ycc


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """(..., 3) YCbCr in [0, 1] -> (..., 3) RGB clipped to [0, 1]."""
    ycc = np.asarray(ycc, dtype=np.float32).copy()
    ycc[..., 1:] -= 0.5
    return np.clip(ycc @ _YCC2RGB.T.astype(np.float32), 0.0, 1.0)


def check_finite(x: np.ndarray, name: str = "image") -> None:
    """Raise ValueError naming the source if it holds NaN or inf."""
    if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); fusion needs finite intensities")


@dataclass(frozen=True)
class Intensity:
    """How a source's stored values map onto [0, 1] (and back): unit = (x - lo) / (hi - lo).

    ``background``: a stored value that maps to 0 whatever ``lo`` is (the constant outside the
    brain of skull-stripped MRI), for models trained with a foreground mapping.
    """

    lo: float
    hi: float
    dtype: str
    background: float | None = None

    @property
    def span(self) -> float:
        return max(self.hi - self.lo, 1e-12)


@dataclass(frozen=True)
class InputIntensity:
    """The intensity mapping a model was trained with; it travels in the model file's metadata.

    ``foreground="all"`` (the default of every method): percentiles of all pixels, 8-bit images at
    their full range. ``foreground="not-background"``: the *background level* (the most common
    value, when it covers at least ``min_background`` of the pixels: the constant around a
    skull-stripped brain) maps to 0 and the percentiles are taken over the other pixels, for the
    whole image or volume at once. This is how the BraTS models' training slices were made
    (percentiles inside the brain mask of each volume, 0 outside), so a user's raw NIfTI volume
    reaches the model as its training data did.
    """

    percentiles: tuple[float, float] = (0.5, 99.5)
    foreground: str = "all"
    min_background: float = 0.05

    def __post_init__(self) -> None:
        lo, hi = (float(p) for p in self.percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"input intensity percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.foreground not in ("all", "not-background"):
            raise ValueError(f"input intensity foreground must be 'all' or 'not-background', got {self.foreground!r}")
        object.__setattr__(self, "percentiles", (lo, hi))

    @classmethod
    def from_meta(cls, spec: object) -> "InputIntensity | None":
        """The mapping recorded in a model's metadata (None when it records none)."""
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise ValueError(f"input_intensity must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - {"percentiles", "foreground", "min_background"}
        if unknown:
            raise ValueError(f"input_intensity has unknown keys {sorted(unknown)}")
        kw = dict(spec)
        if "percentiles" in kw:
            kw["percentiles"] = tuple(float(p) for p in kw["percentiles"])
        return cls(**kw)

    def to_meta(self) -> dict:
        return {"percentiles": list(self.percentiles), "foreground": self.foreground, "min_background": self.min_background}


def _sample(x: np.ndarray, n: int = 4_000_000) -> np.ndarray:
    step = max(1, int(np.ceil((x.size / n) ** (1 / max(x.ndim, 1)))))
    return x[tuple(slice(None, None, step) for _ in range(x.ndim))]


def _background_level(sample: np.ndarray, min_fraction: float) -> float | None:
    """The most common value of ``sample`` if it covers at least ``min_fraction`` of it."""
    vals, counts = np.unique(sample, return_counts=True)
    k = int(counts.argmax())
    return float(vals[k]) if counts[k] >= min_fraction * sample.size else None


def intensity_of(
    x: np.ndarray, name: str = "image", percentiles=(0.5, 99.5), spec: InputIntensity | None = None
) -> Intensity:
    """Pick the value range of a source: full range for 8-bit, robust percentiles otherwise.

    Percentiles (on a strided subsample for large arrays) keep 11/12/16-bit sensors, MRI and
    floats from being crushed into a few grey levels by a single hot pixel. ``spec``: a model's own
    mapping (:class:`InputIntensity`), which replaces these defaults.
    """
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if x.dtype == np.bool_:
        return Intensity(0.0, 1.0, "bool")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name} has unsupported dtype {x.dtype}; expected integer or float pixels")
    check_finite(x, name)
    sample = _sample(x)
    background = None
    if spec is not None:
        percentiles = spec.percentiles
        if spec.foreground == "not-background":
            background = _background_level(sample, spec.min_background)
            if background is not None and np.any(sample != background):
                sample = sample[sample != background]
    elif x.dtype == np.uint8:
        return Intensity(0.0, 255.0, "uint8")
    lo, hi = np.percentile(sample, percentiles).astype(float)
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return Intensity(float(lo), float(hi), str(x.dtype), background)


def to_unit(x: np.ndarray, inten: Intensity | None = None, name: str = "image") -> tuple[np.ndarray, Intensity]:
    """Stored values -> float32 in [0, 1], with the mapping used (to map a result back)."""
    inten = inten or intensity_of(x, name)
    arr = np.asarray(x, dtype=np.float32)
    u = np.clip((arr - np.float32(inten.lo)) / np.float32(inten.span), 0.0, 1.0)
    if inten.background is not None:  # the background level (resampling may nudge it by rounding)
        bg = np.float32(inten.background)
        u[np.abs(arr - bg) <= np.float32(1e-6) * max(1.0, abs(float(bg)))] = 0.0
    return u, inten


def from_unit(u: np.ndarray, inten: Intensity) -> np.ndarray:
    """[0, 1] -> the stored range and dtype of the reference source (rounded and clipped for ints)."""
    v = np.asarray(u, dtype=np.float32) * np.float32(inten.span) + np.float32(inten.lo)
    dt = np.dtype(inten.dtype) if inten.dtype != "bool" else np.dtype(np.float32)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.rint(v), info.min, info.max).astype(dt)
    return v.astype(dt if dt.itemsize >= 4 else np.float32)
