"""Boxes and pixels: boxes as weak pixel labels, boxes from a segmentation's components."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from .box import DEFAULT_MIN_AREA, Box, class_names_of

__all__ = ["weak_labels", "boxes_from_labels", "result_boxes", "SHOW_MIN_SCORE"]

_SIZE_SCALE = 16.0  # pixels: the size discount of the score without probabilities (area / (area + 16))


def _pixel_span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixels whose centre lies in [lo, hi) (at least the nearest one), clipped to 0..n."""
    a = int(math.ceil(lo - 0.5))
    b = int(math.ceil(hi - 0.5))
    if b <= a:  # a box thinner than a pixel keeps the pixel it is in
        a = int(math.floor((lo + hi) / 2))
        b = a + 1
    return min(max(a, 0), n), min(max(b, 0), n)


def weak_labels(
    boxes: Iterable[Box],
    shape: Sequence[int],
    *,
    ignore_ring: int = 0,
    ignore_value: int = 255,
    dtype: Any = np.int32,
) -> np.ndarray:
    """Boxes as weak pixel labels of an image of ``shape``: inside a box its ``cls + 1``, else 0.

    Where boxes overlap the smaller box wins (a person in front of a car keeps its label).
    ``ignore_ring > 0``: the ``ignore_ring`` pixels just outside each box get ``ignore_value``
    (a loss can skip them: box edges are where the box label is least sure), except where another
    box covers them. A pixel belongs to a box when its centre lies inside it.
    """
    rows, cols = int(shape[0]), int(shape[1])
    out = np.zeros((rows, cols), dtype=dtype)
    boxes = list(boxes)
    if not boxes:
        return out
    inside = np.zeros((rows, cols), bool)
    ring = np.zeros((rows, cols), bool) if ignore_ring > 0 else None
    spans = []
    for b in boxes:
        r0, r1 = _pixel_span(b.y0, b.y1, rows)
        c0, c1 = _pixel_span(b.x0, b.x1, cols)
        spans.append((b, r0, r1, c0, c1))
    # largest first, so that smaller boxes paint over larger ones (stable for equal areas)
    for b, r0, r1, c0, c1 in sorted(spans, key=lambda s: -(s[2] - s[1]) * (s[4] - s[3])):
        out[r0:r1, c0:c1] = b.label
        inside[r0:r1, c0:c1] = True
        if ring is not None:
            k = int(ignore_ring)
            ring[max(r0 - k, 0) : r1 + k, max(c0 - k, 0) : c1 + k] = True
    if ring is not None:
        out[ring & ~inside] = ignore_value
    return out


def _size_score(area: float, extent: float) -> float:
    return float(extent * area / (area + _SIZE_SCALE))


def boxes_from_labels(
    labels: np.ndarray,
    classes: Any = None,
    *,
    probs: np.ndarray | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    connectivity: int = 2,
    ignore_value: int | None = None,
) -> list[Box]:
    """One box per connected component of each class of a 2-D label map (0 = background).

    Label value ``v > 0`` gives boxes of YOLO class ``v - 1``, named from ``classes`` (a method's
    ClassInfo tuple, ``(index, name)`` pairs or a list of names indexed by label value). Components
    smaller than ``min_area`` pixels are dropped. Skipped values: negative ones, ``ignore_value``
    and, when ``classes`` are given, any value that is not one of its classes.
    Score: with ``probs`` (``(n_labels, rows, cols)`` class probabilities, e.g. a softmax) the mean
    probability of the component's class over its pixels; without, a size-based score in (0, 1):
    the share of its box the component fills times ``area / (area + 16)``. Sorted by score, highest first.
    """
    from skimage.measure import label as cc_label
    from skimage.measure import regionprops

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"boxes come from 2-D label maps, got shape {lab.shape}; take one slice of a volume")
    if probs is not None:
        probs = np.asarray(probs)
        if probs.ndim != 3 or probs.shape[1:] != lab.shape:
            raise ValueError(f"probs must be (n_labels, {lab.shape[0]}, {lab.shape[1]}), got {probs.shape}")
    names = class_names_of(classes)
    out: list[Box] = []
    for v in np.unique(lab):
        v = int(v)
        if v <= 0 or v == ignore_value or (names and v not in names):
            continue
        comps = cc_label(lab == v, connectivity=connectivity)
        for reg in regionprops(comps):
            if reg.area < min_area:
                continue
            r0, c0, r1, c1 = reg.bbox
            if probs is not None and v < probs.shape[0]:
                rr, cc = reg.coords[:, 0], reg.coords[:, 1]
                score = float(np.mean(probs[v][rr, cc]))
            else:
                score = _size_score(float(reg.area), float(reg.area) / float((r1 - r0) * (c1 - c0)))
            out.append(Box(v - 1, float(c0), float(r0), float(c1), float(r1), score, names.get(v, f"class {v}")))
    out.sort(key=lambda b: (-b.score, b.cls, b.y0, b.x0))
    return out


SHOW_MIN_SCORE = 0.3  # a detection head's boxes shown in a viewer: only these confident ones


def result_boxes(result: Any, classes: Any = None, *, min_area: int = DEFAULT_MIN_AREA, shown: bool = False) -> list[Box]:
    """The boxes of a fusion result: its model's detection-head boxes (``result.boxes``) when it has
    them, else one per connected component of each class of ``result.labels`` (2-D). ``shown``: only
    the head's boxes a viewer shows (score >= :data:`SHOW_MIN_SCORE`; all of them are for scoring
    and files, where the consumer picks a threshold)."""
    if getattr(result, "boxes", None) is not None:
        return [b for b in result.boxes if not shown or b.score >= SHOW_MIN_SCORE]
    return boxes_from_labels(result.labels, classes if classes is not None else result.classes, min_area=min_area)
