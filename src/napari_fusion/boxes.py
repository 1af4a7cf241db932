"""Objects as boxes: YOLO box files, boxes as weak pixel labels, boxes from a segmentation, box mAP.

Qt-free and napari-free (:func:`show_boxes` only calls methods of the viewer it is given).

Conventions
-----------
- A :class:`Box` is in **pixels of the image it belongs to** (source A's grid): ``x0, y0, x1, y1``
  are pixel *edges*, x = column, y = row; pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``. A box
  from a segmentation component spanning columns ``c0..c1`` has ``x0 = c0``, ``x1 = c1 + 1``.
- ``Box.cls`` is the YOLO class id (0-based). A label map uses ``cls + 1`` (0 = background): label
  value ``v`` of a segmenting method is YOLO class ``v - 1``, named by the method's class ``v``.
- YOLO text: one box per line, ``class cx cy w h`` normalised to the image width/height
  (optionally a 6th column, the confidence). This is the layout of the MSRS boxes in
  ``shared/data/ivif/MSRS/boxes/{fusion,infrared,visible}/NAME.txt``.

Example::

    boxes = read_yolo("boxes/fusion/00004N.txt", shape=(480, 640), n_classes=3)
    weak = weak_labels(boxes, (480, 640), ignore_ring=2)      # 0 background, 1 person, ...
    found = boxes_from_labels(weak, classes=("background", "person", "bicycle", "car"))
    box_map([found], [boxes]).mean                            # mAP@0.5
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "Box",
    "MapScore",
    "DEFAULT_MIN_AREA",
    "read_yolo",
    "write_yolo",
    "read_class_names",
    "write_class_names",
    "weak_labels",
    "boxes_from_labels",
    "box_map",
    "class_names_of",
    "relabel",
    "show_boxes",
]

DEFAULT_MIN_AREA = 16  # pixels: smaller segmentation components are not reported as objects
_SIZE_SCALE = 16.0  # pixels: the size discount of the score without probabilities (area / (area + 16))


@dataclass(frozen=True)
class Box:
    """One axis-aligned box in pixel edges of its image (see the module docstring)."""

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


# ------------------------------------------------------------------------------------------------
# YOLO files
# ------------------------------------------------------------------------------------------------
def _bad(path: Any, lineno: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {lineno}: {what}")


def read_yolo(
    path: str | os.PathLike,
    shape: Sequence[int],
    *,
    n_classes: int | None = None,
    names: Sequence[str] | Mapping[int, str] | None = None,
    with_score: bool = False,
) -> list[Box]:
    """Boxes of one YOLO text file (``class cx cy w h`` per line, normalised), in pixels of ``shape``.

    ``shape``: the image's (rows, cols). ``n_classes``: class ids must lie in ``0..n_classes-1``
    (default: ``len(names)`` when names are given, else any id >= 0). ``names``: class names by id.
    ``with_score``: a 6th column (confidence in 0..1) is allowed; without it a line has exactly 5.
    Blank lines are skipped; boxes overhanging the image edge are clipped to it. Any bad line raises
    ValueError naming the file and the line number: wrong column count, a value that is not a number,
    a class id that is not an integer or out of range, a coordinate outside 0..1, a width or height of 0.
    """
    path = Path(path)
    if n_classes is None and names is not None:
        n_classes = len(names)
    name_of = _name_lookup(names)
    rows, cols = float(shape[0]), float(shape[1])
    want = "5 (class cx cy w h)" + (" or 6 (… score)" if with_score else "")
    out: list[Box] = []
    text = path.read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5 and not (with_score and len(parts) == 6):
            raise _bad(path, lineno, f"{len(parts)} columns, expected {want}: {line.strip()!r}")
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise _bad(path, lineno, f"not a number in {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in vals):
            raise _bad(path, lineno, f"not a finite number in {line.strip()!r}")
        c = vals[0]
        if c != int(c):
            raise _bad(path, lineno, f"class {parts[0]!r} is not an integer")
        c = int(c)
        if c < 0 or (n_classes is not None and c >= n_classes):
            rng = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
            raise _bad(path, lineno, f"class {c} out of range {rng}")
        cx, cy, w, h = vals[1:5]
        for key, v in zip(("cx", "cy", "w", "h"), (cx, cy, w, h)):
            if not 0.0 <= v <= 1.0:
                raise _bad(path, lineno, f"{key} = {v:g} is outside 0..1 (coordinates are normalised)")
        if w <= 0 or h <= 0:
            raise _bad(path, lineno, f"box of zero size (w = {w:g}, h = {h:g})")
        score = 1.0
        if len(vals) == 6:
            score = vals[5]
            if not 0.0 <= score <= 1.0:
                raise _bad(path, lineno, f"score = {score:g} is outside 0..1")
        x0, x1 = max((cx - w / 2) * cols, 0.0), min((cx + w / 2) * cols, cols)
        y0, y1 = max((cy - h / 2) * rows, 0.0), min((cy + h / 2) * rows, rows)
        out.append(Box(c, x0, y0, x1, y1, score, name_of(c)))
    return out


def write_yolo(path: str | os.PathLike, boxes: Iterable[Box], shape: Sequence[int], *, with_score: bool = False) -> Path:
    """Write boxes as YOLO text (``class cx cy w h`` [``score``]) for an image of ``shape``, atomically."""
    from .io.atomic import write_atomic

    lines = []
    for b in boxes:
        c, cx, cy, w, h = b.to_yolo(shape)
        cx, cy, w, h = (min(max(v, 0.0), 1.0) for v in (cx, cy, w, h))
        line = f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
        if with_score:
            line += f" {min(max(float(b.score), 0.0), 1.0):.4f}"
        lines.append(line)
    text = "".join(line + "\n" for line in lines)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names of a ``classes.txt``: lines ``ID NAME`` (as MSRS has them) or ``NAME``, ids 0, 1, ..."""
    path = Path(path)
    names: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        first, _, rest = s.partition(" ")
        if first.isdigit() and rest.strip():
            i, name = int(first), rest.strip()
        else:
            i, name = len(names), s
        if i in names:
            raise _bad(path, lineno, f"class id {i} given twice")
        names[i] = name
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: class ids must be 0..{len(names) - 1}, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def write_class_names(path: str | os.PathLike, names: Sequence[str]) -> Path:
    """Write ``classes.txt`` (``ID NAME`` per line, the MSRS layout), atomically."""
    from .io.atomic import write_atomic

    text = "".join(f"{i} {n}\n" for i, n in enumerate(names))
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _name_lookup(names: Sequence[str] | Mapping[int, str] | None):
    if names is None:
        return lambda c: f"class {c}"
    table = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    return lambda c: str(table.get(c, f"class {c}"))


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


