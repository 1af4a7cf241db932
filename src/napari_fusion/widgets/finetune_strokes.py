"""The painted strokes of the Fine-tune widget: reading them (labels, class names and colours as the
user painted them), checking them before a job, a new strokes layer on source A's grid, and
listening to a strokes layer's edits (for Live)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .layers import META_KEY, layer_array, spatial_ndim, spatial_shape, unwrap
from .results import class_features, labels_colormap, transform_kwargs

__all__ = [
    "StrokesWatcher",
    "add_strokes_layer",
    "painted_background",
    "painted_colors",
    "painted_labels",
    "painted_names",
    "shape_text",
]


def shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def painted_colors(layer, values) -> dict[int, str]:
    """The colours the user saw while painting each value (``#rrggbb``), so the tuned model's
    classes keep them."""
    out = {}
    for v in values:
        try:
            rgba = np.asarray(layer.colormap.map(np.array([int(v)])), dtype=float).reshape(-1)[:3]
        except Exception:  # noqa: BLE001 - an exotic colormap: keep the default colours
            return {}
        out[int(v)] = "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02x}" for c in rgba)
    return out


def painted_names(layer) -> dict[int, str] | None:
    """Class names from the strokes layer's ``features`` (what the console API reads too), without
    napari's placeholder for 0."""
    from ..api import painted_class_names

    names = painted_class_names(layer) or {}
    names = {v: n for v, n in names.items() if v != 0}
    return names or None


def painted_background(names: dict[int, str] | None) -> int | None:
    """The painted value a user named "background" (class 0 of the result), if any."""
    hits = [v for v, n in (names or {}).items() if n.strip().lower() == "background" and v > 0]
    return hits[0] if hits else None


def painted_labels(layer, a) -> np.ndarray:
    """The painted labels of ``layer`` as an int64 copy, checked against source A; a ValueError
    says what is wrong and how to fix it."""
    if layer is None:
        raise ValueError("Fine-tune needs a Labels layer of painted strokes: click 'New strokes layer' and paint")
    data = np.asarray(layer_array(layer))
    if spatial_ndim(a) != 2:
        raise ValueError(
            f"fine-tuning works on 2-D pairs; source A {a.name!r} is {spatial_ndim(a)}-D ({shape_text(spatial_shape(a))})"
        )
    if tuple(data.shape) != tuple(spatial_shape(a)):
        raise ValueError(
            f"painted labels {layer.name!r} are {shape_text(data.shape)} but source A {a.name!r} is "
            f"{shape_text(spatial_shape(a))}; paint on a Labels layer of the image's shape "
            "('New strokes layer' makes one)"
        )
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"painted labels {layer.name!r} hold {data.dtype} values; expected integer labels")
    if data.min() < 0:
        raise ValueError(f"painted labels {layer.name!r} hold negative values; use 0 for unpainted, 1.. for classes")
    values = np.unique(data)
    values = values[values > 0]
    if values.size == 0:
        raise ValueError(f"painted labels layer {layer.name!r} is empty: paint a few strokes of each class first")
    if values.size < 2:
        raise ValueError(
            f"only class {int(values[0])} is painted in {layer.name!r}; paint at least two classes "
            "(for example the object and its surroundings)"
        )
    return data.astype(np.int64, copy=True)


def add_strokes_layer(viewer, a, classes=()):
    """An empty Labels layer on source A's grid, ready to paint (added, selected, in paint mode);
    ``classes`` name and colour its values."""
    from napari.layers import Labels

    kw = {"colormap": labels_colormap(classes), "features": class_features(classes)} if classes else {}
    name, n = "strokes", 2
    while name in viewer.layers:
        name, n = f"strokes {n}", n + 1
    layer = Labels(
        np.zeros(spatial_shape(a), np.int32), name=name, metadata={META_KEY: {"role": "strokes"}}, **kw, **transform_kwargs(a)
    )
    viewer.add_layer(layer)
    layer.brush_size = max(3, int(round(min(spatial_shape(a)) / 60)))
    layer.selected_label = 1
    layer.mode = "paint"
    viewer.layers.selection.active = layer
    return layer


class StrokesWatcher:
    """Calls ``on_change`` after each edit of one strokes layer (a finished stroke, a fill, new
    data, undo); :meth:`watch` moves it to another layer (None: none)."""

    EVENTS = ("paint", "data", "set_data")

    def __init__(self, on_change: Callable[..., None]) -> None:
        self._on_change = on_change
        self.layer = None

    def watch(self, layer) -> None:
        layer = unwrap(layer) if layer is not None else None
        if layer is self.layer:
            return
        if self.layer is not None:
            for ev in self.EVENTS:
                emitter = getattr(self.layer.events, ev, None)
                if emitter is not None:
                    try:
                        emitter.disconnect(self._on_change)
                    except (TypeError, ValueError, RuntimeError):
                        pass
        self.layer = layer
        if layer is not None:
            for ev in self.EVENTS:
                emitter = getattr(layer.events, ev, None)
                if emitter is not None:
                    emitter.connect(self._on_change)
