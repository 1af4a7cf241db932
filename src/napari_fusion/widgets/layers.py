"""What the widgets read from napari layers: the layer behind a plugin proxy, a multispectral
file's band layers taken together (:class:`BandGroup`), a layer's full-resolution array, its spatial
axes and its grid, and the engine's source keywords. No Qt here beyond what napari layers bring."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

__all__ = [
    "META_KEY",
    "BandGroup",
    "band_groups",
    "grid_of",
    "is_alive",
    "layer_array",
    "same_layer",
    "source_kwargs",
    "spatial_ndim",
    "spatial_shape",
    "unwrap",
]

META_KEY = "napari_fusion"  # layer.metadata[META_KEY]: what produced a result layer


def is_alive(qobj) -> bool:
    """Whether a Qt object still exists (a closed widget's C++ side is gone)."""
    try:
        qobj.objectName()
        return True
    except RuntimeError:
        return False


def unwrap(obj):
    """The napari object behind a plugin proxy (``PublicOnlyProxy``): napari hands plugin widgets a
    proxy viewer whose layers are fresh proxies at each access, so identity means the name."""
    while hasattr(type(obj), "__wrapped__") or "Proxy" in type(obj).__name__:
        inner = getattr(obj, "__wrapped__", None)
        if inner is None or inner is obj:
            break
        obj = inner
    return obj


def same_layer(x, y) -> bool:
    """Whether two layer handles (possibly proxies) name the same layer."""
    if x is None or y is None:
        return False
    return unwrap(x) is unwrap(y)


def _meta_grid(layer):
    meta = getattr(layer, "metadata", None) or {}
    g = meta.get("grid")
    return g if (g is not None and hasattr(g, "affine") and hasattr(g, "shape")) else None


def _channel_axis(layer) -> int | None:
    """The bands axis of a layer holding a whole multi-band stack (reader metadata), else None.

    The reader records the file's ``channel_axis`` in every layer it makes; it only names an axis of
    *this* layer when the layer has one more axis than its spatial grid (bands kept together).
    """
    if isinstance(layer, BandGroup) or getattr(layer, "rgb", False):
        return None
    g = _meta_grid(layer)
    ax = (getattr(layer, "metadata", None) or {}).get("channel_axis")
    if g is None or ax is None or layer.ndim != len(g.shape) + 1:
        return None
    return int(ax) % layer.ndim


class BandGroup:
    """The band layers of one multispectral file (napari shows each band as a layer), taken together
    as one multi-band source ``(C, H, W)``, e.g. for pan-sharpening."""

    rgb = False

    def __init__(self, name: str, layers: Sequence[Any]) -> None:
        self.name = name
        self.layers = list(layers)
        self.metadata = {META_KEY: {"role": "bands", "members": [x.name for x in self.layers]}}

    @property
    def label(self) -> str:
        return f"{self.name} (all {len(self.layers)} bands)"

    @property
    def ndim(self) -> int:
        return int(self.layers[0].ndim) + 1

    def stacked(self) -> np.ndarray:
        return np.stack([np.asarray(layer_array(x)) for x in self.layers])


def band_groups(viewer) -> list[BandGroup]:
    """Groups of 2+ single-band layers that the reader split from one multi-band file."""
    from napari.layers import Image

    groups: dict[str, list] = {}
    for layer in viewer.layers:
        if not isinstance(layer, Image) or getattr(layer, "rgb", False):
            continue
        meta = layer.metadata or {}
        g = _meta_grid(layer)
        if meta.get("channel_axis") is None or g is None or layer.ndim != len(g.shape) or not meta.get("path"):
            continue
        groups.setdefault(str(meta["path"]), []).append(layer)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        words = [m.name.split() for m in members]
        prefix = " ".join(os.path.commonprefix(words)).strip()  # whole words: "ms B2 blue" -> "ms"
        out.append(BandGroup(prefix or members[0].name, members))
    return out


def layer_array(layer) -> Any:
    """A layer's full-resolution data (level 0 of a multiscale pyramid), not copied; a band group
    is stacked bands-first."""
    if isinstance(layer, BandGroup):
        return layer.stacked()
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def spatial_ndim(layer) -> int:
    """Number of spatial axes of a layer: RGB channels and a bands axis excluded."""
    if isinstance(layer, BandGroup):
        return int(layer.layers[0].ndim)
    return int(layer.ndim) - (1 if _channel_axis(layer) is not None else 0)


def spatial_shape(layer) -> tuple[int, ...]:
    """The spatial shape of a layer's full-resolution data."""
    if isinstance(layer, BandGroup):
        return spatial_shape(layer.layers[0])
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(s) for s in np.shape(data)[: layer.ndim])
    ax = _channel_axis(layer)
    if ax is not None:
        shape = shape[:ax] + shape[ax + 1 :]
    return shape


def source_kwargs(layer, prefix: str) -> dict:
    """``grid_X`` / ``rgb_X`` (and ``channel_axis_b``) keywords of the engine for a source layer."""
    kw = {f"grid_{prefix}": grid_of(layer), f"rgb_{prefix}": bool(getattr(layer, "rgb", False))}
    if prefix == "b" and (isinstance(layer, BandGroup) or _channel_axis(layer) is not None):
        kw["channel_axis_b"] = 0 if isinstance(layer, BandGroup) else _channel_axis(layer)
    return kw


def grid_of(layer):
    """Where a layer's samples lie in the world, as a :class:`napari_fusion.geometry.Grid`.

    :func:`napari_fusion.io.layers.grid_of_layer` (the one layer -> grid rule, also the console
    API's and the writer's): the layer's scale/translate/rotate/shear/affine as napari composes them,
    so what the user sees overlaid in napari is what gets fused (a layer moved by hand is fused where
    it is shown); the units come from the reader's grid when there is one. A bands axis is left out.
    """
    from ..io.layers import grid_of_layer

    if isinstance(layer, BandGroup):
        return grid_of(layer.layers[0])
    return grid_of_layer(layer, spatial_shape(layer), channel_axis=_channel_axis(layer))
