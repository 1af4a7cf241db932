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
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import naming
from .boxes import DEFAULT_MIN_AREA
from .engine.pipeline import (
    FusionResult,
    Progress,
    drain,
    enhance_steps,
    fuse_steps,
    input_intensity_of,
    prepare_pair,
    resolve_runner,
    segment_steps,
)
from .evaluation import PAINTED_FRACTION, evaluate, label_scores, painted_truth  # noqa: F401 - importable from here too
from .geometry import Grid  # noqa: F401 - importable from here too
from .inputs import SourceInput, as_input, grid_kw
from .viewer_layers import fused_layer_name, placement, publish_result, show_layer

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

_layer_name = fused_layer_name  # the name tests and earlier callers use


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
    grid_a, grid_b = grid_kw(sa, kw, "grid_a"), grid_kw(sb, kw, "grid_b")
    rgb_a = kw.pop("rgb_a", sa.rgb)
    rgb_b = kw.pop("rgb_b", sb.rgb)
    cax = kw.pop("channel_axis_b", sb.channel_axis)
    res = drain(
        fuse_steps(sa.data, sb.data, method, grid_a=grid_a, grid_b=grid_b, rgb_a=rgb_a, rgb_b=rgb_b, device=device, tile=tile,
                   channel_axis_b=cax, names=kw.pop("names", (sa.name, sb.name)), **kw),
        progress,
    )
    if viewer is not None:
        publish_result(viewer, res, sa, sb, name)
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
    res = drain(enhance_steps(src.data, method, grid=grid, rgb=rgb, device=device, tile=tile, **kw), progress)
    if viewer is not None:
        place = placement(src, res.grid)
        is_rgb = res.fused.ndim == len(res.grid.shape) + 1
        show_layer(viewer, res.fused, name or naming.enhanced_name(res.method, src.name), "image", place, rgb=is_rgb, metadata={"grid": res.grid})
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
    pair_kw = {} if sb is None else {"grid_b": grid_kw(sb, kw, "grid_b"), "rgb_b": kw.pop("rgb_b", sb.rgb),
                                     "channel_axis_b": kw.pop("channel_axis_b", sb.channel_axis)}
    res = drain(
        segment_steps(sa.data, None if sb is None else sb.data, method, grid_a=grid_kw(sa, kw, "grid_a"),
                      rgb_a=kw.pop("rgb_a", sa.rgb), device=device, tile=tile, **pair_kw, **kw),
        progress,
    )
    labels, grid_out, mname = res.labels, res.grid, res.method
    if viewer is not None:
        label_name = name or naming.labels_name(mname, sa.name, None if sb is None else sb.name)
        show_layer(viewer, labels, label_name, "labels", placement(sa, grid_out), metadata={"grid": grid_out, "method": mname})
    return labels



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
    return drain(gen, progress)


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
    """Objects as boxes: fuse and segment a pair, then the objects' boxes.

    Runs exactly :func:`fuse` ``(a, b, method, full=True, segment=True)``. A model with a detection
    head (``multitaskvif-ivif``: object centres and sizes) gives its boxes, scored by the centre's
    probability. Otherwise its labels (on A's grid, 2-D) become :class:`napari_fusion.boxes.Box` es
    with :func:`napari_fusion.boxes.boxes_from_labels`: label value ``v`` -> YOLO class ``v - 1``
    named by the method's class ``v``; components under ``min_area`` pixels are dropped; the score is
    size-based.
    With ``viewer`` the fused Image and Labels layers of :func:`fuse` are shown and a Shapes layer
    ``"{method} boxes ({a} + {b})"`` of rectangles (edge colour per class, class name as text) is
    put next to the Labels layer, placed with A's scale/translate (a detection head's boxes with score
    >= ``boxes.SHOW_MIN_SCORE`` there; all of them are returned). Example::

        boxes = detect(ir, vi, "tdfusion-brats")
        write_yolo("found.txt", boxes, ir.shape[:2])   # from napari_fusion.boxes
    """
    from .boxes import result_boxes, show_boxes

    sa, sb = as_input(a, "A"), as_input(b, "B")
    res = fuse(sa, sb, method, viewer=viewer, device=device, tile=tile, progress=progress, name=name, full=True, segment=True,
               boxes=True, **kw)
    if res.labels is None:
        raise ValueError(f"method {res.method!r} gave no labels; detect needs a segmenting method (see methods(segmenting_only=True))")
    if np.ndim(res.labels) != 2:
        raise ValueError(f"detect takes 2-D images (labels are {np.shape(res.labels)}); pick one slice of the volumes")
    # a model with a detection head gives its boxes (object centres and sizes: touching objects stay
    # apart); else one box per connected component of each class of the labels
    boxes = result_boxes(res, min_area=min_area)
    if viewer is not None:
        labels_name = naming.labels_name(res.method, sa.name, sb.name)
        meta = {"grid": res.grid, "method": res.method, "sources": (sa.name, sb.name)}
        shown = boxes if res.boxes is None else result_boxes(res, shown=True)  # (components: all shown)
        show_boxes(viewer, shown, naming.boxes_name(res.method, sa.name, sb.name), classes=res.classes,
                   place=placement(sa, res.grid), after=labels_name, metadata=meta)
    return boxes
