"""The public console API: fuse, enhance, segment, evaluate, fine-tune, load and save models.

Inputs may be NumPy (or dask/zarr/memmap) arrays, napari layers (anything with ``.data`` and
``.scale``; napari is never imported here) or file paths (read with :func:`napari_fusion.io.read_image`).
Everything goes through :mod:`napari_fusion.engine.pipeline`, the same path the CLI and the widgets use.

Example in napari's console::

    from napari_fusion import fuse, segment, evaluate, methods
    fused = fuse(viewer.layers["ir"], viewer.layers["vi"], "tdfusion", viewer=viewer)
    print(evaluate(fused, viewer.layers["ir"], viewer.layers["vi"]))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import naming
from .boxes import DEFAULT_MIN_AREA
from .engine.pipeline import (
    FusionResult,
    Progress,
    _drain,
    enhance_steps,
    fuse_steps,
    input_intensity_of,
    prepare_pair,
    resolve_runner,
    segment_steps,
)
from .geometry import Grid

__all__ = [
    "fuse",
    "enhance",
    "segment",
    "evaluate",
    "finetune",
    "load_model",
    "save_model",
    "methods",
    "detect",
    "as_input",
    "SourceInput",
]


# ------------------------------------------------------------------------------------------------
# inputs: arrays, layers, paths
# ------------------------------------------------------------------------------------------------
@dataclass
class SourceInput:
    """One source as the pipeline wants it: data, grid (or None), colour flag, bands axis, a name."""

    data: Any
    grid: Grid | None
    rgb: bool | None
    channel_axis: int | None
    name: str
    like: Any = None  # the LoadedImage it came from (to write results with its geometry)
    layer: Any = None  # the napari layer it came from


def _is_layer(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "data") and hasattr(x, "scale")


def _layer_grid(layer: Any, spatial: tuple[int, ...]) -> Grid | None:
    """The layer's grid by the one layer -> grid rule (:func:`napari_fusion.io.layers.grid_of_layer`,
    the widgets' and the writer's too: scale/translate/rotate/shear/affine as napari composes them);
    None for a layer without geometry (index space in pixels)."""
    from .io.layers import grid_of_layer

    grid = grid_of_layer(layer, spatial)
    return None if grid.is_identity else grid


def as_input(x: Any, name: str = "A") -> SourceInput:
    """Turn an array, a napari layer, a LoadedImage or a path into a :class:`SourceInput`."""
    from .io import LoadedImage, read_image

    if isinstance(x, SourceInput):
        return x
    if isinstance(x, (str, os.PathLike)):
        x = read_image(x)
    if isinstance(x, LoadedImage):
        return SourceInput(x.data, x.grid, x.rgb, x.channel_axis, x.name or name, like=x)
    if _is_layer(x):
        data = x.data
        if getattr(x, "multiscale", False):
            data = data[0]
        rgb = bool(getattr(x, "rgb", False))
        meta = getattr(x, "metadata", None) or {}
        cax = meta.get("channel_axis") if np.ndim(data) == 3 and not rgb else None
        if cax is not None and isinstance(meta.get("grid"), Grid) and meta["grid"].ndim == 3:
            cax = None  # a volume
        if cax is not None:
            cax = int(cax) % 3
            spatial = tuple(s for i, s in enumerate(data.shape) if i != cax)
        else:
            spatial = tuple(data.shape[:-1]) if rgb else tuple(data.shape)
        grid = _layer_grid(x, spatial)
        return SourceInput(data, grid, rgb, cax, str(getattr(x, "name", name)), layer=x)
    return SourceInput(x, None, None, None, name)


def _grid_kw(src: SourceInput, kw: dict, key: str) -> Grid | None:
    return kw.pop(key, None) or src.grid


# ------------------------------------------------------------------------------------------------
# viewer output
# ------------------------------------------------------------------------------------------------
def _placement(src: SourceInput, grid: Grid) -> dict:
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


def _show(viewer: Any, data: np.ndarray, name: str, kind: str, place: dict, *, rgb: bool = False, metadata: dict | None = None) -> Any:
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


def _layer_name(method: str, a: SourceInput, b: SourceInput) -> str:
    return naming.fused_name(method, a.name, b.name)  # the widgets' rule too


def _publish(viewer: Any, res: FusionResult, sa: SourceInput, sb: SourceInput, name: str | None) -> None:
    base = name or _layer_name(res.method, sa, sb)
    place = _placement(sa, res.grid)
    meta = {"grid": res.grid, "method": res.method, "sources": (sa.name, sb.name)}
    fused = res.fused
    if fused.ndim == len(res.grid.shape) + 1 and fused.shape[-1] == 3:
        _show(viewer, fused, base, "image", place, rgb=True, metadata=meta)
    elif fused.ndim == len(res.grid.shape) + 1:  # multi-band (C, H, W): one layer per band
        for i in range(fused.shape[0]):
            _show(viewer, fused[i], naming.band_name(base, i), "image", place, metadata=meta)
    else:
        _show(viewer, fused, base, "image", place, metadata=meta)
    if res.labels is not None:
        _show(viewer, res.labels, naming.labels_name(res.method, sa.name, sb.name), "labels", place, metadata=meta)


# ------------------------------------------------------------------------------------------------
# the API
# ------------------------------------------------------------------------------------------------
def fuse(
    a: Any,
    b: Any,
    method: Any = None,
    *,
    viewer: Any = None,
    device: str = "auto",
    tile: int | None = None,
    progress: Callable[[Progress], Any] | None = None,
    name: str | None = None,
    full: bool = False,
    **kw: Any,
) -> np.ndarray | FusionResult:
    """Fuse two sources; returns the fused array on A's grid (a FusionResult with ``full=True``).

    ``a``/``b``: arrays, napari layers or file paths. ``method``: a registered name (see
    :func:`methods`; None = the default), or a runner such as a fine-tuned model. With ``viewer``
    the result is shown as the Image layer ``"{method} ({a} + {b})"`` (updated in place when it
    exists), placed with A's scale/translate/affine; segmenting methods add a Labels layer.
    Other keywords go to :func:`napari_fusion.engine.pipeline.fuse_steps` (``segment``, ``overlap``,
    ``grid_a``, ``grid_b``, ``rgb_a``, ``rgb_b``). Example::

        fused = fuse("ir.png", "vi.png", "laplacian")
        res = fuse(mri, pet, "gifnet", full=True); res.fused, res.grid
    """
    sa, sb = as_input(a, "A"), as_input(b, "B")
    grid_a, grid_b = _grid_kw(sa, kw, "grid_a"), _grid_kw(sb, kw, "grid_b")
    rgb_a = kw.pop("rgb_a", sa.rgb)
    rgb_b = kw.pop("rgb_b", sb.rgb)
    cax = kw.pop("channel_axis_b", sb.channel_axis)
    res = _drain(
        fuse_steps(sa.data, sb.data, method, grid_a=grid_a, grid_b=grid_b, rgb_a=rgb_a, rgb_b=rgb_b, device=device, tile=tile,
                   channel_axis_b=cax, names=kw.pop("names", (sa.name, sb.name)), **kw),
        progress,
    )
    if viewer is not None:
        _publish(viewer, res, sa, sb, name)
    return res if full else res.fused


def enhance(
    image: Any,
    method: Any = "gifnet",
    *,
    viewer: Any = None,
    device: str = "auto",
    tile: int | None = None,
    progress: Callable[[Progress], Any] | None = None,
    name: str | None = None,
    full: bool = False,
    **kw: Any,
) -> np.ndarray | FusionResult:
    """Single-image enhancement (the image fed as both sources, or to the method's own ``enhance``).

    Example: ``better = enhance("night.png")``; with ``viewer`` adds ``"{method} enhanced ({image})"``.
    """
    src = as_input(image, "image")
    grid = kw.pop("grid", None) or src.grid
    rgb = kw.pop("rgb", src.rgb)
    res = _drain(enhance_steps(src.data, method, grid=grid, rgb=rgb, device=device, tile=tile, **kw), progress)
    if viewer is not None:
        place = _placement(src, res.grid)
        is_rgb = res.fused.ndim == len(res.grid.shape) + 1
        _show(viewer, res.fused, name or naming.enhanced_name(res.method, src.name), "image", place, rgb=is_rgb, metadata={"grid": res.grid})
    return res if full else res.fused


def segment(
    image_or_a: Any,
    b: Any = None,
    method: Any = "tdfusion-brats",
    *,
    viewer: Any = None,
    device: str = "auto",
    tile: int | None = None,
    progress: Callable[[Progress], Any] | None = None,
    name: str | None = None,
    **kw: Any,
) -> np.ndarray:
    """int32 labels from a segmenting method (``methods()`` lists which segment).

    With two sources the method fuses and segments them; with one image it is taken as the fused
    image and only segmented. With ``viewer`` a Labels layer is added (or updated). Example::

        labels = segment(flair, t1c, "tdfusion-brats")
    """
    sa = as_input(image_or_a, "A")
    sb = as_input(b, "B") if b is not None else None
    pair_kw = {} if sb is None else {"grid_b": _grid_kw(sb, kw, "grid_b"), "rgb_b": kw.pop("rgb_b", sb.rgb),
                                     "channel_axis_b": kw.pop("channel_axis_b", sb.channel_axis)}
    res = _drain(
        segment_steps(sa.data, None if sb is None else sb.data, method, grid_a=_grid_kw(sa, kw, "grid_a"),
                      rgb_a=kw.pop("rgb_a", sa.rgb), device=device, tile=tile, **pair_kw, **kw),
        progress,
    )
    labels, grid_out, mname = res.labels, res.grid, res.method
    if viewer is not None:
        label_name = name or naming.labels_name(mname, sa.name, None if sb is None else sb.name)
        _show(viewer, labels, label_name, "labels", _placement(sa, grid_out), metadata={"grid": grid_out, "method": mname})
    return labels


def _unit_y(x: np.ndarray, prepared) -> np.ndarray:
    """A result in A's range (gray, RGB or bands) -> its unit gray/Y with A's intensity mapping."""
    from . import color

    x = np.asarray(x)
    nsp = len(prepared.shape)
    if prepared.bands is not None and x.ndim == nsp + 1 and x.shape[0] == prepared.bands.shape[0]:
        u, _ = color.to_unit(x, prepared.intensity)
        return u.mean(axis=0)
    u, _ = color.to_unit(x, prepared.intensity)
    if u.ndim == nsp + 1 and u.shape[-1] in (3, 4):
        u = color.rgb_to_ycbcr(u[..., :3])[..., 0]
    if u.shape != prepared.shape:
        raise ValueError(f"fused image is {u.shape} (spatial) but source A's grid is {prepared.shape}")
    return u


PAINTED_FRACTION = 0.5  # a truth layer painted in the viewer with fewer nonzero pixels than this is strokes


def painted_truth(truth: Any) -> bool:
    """Whether a ground truth is painted strokes, whose 0 means "unpainted", not a class.

    The rule: a napari Labels layer made in the viewer (no source file in its metadata, not a
    napari-fusion result; a layer marked ``{"napari_fusion": {"role": "strokes"}}`` always counts)
    with fewer than half of its pixels painted (nonzero). Arrays and layers read from a file are
    complete label maps: their 0 is a class (background). Pass ``ignore_unpainted`` to decide it.
    """
    if not _is_layer(truth):
        return False
    meta = getattr(truth, "metadata", None) or {}
    info = meta.get("napari_fusion")
    if isinstance(info, dict) and info.get("role"):
        return info.get("role") == "strokes"
    if meta.get("path") or "method" in meta:
        return False
    data = truth.data[0] if getattr(truth, "multiscale", False) else truth.data
    arr = np.asarray(data)
    return bool(arr.size > 0 and np.count_nonzero(arr) < PAINTED_FRACTION * arr.size)


def label_scores(
    pred: Any,
    truth: Any,
    *,
    n_classes: int | None = None,
    class_names: Any = None,
    ignore_index: int | None = None,
    ignore_unpainted: bool = False,
) -> dict[str, float]:
    """IoU and Dice per class, mIoU, mDice and pixel accuracy of ``pred`` against ``truth``
    (:func:`napari_fusion.metrics.segmentation_metrics`).

    ``ignore_unpainted``: the truth is painted strokes (see :func:`painted_truth`), so its 0 pixels
    are left out and class 0 is not scored: its IoU/Dice are dropped and the means run over the
    painted classes and the classes predicted on painted pixels; pixel accuracy is the fraction of
    painted pixels predicted right.
    """
    from .metrics import segmentation_metrics

    if not ignore_unpainted:
        return segmentation_metrics(pred, truth, n_classes=n_classes, ignore_index=ignore_index, class_names=class_names)
    t = np.asarray(truth)
    if ignore_index is not None:
        t = np.where(t == ignore_index, 0, t)
    if not np.any(t):
        raise ValueError("the ground truth has no painted (nonzero) pixels to score")
    out = segmentation_metrics(pred, t, n_classes=n_classes, ignore_index=0, class_names=class_names)
    iou = [k for k in out if k.startswith("IoU/")]
    dice = [k for k in out if k.startswith("Dice/")]
    for k in (iou[0], dice[0]):  # class 0: not a class of painted strokes
        del out[k]
    for mean, keys in (("mIoU", iou[1:]), ("mDice", dice[1:])):
        vals = [out[k] for k in keys if np.isfinite(out[k])]
        out[mean] = float(np.mean(vals)) if vals else float("nan")
    return {k: out[k] for k in [*iou[1:], *dice[1:], "mIoU", "mDice", "pixel_accuracy"]}


def evaluate(
    fused: Any,
    a: Any,
    b: Any,
    *,
    labels: Any = None,
    truth: Any = None,
    n_classes: int | None = None,
    ignore_index: int | None = None,
    ignore_unpainted: bool | None = None,
    max_slices: int | None = 16,
) -> dict[str, float]:
    """Fusion metrics (EN, SD, SF, AG, MI, VIF, Qabf, SSIM, SCD) of a fused image, plus IoU/Dice if labels given.

    Sources and result are compared as the methods saw them: gray/Y on A's grid, 0..255 (rounded
    as an 8-bit file would be). Volumes: the mean over the slices where A or B is not constant, at
    most ``max_slices`` spread over the volume (None: all; :func:`napari_fusion.metrics.scored_slices`).
    ``labels`` / ``truth``: predicted and true label maps for segmentation metrics.
    ``ignore_unpainted``: leave the truth's 0 pixels out and do not score class 0 (painted strokes,
    see :func:`label_scores`); None (default) decides by :func:`painted_truth`: yes for a sparse
    Labels layer painted in the viewer, no for arrays and files. Example::

        scores = evaluate(fused, ir, vi)   # {'EN': 6.9, 'SD': 41.2, ...}
    """
    from .metrics import fusion_metrics, volume_fusion_metrics

    sa, sb, sf = as_input(a, "A"), as_input(b, "B"), as_input(fused, "fused")
    prepared = prepare_pair(sa.data, sb.data, grid_a=sa.grid, grid_b=sb.grid, rgb_a=sa.rgb, rgb_b=sb.rgb, channel_axis_b=sb.channel_axis)
    fy = _unit_y(sf.data, prepared)
    a255, b255, f255 = (np.round(np.clip(v, 0, 1) * 255.0) for v in (prepared.a, prepared.b, fy))
    if a255.ndim == 2:
        out = fusion_metrics(f255, a255, b255)
    else:  # the slices with content, at most max_slices (metrics.scored_slices: the widget's rule too)
        out = volume_fusion_metrics(f255, a255, b255, max_slices=max_slices, names=(sa.name, sb.name))
    if labels is not None and truth is not None:
        lab = np.asarray(as_input(labels, "labels").data)
        tru = np.asarray(as_input(truth, "truth").data)
        unpainted = painted_truth(truth) if ignore_unpainted is None else bool(ignore_unpainted)
        out.update(label_scores(lab, tru, n_classes=n_classes, ignore_index=ignore_index, ignore_unpainted=unpainted))
    return out


def finetune(
    model: Any,
    a: Any,
    b: Any,
    sparse_labels: Any,
    *,
    steps: int = 0,
    lr: float | None = None,
    progress: Callable[[Any], Any] | None = None,
    device: str = "auto",
    class_names: Any = None,
    class_colors: Any = None,
    **kw: Any,
) -> Any:
    """Adapt a method to painted labels (0 = unpainted); returns a NEW tuned runner.

    ``steps=0`` (the default) gives the instant result: a pixel head fitted in about a second on
    filter features of A, B and the model's fused image; the fusion is untouched. ``steps=N`` then
    runs N steps of the model's task-driven training on the painted pixels (TDFusion's bi-level loop,
    MultiTaskVIF's joint loss) and refits the head on the adapted fused image. The class table of the
    result is exactly the painted classes, named by ``class_names`` (``{value: name}``) or, for a
    napari Labels layer, by its ``features`` (a ``name`` or ``class`` column). ``a``/``b`` are brought
    onto one grid and intensity range exactly as :func:`fuse` does. ``lr=None`` chooses the rate of the
    task-driven steps (see ``training.finetune.auto_lr``). ``progress`` receives each
    ``task.loop.TuneProgress``. Example::

        tuned = finetune("tdfusion", ir, vi, viewer.layers["Labels"])        # instant
        tuned = finetune("tdfusion", ir, vi, viewer.layers["Labels"], steps=30)
        res = fuse(ir, vi, tuned, full=True); res.labels, res.classes
    """
    from .engine.device import resolve_device
    from .task.loop import tune_steps

    runner, _, _ = resolve_runner(model, device)
    sa, sb = as_input(a, "A"), as_input(b, "B")
    prepared = prepare_pair(sa.data, sb.data, grid_a=sa.grid, grid_b=sb.grid, rgb_a=sa.rgb, rgb_b=sb.rgb, channel_axis_b=sb.channel_axis,
                            input_intensity=input_intensity_of(runner), names=(sa.name, sb.name))
    if prepared.kind == "volume":
        raise ValueError("fine-tuning takes 2-D images; pick one slice of the volumes")
    lab_in = as_input(sparse_labels, "labels")
    lab = np.asarray(lab_in.data)
    if lab.shape != prepared.shape:
        raise ValueError(f"painted labels {lab_in.name!r} are {lab.shape} but source A is {prepared.shape}; paint on A's grid")
    if class_names is None and lab_in.layer is not None:
        class_names = painted_class_names(lab_in.layer)
    if class_names is not None and not isinstance(class_names, dict):
        class_names = {i: str(n) for i, n in enumerate(class_names)}
    if progress is None:  # nobody watches: no intermediate results, only the final model
        kw.setdefault("refresh_seconds", float("inf"))
    gen = tune_steps(runner, prepared.a, prepared.b, lab, steps=steps, lr=lr, class_names=class_names, class_colors=class_colors,
                     device=resolve_device(device), **kw)
    return _drain(gen, progress)


def painted_class_names(layer: Any) -> dict[int, str] | None:
    """``{value: name}`` from a Labels layer's ``features`` table (a ``name`` or ``class`` column), if any."""
    feats = getattr(layer, "features", None)
    if feats is None or len(feats) == 0:
        return None
    col = next((c for c in ("name", "class", "class_name", "label") if c in feats.columns), None)
    if col is None:
        return None
    index = feats["index"] if "index" in feats.columns else range(len(feats))
    return {int(i): str(n) for i, n in zip(index, feats[col]) if str(n) and str(n) != "nan"}


