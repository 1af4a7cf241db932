"""The Fusion dock widget: pick two image layers and a method, fuse them into a layer that overlays
the sources (2-D images, colour images, multi-band, and whole volumes slice by slice)."""
from __future__ import annotations

from qtpy.QtWidgets import QPushButton, QWidget

from ..naming import enhanced_name
from .job import JobWidget, Task, button_row, error_text
from .layers import META_KEY, BandGroup, grid_of, layer_array, same_layer, source_kwargs
from .models import MethodCombo, method_segments, missing_weights
from .options import DeviceCombo, TileSpinBox
from .pickers import pick_default_pair, source_combos
from .results import classes_of, fused_layer_name, labels_layer_name, place_bands, place_image, place_labels, result_kind

__all__ = ["FusionWidget", "ENHANCE_METHOD"]

ENHANCE_METHOD = "gifnet"  # single-image enhancement: the one method trained for it


class FusionWidget(JobWidget):
    """Fuse source B into source A's grid with a registered method (or a tuned/loaded model).

    The result is an Image layer ``"{method} ({A} + {B})"`` with A's scale/translate/affine; a
    segmenting method also gives ``"{method} labels ({A} + {B})"`` (:mod:`napari_fusion.naming`).
    Each job owns its layers: running the same method on the same sources again updates them in
    place, other sources get their own. Sources A and B default to the likely pair of the layer
    list (:func:`pick_default_pair`), kept current as layers come and go until the user chooses.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        from napari.layers import Image

        self.last_result = None  # the FusionResult of the last run (for scripts and tests)

        self.source_a, self.source_b = source_combos(napari_viewer, (Image,), groups=True)
        self.source_a.setToolTip("reference source: the result lies on its grid and in its intensity range")
        self.source_b.setToolTip("second source, resampled onto A's grid when their resolutions differ")
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
        self.run_buttons = [self.fuse_button, self.enhance_button]

        rows = [("Source A", self.source_a), ("Source B", self.source_b), ("Method", self.method), ("Device", self.device)]
        self.dock_layout(
            [*rows, ("Tile size", self.tile)],
            button_row(self.fuse_button, self.enhance_button, self.cancel_button),
            self.progress,
            self.status,
        )

        self.fuse_button.clicked.connect(self.fuse)
        self.enhance_button.clicked.connect(self.enhance)
        self._check_enhance()
        pick_default_pair(self.source_a, self.source_b)

    # ---------------------------------------------------------------------------------------------
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

    def update_buttons(self, running: bool | None = None) -> None:
        super().update_buttons(running)
        self._check_enhance()  # Enhance stays off without GIFNet's weights

    # ---------------------------------------------------------------------------------------------
    def fuse(self) -> Task | None:
        """Start fusing the chosen sources; returns the job (None when the input was refused)."""
        if self.running:
            return None
        a, b = self.source_a.layer(), self.source_b.layer()
        if a is None or b is None:
            return self.refuse("Fusion needs two image layers: choose source A and source B")
        if same_layer(a, b):
            return self.refuse(f"source A and source B are the same layer {a.name!r}; choose two different sources")
        label = self.method.label()
        if not label:
            return self.refuse("no fusion method is available")
        spec = self.method.method_spec()
        segment = method_segments(spec)
        try:
            kw = {**source_kwargs(a, "a"), **source_kwargs(b, "b")}
            xa, xb = layer_array(a), layer_array(b)
        except Exception as err:  # noqa: BLE001
            return self.refuse(f"Fusion of {a.name!r} and {b.name!r}: {error_text(err)}")
        kw.update(device=self.device.device(), tile=self.tile.tile(), segment=segment)

        def job():
            from ..engine.pipeline import fuse_steps

            return (yield from fuse_steps(xa, xb, spec, **kw))

        meta = {META_KEY: {"role": "fused", "method": label, "source_a": a.name, "source_b": b.name}}
        return self.start_job(
            job,
            busy=f"fusing {a.name} + {b.name} with {label}",
            on_result=lambda res: self._show_fused(res, a, fused_layer_name(label, a.name, b.name), label, meta, b),
            what=f"Fusion of {a.name!r} and {b.name!r} with {label}",
        )

    def enhance(self) -> Task | None:
        """Single-image enhancement of source A (GIFNet) into ``"gifnet enhanced ({A})"``."""
        if self.running:
            return None
        a = self.source_a.layer()
        if a is None:
            return self.refuse("Enhance needs an image layer: choose source A")
        image = layer_array(a)
        kw = dict(device=self.device.device(), tile=self.tile.tile())
        try:
            kw.update(grid=grid_of(a), rgb=bool(getattr(a, "rgb", False)))
        except Exception as err:  # noqa: BLE001
            return self.refuse(f"Enhancement of {a.name!r}: {error_text(err)}")

        def job():
            from ..engine.pipeline import enhance_steps

            return (yield from enhance_steps(image, ENHANCE_METHOD, **kw))

        name = enhanced_name(ENHANCE_METHOD, a.name)
        meta = {META_KEY: {"role": "enhanced", "method": ENHANCE_METHOD, "source_a": a.name}}
        return self.start_job(
            job,
            busy=f"enhancing {a.name}",
            on_result=lambda res: self._show_fused(res, a, name, ENHANCE_METHOD, meta),
            what=f"Enhancement of {a.name!r}",
        )

    # ---------------------------------------------------------------------------------------------
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
