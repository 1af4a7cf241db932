"""Result layers: how the widgets name, place and recognise what they put into the viewer.

Results lie on source A's grid (:func:`transform_kwargs`: A's scale/translate/rotate/shear/affine)
and are named by :mod:`napari_fusion.naming` (the console API's rule too); a rerun of the same job
updates its layers in place. Segmentations get their class colours and names
(:func:`labels_colormap`, :func:`class_features`).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from qtpy.QtGui import QColor

from .layers import META_KEY, BandGroup, spatial_shape

__all__ = [
    "class_features",
    "classes_of",
    "fused_layer_name",
    "fused_sources",
    "is_result",
    "labels_colormap",
    "labels_layer_name",
    "place_bands",
    "place_image",
    "place_labels",
    "result_kind",
    "transform_kwargs",
]


def result_kind(data: np.ndarray, like) -> str:
    """How a fused array relates to source A's layer: ``"gray"``, ``"rgb"`` (last axis colour) or
    ``"bands"`` (bands-first stack, from a multi-band source B)."""
    spatial = spatial_shape(like)
    n = len(spatial)
    if data.ndim == n + 1 and tuple(data.shape[:n]) == spatial and data.shape[-1] in (3, 4):
        return "rgb"
    if data.ndim == n + 1 and tuple(data.shape[1:]) == spatial:
        return "bands"
    return "gray"


def fused_layer_name(method_label: str, a_name: str, b_name: str) -> str:
    """The name of a fusion result layer, ``"{method} ({A} + {B})"`` (:mod:`napari_fusion.naming`,
    the rule the console API uses too)."""
    from ..naming import fused_name

    return fused_name(method_label, a_name, b_name)


def labels_layer_name(method_label: str, a_name: str | None = None, b_name: str | None = None) -> str:
    """The name of a segmentation result layer, named after the job's inputs so that each job owns
    its layer: ``"{method} labels ({A} + {B})"``, ``"{method} labels ({A})"`` for one image
    (:mod:`napari_fusion.naming`). Without inputs: the bare ``"{method} labels"`` of older sessions."""
    from ..naming import labels_name

    if a_name is None:
        return f"{method_label} labels"
    return labels_name(method_label, a_name, b_name)


def transform_kwargs(like, extra_leading: int = 0) -> dict:
    """A source layer's scale/translate/rotate/shear/affine, for a result with ``extra_leading``
    non-spatial axes in front (bands)."""
    from ..io.layers import placement_of_layer

    kw = placement_of_layer(like)
    if getattr(like, "units", None):
        kw["units"] = tuple(str(u) for u in like.units)
    if extra_leading:
        n = like.ndim
        e = extra_leading

        def embed(mat: np.ndarray, size: int) -> np.ndarray:
            out = np.eye(size + e)
            out[e:, e:] = mat
            return out

        kw["scale"] = (1.0,) * e + kw["scale"]
        kw["translate"] = (0.0,) * e + kw["translate"]
        kw["rotate"] = embed(kw["rotate"], n)
        kw["shear"] = embed(kw["shear"], n) if kw["shear"].ndim == 2 else kw["shear"]
        kw["affine"] = embed(kw["affine"], n + 1)
        if "units" in kw:
            kw["units"] = ("pixel",) * e + kw["units"]
        if kw["shear"].ndim != 2:
            kw.pop("shear")
    return kw


def _index_of(viewer, name: str) -> int:
    return [x.name for x in viewer.layers].index(name)


def _find_layer(viewer, names: Iterable[str], kind: type):
    for name in names:
        if name and name in viewer.layers and isinstance(viewer.layers[name], kind):
            return viewer.layers[name]
    return None


def place_image(
    viewer,
    name: str,
    data: np.ndarray,
    like,
    *,
    rgb: bool = False,
    metadata: dict | None = None,
    reuse: Sequence[str] = (),
    layer=None,
    style: dict | None = None,
    grid=None,
):
    """Show ``data`` as an Image layer called ``name`` on ``like``'s grid.

    If a layer of that name (or one named in ``reuse``, or ``layer`` itself) exists, it is updated
    in place (``layer.data = ...``, renamed, contrast reset) so that re-running a job never piles up
    layers. A layer whose RGB-ness or dimensionality no longer fits is replaced at the same index.
    ``style``: colormap/blending/visible/opacity of a new layer. ``grid`` (the result's grid) and
    source A's reader metadata go into ``metadata`` so that File > Save keeps A's geometry
    (GeoTIFF tags, NIfTI affine).
    """
    from napari.layers import Image

    extra = max(data.ndim - like.ndim - (1 if rgb else 0), 0)
    meta = dict(metadata or {})
    if grid is not None:
        meta["grid"] = grid
    io_meta = (getattr(like, "metadata", None) or {}).get("io_meta")
    if io_meta:
        meta["io_meta"] = io_meta
    style = dict(style or {})
    target = _find_layer(viewer, [getattr(layer, "name", layer), name, *reuse], Image)
    if target is not None:
        if bool(target.rgb) == bool(rgb) and target.ndim == data.ndim - (1 if rgb else 0):
            target.data = data
            target.name = name
            target.metadata = {**dict(target.metadata), **meta}
            if not rgb:
                target.reset_contrast_limits()
            target.refresh()
            return target
        index = _index_of(viewer, target.name)
        del viewer.layers[index]
    else:
        index = None
    style.setdefault("blending", "translucent")
    if not rgb:
        style.setdefault("colormap", "gray")
    new = Image(data, name=name, rgb=rgb, metadata=meta, **style, **transform_kwargs(like, extra))
    if index is None:
        viewer.add_layer(new)
    else:
        viewer.layers.insert(index, new)
    return new


def place_bands(
    viewer, name: str, bands: np.ndarray, like, group: BandGroup | None, *, metadata: dict | None = None, grid=None
) -> list:
    """Show a fused multi-band result ``(C, H, W)`` as one layer per band, styled like the source
    band layers (colours, additive blending, visibility), so it looks like the multispectral input."""
    from ..naming import band_name

    out = []
    members = list(group.layers) if group is not None else []
    for i in range(bands.shape[0]):
        src = members[i] if i < len(members) else None
        suffix = src.name[len(group.name):].strip() if (src is not None and src.name.startswith(group.name)) else ""
        style = {}
        if src is not None:
            style = {"colormap": src.colormap.name, "blending": src.blending, "visible": src.visible}
        else:
            style = {"blending": "additive"}
        out.append(
            place_image(viewer, band_name(name, suffix or i), bands[i], like, metadata=metadata, style=style, grid=grid)
        )
    return out


def labels_colormap(classes):
    """A napari ``DirectLabelColormap`` from :class:`ClassInfo` colours; 0 stays transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    for c in classes or ():
        if int(c.index) == 0:
            continue
        q = QColor(c.color)
        colors[int(c.index)] = np.array([q.redF(), q.greenF(), q.blueF(), 1.0], np.float32)
    return DirectLabelColormap(color_dict=colors)


def class_features(classes):
    """A Labels ``features`` table (``index``, ``class``) so napari shows class names on hover."""
    import pandas as pd

    rows = sorted(((int(c.index), str(c.name)) for c in classes or ()), key=lambda r: r[0])
    if not rows or rows[0][0] != 0:
        rows.insert(0, (0, "unlabelled"))
    return pd.DataFrame({"index": [r[0] for r in rows], "class": [r[1] for r in rows]})


def classes_of(obj) -> tuple:
    """The ``ClassInfo`` tuple of a runner or a fusion result, or ``()``."""
    return tuple(getattr(obj, "classes", None) or ())


def place_labels(
    viewer,
    name: str,
    labels: np.ndarray,
    like,
    classes=(),
    *,
    metadata: dict | None = None,
    reuse: Sequence[str] = (),
    layer=None,
):
    """Show ``labels`` as a Labels layer called ``name`` on ``like``'s grid, with class colours and
    names; updates an existing layer of that name (or ``layer``) in place."""
    from napari.layers import Labels

    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int32)
    meta = dict(metadata or {})
    target = _find_layer(viewer, [getattr(layer, "name", layer), name, *reuse], Labels)
    if target is not None and target.ndim == labels.ndim:
        target.data = labels
        target.name = name
        if classes:
            target.colormap = labels_colormap(classes)
            target.features = class_features(classes)
        target.metadata = {**dict(target.metadata), **meta}
        target.refresh()
        return target
    index = None
    if target is not None:
        index = _index_of(viewer, target.name)
        del viewer.layers[index]
    kw = {"colormap": labels_colormap(classes), "features": class_features(classes)} if classes else {}
    new = Labels(labels, name=name, metadata=meta, opacity=0.6, **kw, **transform_kwargs(like))
    if index is None:
        viewer.add_layer(new)
    else:
        viewer.layers.insert(index, new)
    return new


def is_result(layer) -> bool:
    """Whether a layer is a napari-fusion result: made by a widget (``metadata[META_KEY]`` with a
    ``role``) or by the console API (``metadata["method"]``)."""
    if isinstance(layer, BandGroup):
        return False
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get(META_KEY)
    if isinstance(info, dict) and info.get("role"):
        return info.get("role") != "strokes"  # painted by the user: an input, not a result
    return "method" in meta


def fused_sources(layer) -> tuple[str, str] | None:
    """The names of the two sources a fused layer was made from (widgets and the API record them),
    or None for a layer that is not a fused pair result."""
    if layer is None or isinstance(layer, BandGroup):
        return None
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get(META_KEY)
    if isinstance(info, dict):
        if info.get("role") == "fused" and info.get("source_a") and info.get("source_b"):
            return str(info["source_a"]), str(info["source_b"])
        return None
    src = meta.get("sources")
    if "method" in meta and isinstance(src, (tuple, list)) and len(src) == 2:
        return str(src[0]), str(src[1])
    return None
