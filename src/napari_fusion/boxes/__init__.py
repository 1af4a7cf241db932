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
Modules: :mod:`.box` (the Box, class names), :mod:`.yolo` (files), :mod:`.labels` (boxes <->
pixels), :mod:`.scoring` (mAP), :mod:`.display` (napari). Every name is imported from here.
"""
from __future__ import annotations

from .box import DEFAULT_MIN_AREA, Box, class_names_of, relabel
from .display import show_boxes
from .labels import SHOW_MIN_SCORE, boxes_from_labels, result_boxes, weak_labels
from .scoring import MapScore, box_map
from .yolo import read_class_names, read_yolo, write_class_names, write_yolo

__all__ = [
    "Box",
    "MapScore",
    "DEFAULT_MIN_AREA",
    "read_yolo",
    "write_yolo",
    "read_class_names",
    "write_class_names",
    "weak_labels",
    "result_boxes",
    "SHOW_MIN_SCORE",
    "boxes_from_labels",
    "box_map",
    "class_names_of",
    "relabel",
    "show_boxes",
]
