"""Box mAP at one IoU threshold (COCO's evaluation: pycocotools, else faster-coco-eval)."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .box import Box

__all__ = ["MapScore", "box_map"]


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
