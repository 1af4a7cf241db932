"""Random crop batches for the pair trainers (TDFusion, MultiTaskVIF): BraTS slices and registered pairs.

Both samplers are seeded NumPy generators (``sampler.rng``; :mod:`.scaffold` saves and restores its
state for ``--resume``) and return float32 ``(N, 1, c, c)`` sources in [0, 1] with int64 ``(N, c, c)``
labels; flips and 90-degree rotations augment.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .losses import IGNORE_INDEX

__all__ = ["BratsSampler", "PairSampler", "augment", "remap_foreground", "to_unit"]


def to_unit(x: np.ndarray) -> np.ndarray:
    """A training image as float32 in [0, 1]: uint8 / 255, floats checked to lie in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"training images must be uint8 or float in [0, 1], got values {x.min():.3g}..{x.max():.3g}")
    return x


def augment(rng: np.random.Generator, *arrs: np.ndarray) -> list[np.ndarray]:
    """The same random 90-degree rotation and left-right flip of each array (last two axes), contiguous."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for x in arrs:
        x = np.rot90(x, k, axes=(-2, -1))
        if flip:
            x = x[..., ::-1]
        out.append(np.ascontiguousarray(x))
    return out


def remap_foreground(x: np.ndarray, rng: np.random.Generator, lo=(0.0, 0.1), hi=(0.55, 1.05)) -> np.ndarray:
    """``(x - l) / (h - l)`` inside the foreground (``x > 0``), clipped to [0, 1]; 0 stays 0.

    A slice scaled by its own in-brain percentiles is this remap of the volume-scaled slice, with
    ``l`` of 0..0.08 and ``h`` of 0.58..1.0 on the BraTS training slices; ``l``, ``h`` are drawn
    uniformly from ``lo`` and ``hi`` to cover them (and slightly darker images).
    """
    l, h = float(rng.uniform(*lo)), float(rng.uniform(*hi))
    out = np.clip((x - l) / max(h - l, 1e-3), 0.0, 1.0).astype(np.float32)
    out[x <= 0] = 0.0
    return out


class BratsSampler:
    """Random (crop x crop) batches of BraTS slices: ``a`` FLAIR, ``b`` T1c, ``labels`` 0..4.

    Half of the crops are centred on a tumour pixel (slices without tumour are mostly background, so
    uniform sampling would rarely show the rare classes). Flips and 90-degree rotations augment.
    ``intensity_jitter``: the probability that each source of a crop is remapped in the brain as a
    user's single slice is (its own percentiles instead of the volume's; :func:`remap_foreground`).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray, crop: int, seed: int = 0, tumour_fraction: float = 0.5,
                 intensity_jitter: float = 0.0):
        if a.shape != b.shape or a.shape != labels.shape or a.ndim != 3:
            raise ValueError(f"BraTS arrays must be (N, H, W) of one shape, got a {a.shape}, b {b.shape}, labels {labels.shape}")
        if len(a) == 0:
            raise ValueError("no BraTS slices to train on (empty training data)")
        self.a, self.b, self.labels = a, b, labels
        self.crop = min(int(crop), a.shape[1], a.shape[2])
        self.rng = np.random.default_rng(seed)
        self.tumour_fraction = tumour_fraction
        self.intensity_jitter = float(intensity_jitter)
        self.tumour_slices = np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1))

    def class_counts(self, n_classes: int = 5) -> np.ndarray:
        return np.bincount(self.labels.ravel().astype(np.int64), minlength=n_classes)[:n_classes]

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, rng = self.crop, self.rng
        H, W = self.a.shape[1:]
        A = np.empty((n, 1, c, c), np.float32)
        B = np.empty((n, 1, c, c), np.float32)
        L = np.empty((n, c, c), np.int64)
        for i in range(n):
            if len(self.tumour_slices) and rng.random() < self.tumour_fraction:
                s = int(rng.choice(self.tumour_slices))
                ys, xs = np.nonzero(self.labels[s] > 0)
                j = int(rng.integers(len(ys)))
                y0 = int(np.clip(ys[j] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, H - c))
                x0 = int(np.clip(xs[j] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, W - c))
            else:
                s = int(rng.integers(len(self.a)))
                y0, x0 = int(rng.integers(H - c + 1)), int(rng.integers(W - c + 1))
            sl = (s, slice(y0, y0 + c), slice(x0, x0 + c))
            ca, cb, cl = augment(rng, to_unit(self.a[sl]), to_unit(self.b[sl]), self.labels[sl])
            if self.intensity_jitter:
                ca, cb = (remap_foreground(x, rng) if rng.random() < self.intensity_jitter else x for x in (ca, cb))
            A[i, 0], B[i, 0], L[i] = ca, cb, cl
        return torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(L)


