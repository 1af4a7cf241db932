"""Pieces every napari-fusion widget shares: layer pickers, method/device pickers, background tasks,
result layers placed on source A's grid, class colour maps, and the per-viewer shelf of tuned or
loaded models.

Widgets stay thin: the compute is a core generator (``engine.pipeline.fuse_steps``,
``training.finetune.finetune_steps`` ...) that yields progress; :class:`Task` runs it in a napari
thread worker (or inline when ``NAPARI_FUSION_SYNC=1``, for scripts and tests) and calls back on the
GUI thread. Nothing here touches a user's layer until a job has returned, so a failed or cancelled
job leaves the viewer as it was.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Sequence

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QColor, QStandardItemModel, QValidator
from qtpy.QtWidgets import QApplication, QComboBox, QLabel, QProgressBar, QSpinBox, QVBoxLayout, QWidget

__all__ = [
    "SYNC_ENV",
    "sync_mode",
    "notify_error",
    "notify_info",
    "error_text",
    "Task",
    "LayerCombo",
    "MethodCombo",
    "DeviceCombo",
    "ProgressBar",
    "ModelEntry",
    "ModelShelf",
    "shelf_for",
    "layer_array",
    "grid_of",
    "spatial_ndim",
    "spatial_shape",
    "fused_layer_name",
    "labels_layer_name",
    "place_image",
    "place_labels",
    "place_bands",
    "BandGroup",
    "band_groups",
    "source_kwargs",
    "labels_colormap",
    "class_features",
    "classes_of",
    "META_KEY",
    "result_kind",
    "unwrap",
    "same_layer",
    "pick_default_pair",
    "default_pair",
    "FollowDefaults",
    "is_result",
    "fused_sources",
]

SYNC_ENV = "NAPARI_FUSION_SYNC"
META_KEY = "napari_fusion"  # layer.metadata[META_KEY]: what produced a result layer


def sync_mode() -> bool:
    """True when jobs should run inline on the GUI thread (``NAPARI_FUSION_SYNC=1``)."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------------
# notifications


def error_text(err: BaseException) -> str:
    """A user-facing one-liner for an exception (KeyError messages lose their quotes)."""
    if isinstance(err, KeyError) and err.args:
        msg = str(err.args[0])
    else:
        msg = str(err)
    return msg or type(err).__name__