# ------------------------------------------------------------------------------------------------
# boxes <-> pixels
# ------------------------------------------------------------------------------------------------
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
    from skimage.measure import label as cc_label, regionprops

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


# ------------------------------------------------------------------------------------------------
# mAP
# ------------------------------------------------------------------------------------------------
@dataclass
class MapScore:
    """Box average precision at one IoU threshold: per class (by name) and their mean.

    A class with no ground-truth box has no AP (left out of ``per_class`` and of the mean, as COCO
    does); a class with ground truth but no prediction has AP 0.
    """

    mean: float
    per_class: dict[str, float] = field(default_factory=dict)
    iou: float = 0.5
    n_truth: dict[str, int] = field(default_factory=dict)
    n_pred: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """Table rows (class, AP, truth and predicted box counts) plus a ``mean`` row."""
        rows = [{"class": k, f"AP@{self.iou:g}": v, "truth": self.n_truth.get(k, 0), "predicted": self.n_pred.get(k, 0)} for k, v in self.per_class.items()]
        rows.append({"class": "mean", f"AP@{self.iou:g}": self.mean, "truth": sum(self.n_truth.values()), "predicted": sum(self.n_pred.values())})
        return rows


def _coco_backend():
    """pycocotools' COCO/COCOeval (what torchmetrics' MeanAveragePrecision runs too), else faster-coco-eval's."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    except ImportError:
        pass
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    except ImportError:
        raise ImportError("box mAP needs pycocotools (pip install pycocotools) or faster-coco-eval") from None


def box_map(
    predictions: Sequence[Sequence[Box]],
    truths: Sequence[Sequence[Box]],
    *,
    names: Mapping[int, str] | Sequence[str] | None = None,
    iou: float = 0.5,
) -> MapScore:
    """COCO-style box AP at IoU ``iou`` (default mAP@0.5) of predicted vs true boxes, image by image.

    ``predictions[i]`` and ``truths[i]`` are the boxes of image ``i`` (same pixel grid); boxes are
    matched by ``cls``. The scoring is pycocotools' ``COCOeval`` (101-point interpolated precision,
    area range "all", up to max(100, most boxes in an image) detections per image), not our own AP code.
    ``names``: class names by ``cls`` (default: the boxes' own names).
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction lists but {len(truths)} truth lists (one each per image)")
    COCO, COCOeval = _coco_backend()
    name_of: dict[int, str] = {}
    for boxes in (*truths, *predictions):
        for b in boxes:
            name_of.setdefault(int(b.cls), b.name or f"class {b.cls}")
    if names is not None:
        name_of.update(dict(names) if isinstance(names, Mapping) else dict(enumerate(names)))
    cats = sorted({int(b.cls) for boxes in (*truths, *predictions) for b in boxes})
    n_truth = {name_of[c]: sum(1 for bs in truths for b in bs if b.cls == c) for c in cats}
    n_pred = {name_of[c]: sum(1 for bs in predictions for b in bs if b.cls == c) for c in cats}
    if not any(len(t) for t in truths):
        return MapScore(float("nan"), {}, iou, {}, n_pred)

    def dataset(per_image: Sequence[Sequence[Box]], scored: bool) -> dict:
        anns = []
        for i, boxes in enumerate(per_image):
            for b in boxes:
                ann = {
                    "id": len(anns) + 1,  # COCOeval treats id 0 as "unmatched": ids start at 1
                    "image_id": i + 1,
                    "category_id": int(b.cls) + 1,
                    "bbox": [float(b.x0), float(b.y0), float(b.width), float(b.height)],
                    "area": float(b.area),
                    "iscrowd": 0,
                }
                if scored:
                    ann["score"] = float(b.score)
                anns.append(ann)
        return {
            "images": [{"id": i + 1} for i in range(len(per_image))],
            "categories": [{"id": c + 1, "name": name_of[c]} for c in cats],
            "annotations": anns,
        }

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt, dt = COCO(), COCO()
        gt.dataset, dt.dataset = dataset(truths, False), dataset(predictions, True)
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([float(iou)])
        ev.params.maxDets = [max(100, max((len(p) for p in predictions), default=0))]
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = np.asarray(ev.eval["precision"])  # [iou, recall, class, area, maxdets]
    per_class: dict[str, float] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, -1]
        if (p > -1).any():
            per_class[name_of[int(cat_id) - 1]] = float(np.mean(p[p > -1]))
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return MapScore(mean, per_class, iou, {k: v for k, v in n_truth.items() if v}, n_pred)


