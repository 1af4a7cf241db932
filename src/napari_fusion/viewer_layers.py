"""Results into a napari viewer: placed like source A, added or updated in place (the user's
display settings kept). Only methods of the viewer it is given are called; napari is not imported."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import naming
from .engine.pipeline import FusionResult
from .geometry import Grid
from .inputs import SourceInput

__all__ = ["placement", "show_layer", "fused_layer_name", "publish_result"]


def placement(src: SourceInput, grid: Grid) -> dict:
    """A's scale/translate (and rotate/shear/affine where not napari's defaults) for the result layer."""
    lay = src.layer
    if lay is not None:
        from .io.layers import placement_of_layer

        kw = placement_of_layer(lay)
        for key in ("rotate", "shear", "affine"):
            if np.allclose(kw[key], np.eye(kw[key].shape[0])):
                del kw[key]
        return kw
    if grid.is_identity:
        return {}
    kw = grid.layer_kwargs()
    kw.pop("units", None)
    return kw


def show_layer(viewer: Any, data: np.ndarray, name: str, kind: str, place: dict, *, rgb: bool = False, metadata: dict | None = None) -> Any:
    """Add a layer, or update the data of the layer already called ``name`` (keeps the user's display settings)."""
    layers = viewer.layers
    if name in layers:
        layer = layers[name]
        layer.data = data
        for k, v in place.items():
            try:
                setattr(layer, k, v)
            except Exception:  # pragma: no cover - a layer type without that property
                pass
        if metadata:
            layer.metadata.update(metadata)
        return layer
    if kind == "labels":
        return viewer.add_labels(data, name=name, metadata=metadata or {}, **place)
    return viewer.add_image(data, name=name, rgb=rgb, metadata=metadata or {}, **place)


def fused_layer_name(method: str, a: SourceInput, b: SourceInput) -> str:
    """The fused layer's name, ``"{method} ({a} + {b})"``."""
    return naming.fused_name(method, a.name, b.name)  # the widgets' rule too


def publish_result(viewer: Any, res: FusionResult, sa: SourceInput, sb: SourceInput, name: str | None) -> None:
    """Show a fusion result: the fused image (one layer per band for multi-band), its labels if any."""
    base = name or fused_layer_name(res.method, sa, sb)
    place = placement(sa, res.grid)
    meta = {"grid": res.grid, "method": res.method, "sources": (sa.name, sb.name)}
    fused = res.fused
    if fused.ndim == len(res.grid.shape) + 1 and fused.shape[-1] == 3:
        show_layer(viewer, fused, base, "image", place, rgb=True, metadata=meta)
    elif fused.ndim == len(res.grid.shape) + 1:  # multi-band (C, H, W): one layer per band
        for i in range(fused.shape[0]):
            show_layer(viewer, fused[i], naming.band_name(base, i), "image", place, metadata=meta)
    else:
        show_layer(viewer, fused, base, "image", place, metadata=meta)
    if res.labels is not None:
        show_layer(viewer, res.labels, naming.labels_name(res.method, sa.name, sb.name), "labels", place, metadata=meta)
