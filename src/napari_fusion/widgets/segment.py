"""The Segment dock widget: run a segmenting method (or a tuned/loaded model) into a Labels layer
with the model's class names and colours."""
from __future__ import annotations

import html

from qtpy.QtWidgets import QCheckBox, QLabel, QPushButton, QWidget

from ..naming import boxes_name
from .job import JobWidget, Task, button_row, error_text
from .layers import META_KEY, layer_array, same_layer, source_kwargs
from .models import MethodCombo
from .options import DeviceCombo
from .pickers import FollowDefaults, LayerCombo, default_pair, source_combos
from .results import classes_of, fused_layer_name, is_result, labels_layer_name, place_image, place_labels, result_kind

__all__ = ["SegmentWidget", "legend_html"]


def legend_html(classes) -> str:
    """A small colour legend of classes (rich text for a QLabel)."""
    rows = []
    for c in classes:
        swatch = f'<span style="background-color:{c.color}; color:{c.color}">&#9608;&#9608;</span>'
        rows.append(f"{swatch}&nbsp;{int(c.index)}&nbsp;{html.escape(str(c.name))}")
    return "<br>".join(rows)


class SegmentWidget(JobWidget):
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
        super().__init__(napari_viewer, parent)
        from napari.layers import Image

        self.last_result = None

        self.image = LayerCombo(napari_viewer, (Image,), optional=True)
        self.image.setToolTip("image to segment alone (used when no sources are chosen)")
        self.source_a, self.source_b = source_combos(napari_viewer, (Image,), optional=True)
        self.source_a.setToolTip("with source B: fuse and segment the pair in one run")
        self.method = MethodCombo(
            napari_viewer,
            method_filter=lambda m: m.segments,
            entry_filter=lambda e: e.segments,
        )
        self.device = DeviceCombo()
        self.boxes = QCheckBox("Boxes")
        self.boxes.setToolTip("also show each object (a connected region of one class) as a box: a Shapes layer next to the labels")
        self.segment_button = QPushButton("Segment")
        self.run_buttons = [self.segment_button]
        self.legend = QLabel("")
        self.legend.setWordWrap(True)

        pair = [("Source A", self.source_a), ("Source B", self.source_b), ("or image", self.image)]
        self.dock_layout(
            [*pair, ("Method", self.method), ("Device", self.device), ("", self.boxes)],
            button_row(self.segment_button, self.cancel_button),
            self.progress,
            self.status,
            self.legend,
        )

        self.segment_button.clicked.connect(self.segment)
        self.method.changed.connect(self._show_legend)
        self.method.changed.connect(lambda: self.update_buttons())
        self._show_legend()
        self._defaults = FollowDefaults(napari_viewer, self._pick_defaults, self)
        for combo in (self.source_a, self.source_b, self.image):  # a choice of one settles the others
            combo.currentIndexChanged.connect(self._defaults.apply)
        self.update_buttons()
        if not self.method.label():
            self.status.setText("no segmenting method is installed")

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

    def can_run(self) -> bool:
        return bool(self.method.label())

    def segment(self) -> Task | None:
        """Start segmenting; returns the job (None when the input was refused)."""
        if self.running:
            return None
        label = self.method.label()
        if not label:
            return self.refuse("no segmenting method is available")
        a, b, image = self.source_a.layer(), self.source_b.layer(), self.image.layer()
        if (a is None) != (b is None):
            return self.refuse("Segment: choose both source A and source B, or neither (to segment one image)")
        if same_layer(a, b):
            return self.refuse(f"source A and source B are the same layer {a.name!r}; choose two different sources")
        pair = a is not None
        if not pair and image is None:
            return self.refuse("Segment needs an image layer, or sources A and B")
        first, second = (a, b) if pair else (image, None)
        spec = self.method.method_spec()
        try:
            kw = {**source_kwargs(first, "a"), **(source_kwargs(second, "b") if pair else {})}
            kw.update(device=self.device.device())
            if pair and self.boxes.isChecked():
                kw.update(boxes=True)  # a model's detection head, if it has one
        except Exception as err:  # noqa: BLE001
            return self.refuse(f"Segmentation of {first.name!r}: {error_text(err)}")
        xa, xb = layer_array(first), (layer_array(second) if pair else None)

        def job():  # the API's path: a pair is fused and segmented, one image only segmented
            from ..engine.pipeline import segment_steps

            return (yield from segment_steps(xa, xb, spec, **kw))

        what = f"Segmentation of {first.name!r}" + (f" + {second.name!r}" if pair else "") + f" with {label}"
        meta = {"role": "labels", "method": label, "source_a": first.name}
        if pair:
            meta["source_b"] = second.name

        return self.start_job(
            job,
            busy=f"segmenting with {label}",
            on_result=lambda result: self._show(result, first, second if pair else None, label, meta),
            what=what,
        )

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
            from ..boxes import result_boxes, show_boxes

            found = result_boxes(result, classes, shown=True)
            bname = boxes_name(label, first.name, getattr(second, "name", None))
            bl = show_boxes(self.viewer, found, bname, classes=classes, like=layer, after=layer.name, metadata={META_KEY: {**meta, "role": "boxes"}})
            shown.append(bl.name)
        if classes:
            self.legend.setText(legend_html(classes))
        self.status.setText("→ " + ", ".join(repr(s) for s in shown))
