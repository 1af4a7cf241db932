"""The Segment dock widget: run a segmenting method (or a tuned/loaded model) into a Labels layer
with the model's class names and colours."""
from __future__ import annotations

import html

from qtpy.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..naming import boxes_name
from ._common import (
    same_layer,
    META_KEY,
    DeviceCombo,
    LayerCombo,
    MethodCombo,
    ProgressBar,
    Task,
    classes_of,
    error_text,
    fused_layer_name,
    labels_layer_name,
    layer_array,
    notify_error,
    FollowDefaults,
    default_pair,
    is_result,
    place_image,
    place_labels,
    result_kind,
    source_kwargs,
    spatial_ndim,
)

__all__ = ["SegmentWidget", "legend_html"]


def legend_html(classes) -> str:
    """A small colour legend of classes (rich text for a QLabel)."""
    rows = []
    for c in classes:
        swatch = f'<span style="background-color:{c.color}; color:{c.color}">&#9608;&#9608;</span>'
        rows.append(f"{swatch}&nbsp;{int(c.index)}&nbsp;{html.escape(str(c.name))}")
    return "<br>".join(rows)


class SegmentWidget(QWidget):
    """Segment an image (or a pair of sources) into ``"{method} labels ({A} + {B})"`` (or
    ``"{method} labels ({image})"``; :mod:`napari_fusion.naming`).

    With sources A and B the method fuses and segments them in one run (MultiTaskVIF's single pass,
    TDFusion's fusion then its segmenter) and both the fused layer and the Labels layer are filled;
    with an image alone it is segmented as it is. Each job owns its layers: the same method on the
    same inputs updates them in place, other inputs get their own.

    Defaults (from the layer list, whether the dock or the data came first): the likely pair as
    sources A and B, else the one image alone; kept current until the user chooses.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image

        self.viewer = napari_viewer
        self.task: Task | None = None
        self.last_result = None

        self.image = LayerCombo(napari_viewer, (Image,), optional=True)
        self.image.setToolTip("image to segment alone (used when no sources are chosen)")
        self.source_a = LayerCombo(napari_viewer, (Image,), optional=True)
        self.source_b = LayerCombo(napari_viewer, (Image,), optional=True, predicate=self._b_compatible)
        self.source_a.setToolTip("with source B: fuse and segment the pair in one run")
        self.source_a.currentIndexChanged.connect(lambda *_: self.source_b.refresh())
        self.method = MethodCombo(
            napari_viewer,
            method_filter=lambda m: m.segments,
            entry_filter=lambda e: e.segments,
        )
        self.device = DeviceCombo()
        self.boxes = QCheckBox("Boxes")
        self.boxes.setToolTip("also show each object (a connected region of one class) as a box: a Shapes layer next to the labels")
        self.segment_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = ProgressBar()
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Source A", self.source_a)
        form.addRow("Source B", self.source_b)
        form.addRow("or image", self.image)
        form.addRow("Method", self.method)
        form.addRow("Device", self.device)
        form.addRow("", self.boxes)
        buttons = QHBoxLayout()
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.legend)
        lay.addStretch(1)

        self.segment_button.clicked.connect(self.segment)
        self.cancel_button.clicked.connect(self.cancel)
        self.method.changed.connect(self._show_legend)
        self._show_legend()
        self._defaults = FollowDefaults(napari_viewer, self._pick_defaults, self)
        for combo in (self.source_a, self.source_b, self.image):  # a choice of one settles the others
            combo.currentIndexChanged.connect(self._defaults.apply)
        if not self.method.label():
            self.segment_button.setEnabled(False)
            self.status.setText("no segmenting method is installed")

    def _b_compatible(self, layer) -> bool:
        a = self.source_a.layer() if hasattr(self, "source_a") else None
        return a is None or (not same_layer(layer, a) and spatial_ndim(layer) == spatial_ndim(a))

    def _pick_defaults(self) -> None:
        """Sources A and B = the likely pair (:func:`default_pair`); with no pair, the bottom-most
        image alone. Choices the user made are kept: an image the user picked clears the automatic
        pair (a pair is segmented before an image), sources the user picked clear the image."""
        a, b, image = self.source_a, self.source_b, self.image
        for combo in (a, b, image):
            combo.refresh()
        if image.user_chosen and image.layer() is not None and not (a.user_chosen or b.user_chosen):
            a.choose_default(None)
            b.choose_default(None)
            return
        default_pair(a, b)
        if self.source_a.layer() is not None and self.source_b.layer() is not None:
            self.image.choose_default(None)
            return
        images = [x for x in self.image.candidates() if not is_result(x)] or self.image.candidates()
        self.image.choose_default(images[-1] if images else None)

    def _classes(self) -> tuple:
        entry = self.method.entry()
        if entry is not None:
            return classes_of(entry.runner)
        label = self.method.label()
        if not label:
            return ()
        from ..methods.registry import get_method

        m = get_method(label)
        classes = m.extra.get("classes") if isinstance(m.extra, dict) else None
        return tuple(classes or ())

    def _show_legend(self) -> None:
        try:
            classes = self._classes()
        except Exception:  # noqa: BLE001 - the legend is a courtesy
            classes = ()
        self.legend.setText(legend_html(classes) if classes else "")

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    def _set_running(self, running: bool) -> None:
        self.segment_button.setEnabled(not running and bool(self.method.label()))
        self.cancel_button.setEnabled(running)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.progress.setFormat("cancelling ...")

    def segment(self) -> Task | None:
        """Start segmenting; returns the job (None when the input was refused)."""
        if self.running:
            return None
        label = self.method.label()
        if not label:
            notify_error("no segmenting method is available")
            return None
        a, b, image = self.source_a.layer(), self.source_b.layer(), self.image.layer()
        if (a is None) != (b is None):
            notify_error("Segment: choose both source A and source B, or neither (to segment one image)")
            return None
        if same_layer(a, b):
            notify_error(f"source A and source B are the same layer {a.name!r}; choose two different sources")
            return None
        pair = a is not None
        if not pair and image is None:
            notify_error("Segment needs an image layer, or sources A and B")
            return None
        first, second = (a, b) if pair else (image, None)
        spec = self.method.method_spec()
        try:
            kw = {**source_kwargs(first, "a"), **(source_kwargs(second, "b") if pair else {})}
            kw.update(device=self.device.device())
        except Exception as err:  # noqa: BLE001
            notify_error(f"Segmentation of {first.name!r}: {error_text(err)}")
            return None
        xa, xb = layer_array(first), (layer_array(second) if pair else None)

        def job():  # the API's path: a pair is fused and segmented, one image only segmented
            from ..engine.pipeline import segment_steps

            return (yield from segment_steps(xa, xb, spec, **kw))

        what = f"Segmentation of {first.name!r}" + (f" + {second.name!r}" if pair else "") + f" with {label}"
        meta = {"role": "labels", "method": label, "source_a": first.name}
        if pair:
            meta["source_b"] = second.name

        def returned(result):
            try:
                self._show(result, first, second if pair else None, label, meta)
            except Exception as err:  # noqa: BLE001
                errored(err)
                return
            self.progress.done("done")

        def errored(err):
            self.progress.done("failed")
            self.status.setText(error_text(err))
            notify_error(f"{what} failed: {error_text(err)}")

        def aborted():
            self.progress.done("cancelled")
            self.status.setText("cancelled; layers unchanged")

        self._set_running(True)
        self.progress.busy(f"segmenting with {label}")
        self.status.setText("")
        self.task = Task(
            job,
            yielded=self.progress.show_progress,
            returned=returned,
            errored=errored,
            aborted=aborted,
            finished=lambda: self._set_running(False),
            parent=self,
        )
        return self.task.start()

    def _show(self, result, first, second, label: str, meta: dict) -> None:
        self.last_result = result
        if result.labels is None:
            raise ValueError(f"{label} returned no labels")
        classes = tuple(result.classes or ()) or self._classes()
        shown = []
        if second is not None:
            fused = result.fused
            rgb = result_kind(fused, first) == "rgb"
            fmeta = {META_KEY: {**meta, "role": "fused"}}
            fl = place_image(self.viewer, fused_layer_name(label, first.name, second.name), fused, first, rgb=rgb, metadata=fmeta, grid=result.grid)
            shown.append(fl.name)
        layer = place_labels(
            self.viewer, labels_layer_name(label, first.name, getattr(second, "name", None)), result.labels, first, classes,
            metadata={META_KEY: meta},
        )
        shown.append(layer.name)
        if self.boxes.isChecked() and result.labels.ndim == 2:
            from ..boxes import boxes_from_labels, show_boxes

            found = boxes_from_labels(result.labels, classes)
            bname = boxes_name(label, first.name, getattr(second, "name", None))
            bl = show_boxes(self.viewer, found, bname, classes=classes, like=layer, after=layer.name, metadata={META_KEY: {**meta, "role": "boxes"}})
            shown.append(bl.name)
        if classes:
            self.legend.setText(legend_html(classes))
        self.status.setText("→ " + ", ".join(repr(s) for s in shown))