class PairSampler:
    """Random (crop x crop) batches from a list of registered (a, b) pairs of any sizes.

    ``labels`` (optional): one int label image per pair (or None for an unlabelled pair, whose crops
    get only ``IGNORE_INDEX``); then ``object_fraction`` of the crops are centred near a labelled
    object pixel (label > 0) so that the rare classes are seen. Without labels ``batch`` returns None
    for them.
    """

    def __init__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], crop: int, seed: int = 0,
                 labels: Sequence[np.ndarray | None] | None = None, object_fraction: float = 0.5):
        if not pairs:
            raise ValueError("no image pairs to train on (empty training data)")
        for i, (a, b) in enumerate(pairs):
            if a.shape != b.shape or a.ndim != 2:
                raise ValueError(f"training pair {i}: sources of shapes {a.shape} and {b.shape}; need two 2-D images of one shape")
        if labels is not None:
            if len(labels) != len(pairs):
                raise ValueError(f"{len(labels)} label images for {len(pairs)} training pairs")
            for i, (lab, (a, _)) in enumerate(zip(labels, pairs)):
                if lab is not None and lab.shape != a.shape:
                    raise ValueError(f"training pair {i}: labels of shape {lab.shape} for images of shape {a.shape}")
        self.pairs = list(pairs)
        self.labels = list(labels) if labels is not None else None
        self.object_fraction = float(object_fraction)
        self.objects = [
            np.flatnonzero(lab.ravel() > 0) if lab is not None and lab.dtype.kind in "iu" else np.zeros(0, np.int64)
            for lab in (self.labels or [])
        ]
        self.object_pairs = [i for i, o in enumerate(self.objects) if len(o)]
        self.crop = int(crop)
        self.rng = np.random.default_rng(seed)

    def class_counts(self, n_classes: int) -> np.ndarray:
        counts = np.zeros(n_classes, np.int64)
        for lab in self.labels or []:
            if lab is not None:
                v = lab[(lab >= 0) & (lab < n_classes)]
                counts += np.bincount(v.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
        return counts

    def _window(self, i: int, shape: tuple[int, int]) -> tuple[int, int]:
        c, rng = self.crop, self.rng
        H, W = shape
        if self.labels is not None and len(self.objects[i]) and rng.random() < self.object_fraction:
            y, x = divmod(int(self.objects[i][int(rng.integers(len(self.objects[i])))]), W)
            jitter = lambda: int(rng.integers(-(c // 4), c // 4 + 1))  # noqa: E731
            return int(np.clip(y - c // 2 + jitter(), 0, H - c)), int(np.clip(x - c // 2 + jitter(), 0, W - c))
        return int(rng.integers(H - c + 1)), int(rng.integers(W - c + 1))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        c, rng = self.crop, self.rng
        A = np.empty((n, 1, c, c), np.float32)
        B = np.empty((n, 1, c, c), np.float32)
        L = np.full((n, c, c), IGNORE_INDEX, np.int64) if self.labels is not None else None
        for k in range(n):
            if self.object_pairs and rng.random() < self.object_fraction:
                i = int(self.object_pairs[int(rng.integers(len(self.object_pairs)))])
            else:
                i = int(rng.integers(len(self.pairs)))
            a, b = self.pairs[i]
            lab = self.labels[i] if self.labels is not None else None
            if min(a.shape) < c:
                pad = [(0, max(0, c - a.shape[0])), (0, max(0, c - a.shape[1]))]
                a, b = np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect")
                if lab is not None:
                    lab = np.pad(lab, pad, mode="constant", constant_values=IGNORE_INDEX)
            y0, x0 = self._window(i, a.shape)
            win = (slice(y0, y0 + c), slice(x0, x0 + c))
            if lab is not None:
                ca, cb, cl = augment(rng, to_unit(a[win]), to_unit(b[win]), lab[win].astype(np.int64))
                L[k] = cl
            else:
                ca, cb = augment(rng, to_unit(a[win]), to_unit(b[win]))
            A[k, 0], B[k, 0] = ca, cb
        return torch.from_numpy(A), torch.from_numpy(B), (torch.from_numpy(L) if L is not None else None)

