"""A :class:`Box` (pixel edges on its image; see :mod:`napari_fusion.boxes`), class names of a
method's classes, class ids mapped."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Box", "DEFAULT_MIN_AREA", "class_names_of", "relabel"]

DEFAULT_MIN_AREA = 16  # pixels: smaller segmentation components are not reported as objects


@dataclass(frozen=True)
class Box:
    """One axis-aligned box in pixel edges of its image (see :mod:`napari_fusion.boxes`)."""

    cls: int  # YOLO class id, 0-based (label value cls + 1)
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    name: str = ""

    @property
    def label(self) -> int:
        """The value this box's class has in a label map (0 = background)."""
        return self.cls + 1

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def iou(self, other: "Box") -> float:
        """Intersection over union of two boxes (0 when they do not overlap)."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        inter = max(w, 0.0) * max(h, 0.0)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def to_yolo(self, shape: Sequence[int]) -> tuple[int, float, float, float, float]:
        """``(class, cx, cy, w, h)`` normalised to an image of ``shape = (rows, cols)``."""
        rows, cols = float(shape[0]), float(shape[1])
        return (self.cls, (self.x0 + self.x1) / 2 / cols, (self.y0 + self.y1) / 2 / rows, self.width / cols, self.height / rows)

    def rectangle(self) -> np.ndarray:
        """The four (row, col) corners in napari's data coordinates (pixel centres at integers)."""
        r0, c0, r1, c1 = self.y0 - 0.5, self.x0 - 0.5, self.y1 - 0.5, self.x1 - 0.5
        return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)



def class_names_of(classes: Any) -> dict[int, str]:
    """``{label value: name}`` of a method's classes (ClassInfo tuples, ``(index, name, ...)`` or names)."""
    out: dict[int, str] = {}
    for i, c in enumerate(classes or ()):
        if hasattr(c, "index") and hasattr(c, "name"):
            out[int(c.index)] = str(c.name)
        elif isinstance(c, str):
            out[i] = c
        else:
            out[int(c[0])] = str(c[1])
    return out


def relabel(boxes: Iterable[Box], mapping: Mapping[int, int], names: Mapping[int, str] | None = None) -> list[Box]:
    """Boxes with class ids mapped (``mapping[old] = new``; unmapped ids kept), renamed from ``names``."""
    out = []
    for b in boxes:
        c = int(mapping.get(b.cls, b.cls))
        out.append(replace(b, cls=c, name=(names or {}).get(c, b.name)))
    return out
