"""Boxes in napari: a Shapes layer of rectangles (only methods of the viewer it is given are called)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .box import Box

__all__ = ["show_boxes"]


def _color_of(label: int, classes: Any) -> str:
    for c in classes or ():
        if getattr(c, "index", None) == label and getattr(c, "color", None):
            return str(c.color)
    from ..methods.tdfusion import default_class_color

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
        from ..io.layers import placement_of_layer

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