def notify_error(message: str) -> None:
    """Show an error in napari's notification area (and its log), never only in a terminal."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    """Show an informational napari notification."""
    from napari.utils.notifications import show_info

    show_info(message)


# --------------------------------------------------------------------------------------------------
# background jobs


class Task(QObject):
    """One background job of a widget: a generator run in a napari thread worker.

    ``yielded`` is called with each progress object, ``returned`` with the generator's return
    value, ``errored`` with the exception, ``aborted`` after :meth:`cancel` took effect and
    ``finished`` always last. All callbacks run on the GUI thread. In sync mode the generator runs
    inline (Qt events are processed between steps so a Cancel click is still seen).
    """

    def __init__(
        self,
        gen_func: Callable[[], Generator[Any, None, Any]],
        *,
        yielded: Callable[[Any], None] | None = None,
        returned: Callable[[Any], None] | None = None,
        errored: Callable[[BaseException], None] | None = None,
        aborted: Callable[[], None] | None = None,
        finished: Callable[[], None] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._gen_func = gen_func
        self._cb = {"yielded": yielded, "returned": returned, "errored": errored, "aborted": aborted, "finished": finished}
        self.worker = None
        self._running = False
        self._cancel = False

    @property
    def running(self) -> bool:
        return self._running

    def _call(self, name: str, *args) -> None:
        cb = self._cb.get(name)
        if cb is None:
            return
        try:
            cb(*args)
        except RuntimeError as err:  # the widget was closed while the job ran
            if "deleted" not in str(err):
                raise

    def start(self) -> "Task":
        self._running = True
        self._cancel = False
        if sync_mode():
            self._run_inline()
            return self
        from napari.qt.threading import create_worker

        def work():
            return (yield from self._gen_func())

        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        try:  # we report errors ourselves, with a message that names the job
            worker.errored.disconnect(worker._relay_error)
        except (AttributeError, TypeError, RuntimeError):
            pass
        worker.yielded.connect(lambda v: self._call("yielded", v))
        worker.returned.connect(lambda v: self._call("returned", v))
        worker.errored.connect(lambda e: self._call("errored", e))
        worker.aborted.connect(lambda: self._call("aborted"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return self

    def _on_finished(self) -> None:
        self._running = False
        self.worker = None
        self._call("finished")

    def _run_inline(self) -> None:
        app = QApplication.instance()
        try:
            gen = self._gen_func()
            while True:
                if self._cancel:
                    gen.close()
                    self._call("aborted")
                    break
                try:
                    value = next(gen)
                except StopIteration as stop:
                    self._call("returned", stop.value)
                    break
                self._call("yielded", value)
                if app is not None:
                    app.processEvents()
        except Exception as err:  # noqa: BLE001 - every failure becomes a notification
            self._call("errored", err)
        finally:
            self._running = False
            self._call("finished")

    def cancel(self) -> None:
        """Ask the job to stop at its next progress step (between tiles, slices or steps)."""
        self._cancel = True
        if self.worker is not None:
            self.worker.quit()


# --------------------------------------------------------------------------------------------------
# layers


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


def _alive(qobj: QObject) -> bool:
    try:
        qobj.objectName()
        return True
    except RuntimeError:
        return False


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


class TileSpinBox(QSpinBox):
    """Tile size picker with the engine's meaning everywhere: ``auto`` (:meth:`tile` None: the
    engine decides), ``never`` (0: one pass, never tiled) or ``N px`` tiles. Steps go
    auto, never, 128, 256, ... (``step``); typing a number or ``auto``/``never`` works too."""

    AUTO = -1
    WORDS = {AUTO: "auto", 0: "never"}

    def __init__(self, parent=None, *, maximum: int = 16384, step: int = 128) -> None:
        super().__init__(parent)
        self.setRange(self.AUTO, int(maximum))
        self.setSingleStep(int(step))
        self.setValue(self.AUTO)

    def tile(self) -> int | None:
        """The engine's ``tile``: None (automatic), 0 (never) or the tile side in pixels."""
        v = int(self.value())
        return None if v == self.AUTO else v

    def setTile(self, tile: int | None) -> None:  # noqa: N802 - Qt-style name next to setValue
        self.setValue(self.AUTO if tile is None else max(0, int(tile)))

    # --- display and parsing -------------------------------------------------------------------
    def textFromValue(self, value: int) -> str:  # noqa: N802 - Qt's name
        return self.WORDS.get(int(value), f"{int(value)} px")

    def _parse(self, text: str) -> int | None:
        t = text.strip().lower()
        for v, word in self.WORDS.items():
            if t == word:
                return v
        t = t.removesuffix("px").strip()
        return int(t) if t.isdigit() else None

    def valueFromText(self, text: str) -> int:  # noqa: N802 - Qt's name
        v = self._parse(text)
        return self.AUTO if v is None else v

    def validate(self, text: str, pos: int):
        t = text.strip().lower()
        v = self._parse(text)
        if v is not None and self.minimum() <= v <= self.maximum():
            state = QValidator.State.Acceptable
        elif t == "" or any(w.startswith(t) for w in self.WORDS.values()) or t.removesuffix("p").strip().isdigit() or t.endswith(" "):
            state = QValidator.State.Intermediate
        else:
            state = QValidator.State.Invalid
        like = super().validate(text, pos)  # PyQt returns (state, text, pos), PySide the state
        return (state, text, pos) if isinstance(like, tuple) else state

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt's name
        # auto -> never -> step -> 2*step ...: the words are steps of their own, sizes stay multiples
        v, step = int(self.value()), int(self.singleStep())
        for _ in range(abs(int(steps))):
            if steps > 0:
                v = 0 if v == self.AUTO else (v // step + 1) * step
            else:
                v = self.AUTO if v <= 0 else (0 if v <= step else ((v - 1) // step) * step)
        self.setValue(max(self.minimum(), min(self.maximum(), v)))


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


def _transform_kwargs(like, extra_leading: int = 0) -> dict:
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
    new = Image(data, name=name, rgb=rgb, metadata=meta, **style, **_transform_kwargs(like, extra))
    if index is None:
        viewer.add_layer(new)
    else:
        viewer.layers.insert(index, new)
    return new


def place_bands(
    viewer, name: str, bands: np.ndarray, like, group: "BandGroup | None", *, metadata: dict | None = None, grid=None
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
    new = Labels(labels, name=name, metadata=meta, opacity=0.6, **kw, **_transform_kwargs(like))
    if index is None:
        viewer.add_layer(new)
    else:
        viewer.layers.insert(index, new)
    return new


# --------------------------------------------------------------------------------------------------
# pickers


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


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of some kinds, kept current as layers come, go or are
    renamed; ``predicate`` filters further (e.g. "same dimensionality as source A").

    The combo remembers whether its choice is the user's: anything but :meth:`choose_default`
    (a click, :meth:`set_layer`, ``setCurrentIndex``) makes it so, and a widget's automatic
    defaults (:func:`pick_default_pair`, :class:`FollowDefaults`) never override it. The choice
    follows its layer when the layer is renamed or moved; when the layer is removed the combo
    falls back to an automatic choice again.
    """

    NONE = "(none)"

    def __init__(
        self,
        viewer,
        kinds: tuple[type, ...],
        *,
        predicate: Callable[[Any], bool] | None = None,
        optional: bool = False,
        groups: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer_ref = weakref.ref(viewer)
        self._kinds = kinds
        self._groups = groups
        self._predicate = predicate
        self._optional = optional
        self._objects: list = []  # the candidates behind the items, in item order (NONE excluded)
        self._auto = 0  # > 0 while the combo itself or the defaults change the choice
        self._user = False
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.currentIndexChanged.connect(self._on_index)
        ev = viewer.layers.events
        ev.inserted.connect(self._on_inserted)
        ev.removed.connect(self._on_changed)
        ev.moved.connect(self._on_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_changed)
        self.refresh()

    @property
    def viewer(self):
        return self._viewer_ref()

    @property
    def optional(self) -> bool:
        return self._optional

    @property
    def user_chosen(self) -> bool:
        """Whether the current choice was made by the user (or a script), not by the defaults."""
        return self._user

    def _on_index(self, *_) -> None:
        if not self._auto:
            self._user = True

    def set_predicate(self, predicate: Callable[[Any], bool] | None) -> None:
        self._predicate = predicate
        self.refresh()

    def _on_inserted(self, event=None) -> None:
        if not _alive(self):
            return
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self._on_changed)
        self.refresh()

    def _on_changed(self, event=None) -> None:
        if _alive(self):
            self.refresh()

    def candidates(self) -> list:
        viewer = self.viewer
        if viewer is None:
            return []
        out = []
        for layer in reversed(list(viewer.layers)):  # top of the layer list first, as napari shows it
            if not isinstance(layer, self._kinds):
                continue
            if self._predicate is not None:
                try:
                    if not self._predicate(layer):
                        continue
                except Exception:  # noqa: BLE001 - a broken layer is simply not offered
                    continue
            out.append(layer)
        if self._groups:
            for g in band_groups(viewer):
                try:
                    if self._predicate is None or self._predicate(g):
                        out.append(g)
                except Exception:  # noqa: BLE001
                    continue
        return out

    @staticmethod
    def _text(layer) -> str:
        return layer.label if isinstance(layer, BandGroup) else layer.name

    def _current_object(self):
        i = self.currentIndex() - (1 if self._optional else 0)
        return self._objects[i] if 0 <= i < len(self._objects) else None

    @staticmethod
    def _same(x, y) -> bool:
        if isinstance(x, BandGroup) or isinstance(y, BandGroup):  # groups are rebuilt at each look
            return isinstance(x, BandGroup) and isinstance(y, BandGroup) and x.name == y.name
        return same_layer(x, y)

    def refresh(self) -> None:
        current, obj = self.currentText(), self._current_object()
        cands = self.candidates()
        names = [self._text(layer) for layer in cands]
        items = ([self.NONE] if self._optional else []) + names
        offset = 1 if self._optional else 0
        same_items = items == [self.itemText(i) for i in range(self.count())]
        if same_items and all(self._same(x, y) for x, y in zip(cands, self._objects)):
            self._objects = cands
            return
        # where the current choice went: the same layer (renamed or moved), else the same name
        index = None
        if obj is not None:
            index = next((i + offset for i, c in enumerate(cands) if self._same(c, obj)), None)
        if index is None and current in items and (obj is None or current == self.NONE):
            index = items.index(current)
        lost = index is None and bool(current) and current != self.NONE
        self._auto += 1
        try:
            self.blockSignals(True)
            self._objects = cands
            if not same_items:
                self.clear()
                self.addItems(items)
            if index is not None:
                self.setCurrentIndex(index)
            elif self._optional or not items:
                self.setCurrentIndex(0 if items else -1)
            else:
                self.setCurrentIndex(0)
            self.blockSignals(False)
            if lost:  # the chosen layer is gone: the choice is automatic again
                self._user = False
            if self.currentText() != current:
                self.currentIndexChanged.emit(self.currentIndex())
        finally:
            self.blockSignals(False)
            self._auto -= 1

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        viewer = self.viewer
        if viewer is None or not name or name == self.NONE:
            return None
        if name not in viewer.layers:
            if self._groups:
                for g in band_groups(viewer):
                    if g.label == name:
                        return g
            return None
        layer = viewer.layers[name]
        return layer if isinstance(layer, self._kinds) else None

    def _select(self, layer_or_name) -> bool:
        if layer_or_name is None or layer_or_name == self.NONE:
            if not self._optional:
                return False
            self.setCurrentIndex(0)
            return True
        self.refresh()
        if isinstance(layer_or_name, str):
            i = self.findText(layer_or_name)
            if i < 0 and self._groups:  # a band group by its name ("ms"), as metadata records it
                i = next((k for k, c in enumerate(self._objects) if isinstance(c, BandGroup) and c.name == layer_or_name), -1)
                i = i + (1 if self._optional and i >= 0 else 0)
        else:
            k = next((k for k, c in enumerate(self._objects) if self._same(c, layer_or_name)), -1)
            i = k + (1 if self._optional else 0) if k >= 0 else self.findText(self._text(layer_or_name))
        if i < 0:
            return False
        self.setCurrentIndex(i)
        return True

    def set_layer(self, layer_or_name) -> bool:
        """Select a layer (object or name; None or ``NONE`` for no layer in an optional combo) as
        the user's choice; False if it is not offered."""
        ok = self._select(layer_or_name)
        if ok:
            self._user = True
        return ok

    def choose_default(self, layer_or_name, *, force: bool = False) -> bool:
        """Select a layer as an automatic default; a choice the user made is kept (unless
        ``force``, e.g. the sources recorded in a fused layer the user picked). False when not
        applied."""
        if self._user and not force:
            return False
        self._auto += 1
        try:
            ok = self._select(layer_or_name)
        finally:
            self._auto -= 1
        if ok:
            self._user = False
        return ok


def _sources_first(layers: list) -> list:
    """Layers that are not napari-fusion results (when there are any), in the same order."""
    src = [x for x in layers if not is_result(x)]
    return src or list(layers)


def _default_b(combo_b: LayerCombo, a) -> Any:
    others = [c for c in combo_b.candidates() if not same_layer(c, a)]
    groups = [c for c in others if isinstance(c, BandGroup)]
    if groups:  # a multispectral file shown as band layers: all its bands together
        return groups[0]
    singles = _sources_first([c for c in others if not isinstance(c, BandGroup)])
    return singles[-1] if singles else None  # the lowest other layer: the one just above A


def default_pair(combo_a: LayerCombo, combo_b: LayerCombo) -> None:
    """Choose the likely pair, from the layer list only (so the same whether the dock or the data
    came first): A = the bottom-most source image with a partner (readers and samples add A
    first), B = the lowest other one, or a multispectral band group (pan-sharpening). Result
    layers are passed over while there are sources. A user's choice is kept (the other combo is
    chosen to go with it); an optional combo shows ``(none)`` when there is no pair."""
    b_user = combo_b.layer() if combo_b.user_chosen else None
    if combo_a.user_chosen:
        a = combo_a.layer()
        if b_user is None:
            b = _default_b(combo_b, a) if a is not None else None  # A set to (none): no pair
            if b is not None or combo_b.optional:
                combo_b.choose_default(b)
        return
    cands = [c for c in combo_a.candidates() if not isinstance(c, BandGroup)]
    if b_user is not None:
        cands = [c for c in cands if not same_layer(c, b_user) and spatial_ndim(c) == spatial_ndim(b_user)]
    ordered = list(reversed(_sources_first(cands)))  # bottom-most first
    ordered += [c for c in reversed(cands) if not any(same_layer(c, o) for o in ordered)]
    for a in ordered:
        if b_user is not None:
            combo_a.choose_default(a)
            return
        combo_a.choose_default(a)
        combo_b.refresh()
        b = _default_b(combo_b, a)
        if b is not None:
            combo_b.choose_default(b)
            return
    # no pair: an optional combo says so; a plain one keeps its first layer (A alone is useful)
    if combo_a.optional:
        combo_a.choose_default(None)
    elif ordered:
        combo_a.choose_default(ordered[0])
    if combo_b.optional and b_user is None:
        combo_b.choose_default(None)


class FollowDefaults(QObject):
    """Runs a widget's ``pick`` (its automatic defaults) now and again whenever layers are added,
    removed or moved, so that the defaults depend on the layer list only, not on whether the dock
    or the data came first. ``pick`` uses :meth:`LayerCombo.choose_default`, which keeps the
    user's choices."""

    def __init__(self, viewer, pick: Callable[[], None], parent: QObject) -> None:
        super().__init__(parent)
        self._pick = pick
        self._busy = False
        ev = viewer.layers.events
        ev.inserted.connect(self._on_layers)
        ev.removed.connect(self._on_layers)
        ev.moved.connect(self._on_layers)
        self._on_layers()

    def apply(self, *_) -> None:
        """Pick the defaults again now (e.g. after the user chose one of the layers)."""
        self._on_layers()

    def _on_layers(self, event=None) -> None:
        if self._busy or not _alive(self):
            return
        self._busy = True
        try:
            self._pick()
        except RuntimeError as err:  # the widget was closed
            if "deleted" not in str(err):
                raise
        finally:
            self._busy = False


def pick_default_pair(combo_a: LayerCombo, combo_b: LayerCombo, *, follow: bool = True) -> None:
    """Preselect a likely pair (:func:`default_pair`) now and, with ``follow``, again whenever
    layers come, go or move (until the user chooses), so that opening the dock before the data
    gives the same defaults as opening it after."""
    if not follow:
        default_pair(combo_a, combo_b)
        return
    viewer = combo_a.viewer
    if viewer is None:
        return

    def pick() -> None:
        if _alive(combo_a) and _alive(combo_b):
            combo_a.refresh()
            combo_b.refresh()
            default_pair(combo_a, combo_b)

    follower = FollowDefaults(viewer, pick, combo_a)
    combo_a._follow_defaults = follower
    for combo in (combo_a, combo_b):  # a user's choice of one: the other goes with it
        combo.currentIndexChanged.connect(follower.apply)


@dataclass
class ModelEntry:
    """A model held in this viewer session: fine-tuned in the widget or loaded from a file."""

    label: str  # what combos and result layer names show, e.g. "tdfusion tuned"
    runner: Any
    base: str | None = None  # the shipped method it started from, when known
    info: str = ""  # one line for tooltips
    source: str = "tuned"  # "tuned" | "loaded"
    extra: dict = field(default_factory=dict)

    @property
    def segments(self) -> bool:
        return bool(classes_of(self.runner)) and (
            hasattr(self.runner, "segment") or hasattr(self.runner, "fuse_and_segment")
        )


class ModelShelf(QObject):
    """The tuned/loaded models of one viewer, offered by every widget's method combo."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[str, ModelEntry] = {}

    def add(self, entry: ModelEntry) -> ModelEntry:
        """Add a model; a taken label gets a number (``tdfusion tuned 2``)."""
        label, n = entry.label, 2
        while label in self._entries and self._entries[label].runner is not entry.runner:
            label = f"{entry.label} {n}"
            n += 1
        entry.label = label
        self._entries[label] = entry
        self.changed.emit()
        return entry

    def get(self, label: str) -> ModelEntry | None:
        return self._entries.get(label)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())


_SHELVES: "weakref.WeakKeyDictionary[Any, ModelShelf]" = weakref.WeakKeyDictionary()


def shelf_for(viewer) -> ModelShelf:
    """The model shelf of a viewer (created on first use, forgotten with the viewer)."""
    viewer = unwrap(viewer)
    shelf = _SHELVES.get(viewer)
    if shelf is None:
        shelf = _SHELVES[viewer] = ModelShelf()
    return shelf


class MethodCombo(QWidget):
    """Registry methods (filtered) and the session's models, with the one-line description of the
    current choice shown under the combo and as each item's tooltip."""

    changed = Signal()

    def __init__(
        self,
        viewer,
        *,
        method_filter: Callable[[Any], bool] | None = None,
        entry_filter: Callable[[ModelEntry], bool] | None = None,
        default: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._method_filter = method_filter or (lambda m: True)
        self._entry_filter = entry_filter or (lambda e: True)
        self._shelf = shelf_for(viewer)
        self.combo = QComboBox()
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.description.setStyleSheet("color: palette(mid); font-size: 11px;")
        self.description.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.combo)
        lay.addWidget(self.description)
        self._descriptions: dict[str, str] = {}
        self.combo.currentIndexChanged.connect(self._on_index)
        self._shelf.changed.connect(self._on_shelf)
        self.refresh()
        if not (default and self.select(default)):
            try:
                from ..methods.registry import default_method

                preferred = default_method()
            except Exception:  # noqa: BLE001
                preferred = None
            if not (preferred and self.select(preferred)):
                self._select_first_enabled()
        self._on_index()

    def _enabled(self, i: int) -> bool:
        model = self.combo.model()
        item = model.item(i) if isinstance(model, QStandardItemModel) else None
        return item is None or item.isEnabled()

    def _select_first_enabled(self) -> None:
        for i in range(self.combo.count()):
            if self._enabled(i):
                self.combo.setCurrentIndex(i)
                return

    def _on_shelf(self) -> None:
        if _alive(self):
            self.refresh()

    def methods(self) -> list:
        from ..methods.registry import list_methods

        return [m for m in list_methods() if self._method_filter(m)]

    def refresh(self) -> None:
        current = self.combo.currentText()
        self.combo.blockSignals(True)
        self.combo.clear()
        self._descriptions.clear()
        model = self.combo.model()
        for m in self.methods():
            self.combo.addItem(m.name)
            desc = m.description
            missing = missing_weights(m)
            if missing:
                desc = f"{desc} — weights not installed ({missing.name})"
                item = model.item(self.combo.count() - 1) if isinstance(model, QStandardItemModel) else None
                if item is not None:
                    item.setEnabled(False)
            self._descriptions[m.name] = desc
            model.setData(model.index(self.combo.count() - 1, 0), desc, Qt.ItemDataRole.ToolTipRole)
        for e in self._shelf.entries():
            if not self._entry_filter(e):
                continue
            self.combo.addItem(e.label)
            text = e.info or f"{e.source} model" + (f" (from {e.base})" if e.base else "")
            self._descriptions[e.label] = text
            model.setData(model.index(self.combo.count() - 1, 0), text, Qt.ItemDataRole.ToolTipRole)
        i = self.combo.findText(current)
        if i >= 0:
            self.combo.setCurrentIndex(i)
        self.combo.blockSignals(False)
        self._on_index()

    def _on_index(self, *_):
        text = self.combo.currentText()
        desc = self._descriptions.get(text, "")
        self.description.setText(desc)
        self.combo.setToolTip(desc)
        self.changed.emit()

    def select(self, label: str) -> bool:
        """Choose a method or model by label; False if it is not offered or not installed."""
        i = self.combo.findText(label)
        if i < 0 or not self._enabled(i):
            return False
        self.combo.setCurrentIndex(i)
        return True

    def label(self) -> str:
        """What the user picked, as shown (a registry name or a session model's label); "" when
        nothing usable is picked (e.g. every method lacks its weights)."""
        i = self.combo.currentIndex()
        return self.combo.currentText() if i >= 0 and self._enabled(i) else ""

    def entry(self) -> ModelEntry | None:
        """The session model picked, or None for a registry method."""
        return self._shelf.get(self.label())

    def method_spec(self):
        """What the engine takes as ``method``: a registry name or a runner object."""
        e = self.entry()
        return e.runner if e is not None else self.label()

    def base_name(self) -> str | None:
        """The shipped method behind the choice (itself for a registry method)."""
        e = self.entry()
        return e.base if e is not None else (self.label() or None)


def missing_weights(method):
    """The weights file a method needs but that is not installed, else None."""
    path = getattr(method, "weights_path", None)
    if path is None or path.is_file():
        return None
    return path


def gpu_available() -> bool:
    """Whether torch sees a CUDA or Apple MPS device."""
    try:
        import torch
    except ImportError:
        return False
    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


class DeviceCombo(QComboBox):
    """auto / CPU / GPU; GPU is greyed out when torch sees no CUDA or MPS device."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItems(["auto", "CPU", "GPU"])
        self.setToolTip("auto: GPU when one is available, else CPU")
        if not gpu_available():
            model = self.model()
            if isinstance(model, QStandardItemModel):
                item = model.item(2)
                item.setEnabled(False)
                item.setToolTip("no CUDA or MPS device found")

    def device(self) -> str:
        """The engine's device name: ``auto``, ``cpu``, or ``cuda``/``mps``."""
        text = self.currentText()
        if text == "CPU":
            return "cpu"
        if text == "GPU":
            import torch

            return "cuda" if torch.cuda.is_available() else "mps"
        return "auto"


_STAGE_WORDS = {"fuse": "fusing", "segment": "segmenting", "enhance": "enhancing", "tiles": "tile", "slices": "slice"}


def stage_text(stage: str) -> str:
    """A progress stage as the bar shows it (``"fuse"`` -> ``"fusing"``)."""
    return _STAGE_WORDS.get(stage, stage)


class ProgressBar(QProgressBar):
    """A progress bar that shows the job's stage: ``slice 12/155`` or ``tile 3/40`` while there is
    a count, and a busy (indeterminate) bar with the stage and the seconds so far while there is
    none: before the first step, during a single untiled pass (``Progress(0, 1, stage)``) and
    while the result is finished after it (``Progress(1, 1, ...)``)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from qtpy.QtCore import QElapsedTimer, QTimer

        self._busy_text: str | None = None
        self._clock = QElapsedTimer()
        self._ticker = QTimer(self)
        self._ticker.setInterval(1000)
        self._ticker.timeout.connect(self.update)
        self.reset_idle()

    def text(self) -> str:  # Qt shows no text on an indeterminate bar; this one says what runs
        if self._busy_text is None:
            return super().text()
        secs = self._clock.elapsed() // 1000 if self._clock.isValid() else 0
        text = self._busy_text.rstrip(" .…")
        return f"{text} … {secs} s" if secs >= 1 else f"{text} …"

    def busy_text(self) -> str | None:
        """The stage a busy (indeterminate) bar shows, or None while the bar counts."""
        return self._busy_text

    def _counting(self) -> None:
        self._busy_text = None
        self._ticker.stop()

    def reset_idle(self) -> None:
        self._counting()
        self.setRange(0, 1)
        self.setValue(0)
        self.setFormat("idle")
        self.setTextVisible(True)

    def busy(self, text: str) -> None:
        """An indeterminate bar showing ``text`` and the seconds since the job (or stage) began."""
        if self._busy_text is None or not self._clock.isValid():
            self._clock.start()
        self._busy_text = text
        self.setRange(0, 0)
        self.setFormat(text)
        self._ticker.start()
        self.update()

    def show_progress(self, p) -> None:
        total = max(int(getattr(p, "total", 0) or 0), 0)
        done = int(getattr(p, "done", 0) or 0)
        stage = str(getattr(p, "stage", "") or "")
        if total <= 0:
            self.busy(stage_text(stage) or "working")
            return
        if total == 1 and done <= 0:  # one pass, no tiles to count: busy with the stage
            self.busy(f"{stage_text(stage) or 'working'} (one pass)")
            return
        if total == 1 and done >= 1:  # the pass is over; the result is being finished
            self.busy("finishing")
            return
        self._counting()
        self.setRange(0, total)
        self.setValue(min(done, total))
        word = stage_text(stage)
        self.setFormat(f"{word} %v/%m" if word else "%v/%m")

    def setFormat(self, text: str) -> None:  # noqa: N802 - Qt's name; a new text ends a busy stage
        if self._busy_text is not None and text != self._busy_text and self.maximum() == 0:
            self._busy_text = text
        super().setFormat(text)
        self.update()

    def done(self, text: str = "done") -> None:
        self._counting()
        self.setRange(0, 1)
        self.setValue(1)
        self.setFormat(text)
