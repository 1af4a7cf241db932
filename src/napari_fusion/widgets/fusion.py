"""The Fusion dock widget: pick two image layers and a method, fuse them into a layer that overlays
the sources (2-D images, colour images, multi-band, and whole volumes slice by slice)."""
from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..naming import enhanced_name
from ._common import (
    same_layer,
    META_KEY,
    BandGroup,
    DeviceCombo,
    LayerCombo,
    MethodCombo,
    ProgressBar,
    Task,
    TileSpinBox,
    classes_of,
    error_text,
    fused_layer_name,
    grid_of,
    labels_layer_name,
    layer_array,
    notify_error,
    missing_weights,
    pick_default_pair,
    place_bands,
    place_image,
    place_labels,
    result_kind,
    source_kwargs,
    spatial_ndim,
)

__all__ = ["FusionWidget", "ENHANCE_METHOD"]

ENHANCE_METHOD = "gifnet"  # single-image enhancement: the one method trained for it


class FusionWidget(QWidget):
    """Fuse source B into source A's grid with a registered method (or a tuned/loaded model).

    The result is an Image layer ``"{method} ({A} + {B})"`` with A's scale/translate/affine; a
    segmenting method also gives ``"{method} labels ({A} + {B})"`` (:mod:`napari_fusion.naming`).
    Each job owns its layers: running the same method on the same sources again updates them in
    place, other sources get their own. Sources A and B default to the likely pair of the layer
    list (:func:`pick_default_pair`), kept current as layers come and go until the user chooses.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image

        self.viewer = napari_viewer
        self.task: Task | None = None
        self.last_result = None  # the FusionResult of the last run (for scripts and tests)

        self.source_a = LayerCombo(napari_viewer, (Image,))
        self.source_b = LayerCombo(napari_viewer, (Image,), predicate=self._b_compatible, groups=True)
        self.source_a.setToolTip("reference source: the result lies on its grid and in its intensity range")
        self.source_b.setToolTip("second source, resampled onto A's grid when their resolutions differ")
        self.source_a.currentIndexChanged.connect(lambda *_: self.source_b.refresh())
        self.method = MethodCombo(napari_viewer)
        self.device = DeviceCombo()
        self.tile = TileSpinBox()
        self.tile.setToolTip(
            "tile size for large images, as the API's and the CLI's tile: auto (tiles above ~4 Mpx, and on the CPU "
            "above the method's preferred tile, e.g. 512 px for GIFNet), never (one pass), or N px tiles"
        )

        self.fuse_button = QPushButton("Fuse")
        self.fuse_button.setToolTip("fuse B into A's grid with the chosen method")
        self.enhance_button = QPushButton(f"Enhance A ({ENHANCE_METHOD})")
        self.enhance_button.setToolTip("single-image enhancement of source A with GIFNet")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = ProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Source A", self.source_a)
        form.addRow("Source B", self.source_b)
        form.addRow("Method", self.method)
        form.addRow("Device", self.device)
        form.addRow("Tile size", self.tile)
        buttons = QHBoxLayout()
        buttons.addWidget(self.fuse_button)
        buttons.addWidget(self.enhance_button)
        buttons.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.fuse_button.clicked.connect(self.fuse)
        self.enhance_button.clicked.connect(self.enhance)
        self.cancel_button.clicked.connect(self.cancel)
        self._check_enhance()
        pick_default_pair(self.source_a, self.source_b)

    # ---------------------------------------------------------------------------------------------
    def _b_compatible(self, layer) -> bool:
        a = self.source_a.layer() if hasattr(self, "source_a") else None
        if a is None:
            return True
        return not same_layer(layer, a) and spatial_ndim(layer) == spatial_ndim(a)

    def _check_enhance(self) -> None:
        from ..methods.registry import get_method

        try:
            missing = missing_weights(get_method(ENHANCE_METHOD))
        except KeyError:
            self.enhance_button.setEnabled(False)
            self.enhance_button.setToolTip(f"{ENHANCE_METHOD} is not part of this installation")
            return
        if missing is not None:
            self.enhance_button.setEnabled(False)
            self.enhance_button.setToolTip(f"{ENHANCE_METHOD} weights are not installed ({missing.name})")

    def _set_running(self, running: bool) -> None:
        self.fuse_button.setEnabled(not running)
        self.enhance_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self._check_enhance()

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    # ---------------------------------------------------------------------------------------------
    def fuse(self) -> Task | None:
        """Start fusing the chosen sources; returns the job (None when the input was refused)."""
        if self.running:
            return None
        a, b = self.source_a.layer(), self.source_b.layer()
        if a is None or b is None:
            notify_error("Fusion needs two image layers: choose source A and source B")
            return None
        if same_layer(a, b):
            notify_error(f"source A and source B are the same layer {a.name!r}; choose two different sources")
            return None
        label = self.method.label()
        if not label:
            notify_error("no fusion method is available")
            return None
        spec = self.method.method_spec()
        segment = self._segments(spec)
        try:
            kw = {**source_kwargs(a, "a"), **source_kwargs(b, "b")}
            xa, xb = layer_array(a), layer_array(b)
        except Exception as err:  # noqa: BLE001
            notify_error(f"Fusion of {a.name!r} and {b.name!r}: {error_text(err)}")
            return None
        kw.update(device=self.device.device(), tile=self.tile.tile(), segment=segment)

        def job():
            from ..engine.pipeline import fuse_steps

            return (yield from fuse_steps(xa, xb, spec, **kw))

        meta = {META_KEY: {"role": "fused", "method": label, "source_a": a.name, "source_b": b.name}}
        return self._start(
            job,
            f"fusing {a.name} + {b.name} with {label}",
            lambda res: self._show_fused(res, a, fused_layer_name(label, a.name, b.name), label, meta, b),
            what=f"Fusion of {a.name!r} and {b.name!r} with {label}",
        )

    def enhance(self) -> Task | None:
        """Single-image enhancement of source A (GIFNet) into ``"gifnet enhanced ({A})"``."""
        if self.running:
            return None
        a = self.source_a.layer()
        if a is None:
            notify_error("Enhance needs an image layer: choose source A")
            return None
        image = layer_array(a)
        kw = dict(device=self.device.device(), tile=self.tile.tile())
        try:
            kw.update(grid=grid_of(a), rgb=bool(getattr(a, "rgb", False)))
        except Exception as err:  # noqa: BLE001
            notify_error(f"Enhancement of {a.name!r}: {error_text(err)}")
            return None

        def job():
            from ..engine.pipeline import enhance_steps

            return (yield from enhance_steps(image, ENHANCE_METHOD, **kw))

        name = enhanced_name(ENHANCE_METHOD, a.name)
        meta = {META_KEY: {"role": "enhanced", "method": ENHANCE_METHOD, "source_a": a.name}}
        return self._start(
            job,
            f"enhancing {a.name}",
            lambda res: self._show_fused(res, a, name, ENHANCE_METHOD, meta),
            what=f"Enhancement of {a.name!r}",
        )

    def cancel(self) -> None:
        """Stop the running job between tiles/slices; layers stay as they were."""
        if self.task is not None:
            self.task.cancel()
            self.progress.setFormat("cancelling ...")

    # ---------------------------------------------------------------------------------------------
    @staticmethod
    def _segments(spec: Any) -> bool:
        if isinstance(spec, str):
            from ..methods.registry import get_method

            try:
                return get_method(spec).segments
            except KeyError:
                return False
        return bool(classes_of(spec)) and (hasattr(spec, "segment") or hasattr(spec, "fuse_and_segment"))

    def _start(self, job, busy_text: str, on_result, *, what: str) -> Task:
        self._set_running(True)
        self.progress.busy(busy_text)
        self.status.setText("")

        def returned(result):
            try:
                on_result(result)
            except Exception as err:  # noqa: BLE001 - showing the result must not crash the viewer
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

    def _show_fused(self, result, a, name: str, label: str, meta: dict, b=None) -> None:
        self.last_result = result
        fused = result.fused
        kind = result_kind(fused, a)
        rgb = kind == "rgb"
        if kind == "bands":  # multi-band B: one layer per fused band
            group = b if isinstance(b, BandGroup) else None
            shown = [x.name for x in place_bands(self.viewer, name, fused, a, group, metadata=meta, grid=result.grid)]
        else:
            shown = [place_image(self.viewer, name, fused, a, rgb=rgb, metadata=meta, grid=result.grid).name]
        if getattr(result, "labels", None) is not None:
            classes = tuple(result.classes or ()) or classes_of(self.method.entry().runner if self.method.entry() else None)
            lmeta = {META_KEY: {**meta[META_KEY], "role": "labels"}}
            b_name = meta[META_KEY].get("source_b")
            labels = place_labels(self.viewer, labels_layer_name(label, a.name, b_name), result.labels, a, classes, metadata=lmeta)
            shown.append(labels.name)
        self.status.setText("→ " + ", ".join(repr(s) for s in shown))