def load_model(path: str | os.PathLike, device: str = "auto") -> Any:
    """A runner rebuilt from a napari-fusion model file (``.safetensors``; never runs code from it)."""
    from .engine.device import resolve_device
    from .methods.registry import runner_from_file

    return runner_from_file(Path(path), device=resolve_device(device))


def save_model(model: Any, path: str | os.PathLike) -> Path:
    """Write a learned runner (or a learned method by name) to one model file, atomically."""
    from .methods.store import save_bundle

    if isinstance(model, str):
        model, _, _ = resolve_runner(model, "cpu")
    if not hasattr(model, "to_bundle"):
        raise TypeError(f"{getattr(model, 'name', type(model).__name__)!r} has no learned weights to save (classical method?)")
    tensors, meta = model.to_bundle()
    return save_bundle(Path(path), tensors, meta)


def methods(segmenting_only: bool = False) -> list:
    """The registered methods (name, description, family, outputs ...), in the order users see them."""
    from .methods.registry import list_methods

    return list_methods(segmenting_only=segmenting_only)


def detect(
    a: Any,
    b: Any,
    method: Any = None,
    *,
    viewer: Any = None,
    min_area: int = DEFAULT_MIN_AREA,
    device: str = "auto",
    tile: int | None = None,
    progress: Callable[[Progress], Any] | None = None,
    name: str | None = None,
    **kw: Any,
) -> list:
    """Objects as boxes: fuse and segment a pair, then one box per connected component of each class.

    Runs exactly :func:`fuse` ``(a, b, method, full=True, segment=True)`` and turns its labels
    (on A's grid, 2-D) into :class:`napari_fusion.boxes.Box` es with :func:`napari_fusion.boxes.boxes_from_labels`:
    label value ``v`` -> YOLO class ``v - 1`` named by the method's class ``v``; components under
    ``min_area`` pixels are dropped; the score is size-based (the runners give no probabilities).
    With ``viewer`` the fused Image and Labels layers of :func:`fuse` are shown and a Shapes layer
    ``"{method} boxes ({a} + {b})"`` of rectangles (edge colour per class, class name as text) is
    put next to the Labels layer, placed with A's scale/translate. Example::

        boxes = detect(ir, vi, "tdfusion-brats")
        write_yolo("found.txt", boxes, ir.shape[:2])   # from napari_fusion.boxes
    """
    from .boxes import boxes_from_labels, show_boxes

    sa, sb = as_input(a, "A"), as_input(b, "B")
    res = fuse(sa, sb, method, viewer=viewer, device=device, tile=tile, progress=progress, name=name, full=True, segment=True, **kw)
    if res.labels is None:
        raise ValueError(f"method {res.method!r} gave no labels; detect needs a segmenting method (see methods(segmenting_only=True))")
    if np.ndim(res.labels) != 2:
        raise ValueError(f"detect takes 2-D images (labels are {np.shape(res.labels)}); pick one slice of the volumes")
    boxes = boxes_from_labels(res.labels, res.classes, min_area=min_area)
    if viewer is not None:
        labels_name = naming.labels_name(res.method, sa.name, sb.name)
        meta = {"grid": res.grid, "method": res.method, "sources": (sa.name, sb.name)}
        show_boxes(viewer, boxes, naming.boxes_name(res.method, sa.name, sb.name), classes=res.classes,
                   place=_placement(sa, res.grid), after=labels_name, metadata=meta)
    return boxes