# ------------------------------------------------------------------------------------------------
# napari
# ------------------------------------------------------------------------------------------------
def _color_of(label: int, classes: Any) -> str:
    for c in classes or ():
        if getattr(c, "index", None) == label and getattr(c, "color", None):
            return str(c.color)
    from .methods.tdfusion import default_class_color

    return default_class_color(label)


def show_boxes(
    viewer: Any,
    boxes: Sequence[Box],
    name: str,
    *,
    classes: Any = None,
    place: Mapping[str, Any] | None = None,
    like: Any = None,
    after: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """Show boxes as a napari Shapes layer of rectangles called ``name`` (replacing one of that name).

    Edge colour per class (the method's class colours), transparent faces, the class name as text;
    features ``name``, ``class`` and ``score`` per rectangle. ``place``: the scale/translate/... of
    the layer the boxes belong to (source A), or ``like``: a 2-D layer whose transform they take (the
    Labels layer they come from). ``after``: put the layer right after this layer (the Labels
    layer) when the layer is new.
    """
    from napari.layers import Shapes

    boxes = list(boxes)
    rects = [b.rectangle() for b in boxes]
    colours = [_color_of(b.label, classes) for b in boxes]
    features = {
        "name": np.array([b.name for b in boxes], dtype=object),
        "class": np.array([b.cls for b in boxes], dtype=int),
        "score": np.array([b.score for b in boxes], dtype=float),
    }
    kw = {k: v for k, v in (place or {}).items() if v is not None}
    if like is not None and place is None:
        from .io.layers import placement_of_layer

        kw = placement_of_layer(like)
    layer = Shapes(
        rects,
        shape_type="rectangle",
        edge_color=colours if boxes else "white",
        face_color="transparent",
        edge_width=1.5,
        features=features,
        text={"string": "{name}", "anchor": "upper_left", "size": 9, "color": "white"},
        name=name,
        metadata=dict(metadata or {}),
        **kw,
    )
    layers = viewer.layers
    names = [lay.name for lay in layers]
    if name in names:
        i = names.index(name)
        del layers[i]
        layers.insert(i, layer)
    elif after is not None and after in names:
        layers.insert(names.index(after) + 1, layer)
    else:
        viewer.add_layer(layer)
    return layers[name]


def relabel(boxes: Iterable[Box], mapping: Mapping[int, int], names: Mapping[int, str] | None = None) -> list[Box]:
    """Boxes with class ids mapped (``mapping[old] = new``; unmapped ids kept), renamed from ``names``."""
    out = []
    for b in boxes:
        c = int(mapping.get(b.cls, b.cls))
        out.append(replace(b, cls=c, name=(names or {}).get(c, b.name)))
    return out
