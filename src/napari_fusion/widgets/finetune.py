"""The Fine-tune dock widget: paint a few strokes of classes over the sources, fine-tune the
task-driven fusion on them, see the fused image and the segmentation update; reset, save and load
tuned models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    same_layer,
    META_KEY,
    DeviceCombo,
    LayerCombo,
    MethodCombo,
    ModelEntry,
    ProgressBar,
    Task,
    class_features,
    classes_of,
    error_text,
    fused_layer_name,
    labels_colormap,
    labels_layer_name,
    layer_array,
    notify_error,
    notify_info,
    pick_default_pair,
    place_image,
    place_labels,
    result_kind,
    shelf_for,
    source_kwargs,
    spatial_ndim,
    spatial_shape,
)

__all__ = ["FinetuneWidget", "FINETUNE_FAMILIES", "DEFAULT_STEPS", "DEFAULT_LR"]

FINETUNE_FAMILIES = ("TDFusion", "MultiTaskVIF")  # families with a task head to tune from strokes
DEFAULT_STEPS = 30
DEFAULT_LR = 0.0  # shown as "auto": training.finetune.auto_lr picks the rate
MODEL_FILTER = "napari-fusion model (*.safetensors);;All files (*)"


def _finetunable(method) -> bool:
    return bool(method.learned) and (method.family in FINETUNE_FAMILIES or bool(method.extra.get("finetune")))


def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _painted_class_names(layer) -> dict[int, str] | None:
    """Class names a user gave the painted Labels layer (its ``features`` index/class|name)."""
    feats = getattr(layer, "features", None)
    if feats is None or "index" not in getattr(feats, "columns", ()):
        return None
    col = "class" if "class" in feats.columns else ("name" if "name" in feats.columns else None)
    if col is None:
        return None
    return {int(i): str(n) for i, n in zip(feats["index"], feats[col]) if int(i) != 0}


def _painted_colors(layer, values) -> dict[int, str]:
    """The colours the user saw while painting each value (``#rrggbb``), so the tuned model's
    classes keep them."""
    out = {}
    for v in values:
        try:
            rgba = np.asarray(layer.colormap.map(np.array([int(v)])), dtype=float).reshape(-1)[:3]
        except Exception:  # noqa: BLE001 - an exotic colormap: keep the model's colours
            return {}
        out[int(v)] = "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02x}" for c in rgba)
    return out


def _recolor(runner, colors: dict[int, str]) -> None:
    """Give a (new, widget-owned) runner's classes the painted colours."""
    classes = tuple(getattr(runner, "classes", None) or ())
    if not classes or not colors:
        return
    from ..methods.registry import ClassInfo

    try:
        runner.classes = tuple(ClassInfo(c.index, c.name, colors.get(int(c.index), c.color)) for c in classes)
    except AttributeError:  # read-only classes: keep the model's colours
        pass


def _painted_background(layer) -> int | None:
    """The painted value a user named "background" (trains the model's class 0), if any."""
    names = _painted_class_names(layer) or {}
    hits = [v for v, n in names.items() if n.strip().lower() == "background" and v > 0]
    return hits[0] if hits else None


class FinetuneWidget(QWidget):
    """Fine-tune a task-driven model (TDFusion, MultiTaskVIF) from painted labels.

    Painted pixels (label > 0) drive the task loss; unpainted pixels (0) are ignored. The tuned
    model joins this viewer's models (offered by every widget), its fused image and segmentation
    replace the previous ones in place, Reset goes back to the shipped model, Save/Load move tuned
    models through one safetensors file.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.shelf = shelf_for(napari_viewer)
        self.task: Task | None = None
        self.last_result = None
        self.losses: list[tuple[int, float, float]] = []  # (step, task loss, fusion loss)
        self._fused_name: str | None = None  # the layers this widget writes, updated in place
        self._labels_name: str | None = None

        self.source_a = LayerCombo(napari_viewer, (Image,))
        self.source_b = LayerCombo(napari_viewer, (Image,), predicate=self._b_compatible)
        self.source_a.currentIndexChanged.connect(lambda *_: self.source_b.refresh())
        self.strokes = LayerCombo(napari_viewer, (Labels,), predicate=self._strokes_candidate)
        self.strokes.setToolTip("a Labels layer with a few painted strokes per class (0 = unpainted)")
        self.new_strokes_button = QPushButton("New strokes layer")
        self.new_strokes_button.setToolTip("add an empty Labels layer on source A's grid to paint on")
        self.model = MethodCombo(
            napari_viewer,
            method_filter=_finetunable,
            entry_filter=lambda e: hasattr(e.runner, "to_bundle"),
        )
        self.steps = QSpinBox()
        self.steps.setRange(1, 100000)
        self.steps.setValue(DEFAULT_STEPS)
        self.steps.setToolTip(
            "optimisation steps; on one CPU core a 480x640 pair takes ~2 s per step with TDFusion, "
            "~0.2 s with MultiTaskVIF, and a few steps already change the result"
        )
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(0.0, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setSpecialValueText("auto")  # shown at 0
        self.lr.setValue(DEFAULT_LR)
        self.lr.setToolTip(
            "learning rate of the fine-tuning optimiser; auto: 1e-4 for corrections to a model that already "
            "labels most strokes right, 3e-4 (TDFusion) or 1e-3 (MultiTaskVIF) for a new task"
        )
        self.device = DeviceCombo()

        self.finetune_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("run the chosen model on A + B and update the result layers")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("go back to the shipped model and its results")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("save the chosen tuned/loaded model to one .safetensors file")
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("load a napari-fusion model file (never runs code from the file)")
        self.progress = ProgressBar()
        self.loss = QLabel("task loss –   fusion loss –")
        self.loss.setStyleSheet("font-family: monospace;")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        strokes_row = QVBoxLayout()
        strokes_row.setSpacing(2)
        strokes_row.addWidget(self.strokes)
        strokes_row.addWidget(self.new_strokes_button)
        form = QFormLayout()
        form.addRow("Source A", self.source_a)
        form.addRow("Source B", self.source_b)
        form.addRow("Painted labels", strokes_row)
        form.addRow("Model", self.model)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Device", self.device)
        run_row = QHBoxLayout()
        run_row.addWidget(self.finetune_button)
        run_row.addWidget(self.cancel_button)
        model_row = QGridLayout()
        model_row.addWidget(self.apply_button, 0, 0)
        model_row.addWidget(self.reset_button, 0, 1)
        model_row.addWidget(self.save_button, 0, 2)
        model_row.addWidget(self.load_button, 0, 3)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(run_row)
        lay.addWidget(self.progress)
        lay.addWidget(self.loss)
        lay.addLayout(model_row)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.finetune_button.clicked.connect(self.finetune)
        self.cancel_button.clicked.connect(self.cancel)
        self.apply_button.clicked.connect(lambda: self.apply())
        self.reset_button.clicked.connect(self.reset)
        self.save_button.clicked.connect(lambda: self.save())
        self.load_button.clicked.connect(lambda: self.load())
        self.new_strokes_button.clicked.connect(self.new_strokes_layer)
        self.model.changed.connect(self._update_buttons)
        self._update_buttons()
        pick_default_pair(self.source_a, self.source_b)

    # ---------------------------------------------------------------------------------------------
    def _b_compatible(self, layer) -> bool:
        a = self.source_a.layer() if hasattr(self, "source_a") else None
        return a is None or (not same_layer(layer, a) and spatial_ndim(layer) == spatial_ndim(a))

    @staticmethod
    def _strokes_candidate(layer) -> bool:
        info = (getattr(layer, "metadata", None) or {}).get(META_KEY)
        return not (isinstance(info, dict) and info.get("role") == "labels")  # not a model's output

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    def _update_buttons(self) -> None:
        running = self.running
        has_model = bool(self.model.label())
        for b in (self.finetune_button, self.apply_button, self.reset_button):
            b.setEnabled(not running and has_model)
        self.save_button.setEnabled(not running and self.model.entry() is not None)
        self.load_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not has_model:
            self.status.setText("no fine-tunable model (TDFusion, MultiTaskVIF) is installed; load one")

    def current_entry(self) -> ModelEntry | None:
        """The tuned/loaded model chosen, or None when a shipped method is chosen."""
        return self.model.entry()

    def root_method(self) -> str | None:
        """The shipped method the current model started from."""
        return self.model.base_name()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.progress.setFormat("cancelling ...")

    # ---------------------------------------------------------------------------------------------
    def _sources(self, what: str):
        a, b = self.source_a.layer(), self.source_b.layer()
        if a is None or b is None:
            notify_error(f"{what} needs two image layers: choose source A and source B")
            return None
        if same_layer(a, b):
            notify_error(f"source A and source B are the same layer {a.name!r}; choose two different sources")
            return None
        try:
            kw = {**source_kwargs(a, "a"), **source_kwargs(b, "b")}
        except Exception as err:  # noqa: BLE001
            notify_error(f"{what}: {error_text(err)}")
            return None
        return a, b, kw

    def _check_strokes(self, a):
        """The painted labels as an int64 copy, or None after telling the user what is wrong."""
        layer = self.strokes.layer()
        if layer is None:
            notify_error("Fine-tune needs a Labels layer of painted strokes: click 'New strokes layer' and paint")
            return None, None
        data = np.asarray(layer_array(layer))
        if spatial_ndim(a) != 2:
            notify_error(
                f"fine-tuning works on 2-D pairs; source A {a.name!r} is {spatial_ndim(a)}-D "
                f"({_shape_text(spatial_shape(a))})"
            )
            return None, None
        if tuple(data.shape) != tuple(spatial_shape(a)):
            notify_error(
                f"painted labels {layer.name!r} are {_shape_text(data.shape)} but source A {a.name!r} is "
                f"{_shape_text(spatial_shape(a))}; paint on a Labels layer of the image's shape "
                "('New strokes layer' makes one)"
            )
            return None, None
        if not np.issubdtype(data.dtype, np.integer):
            notify_error(f"painted labels {layer.name!r} hold {data.dtype} values; expected integer labels")
            return None, None
        if data.min() < 0:
            notify_error(f"painted labels {layer.name!r} hold negative values; use 0 for unpainted, 1.. for classes")
            return None, None
        n = int(np.count_nonzero(data))
        if n == 0:
            notify_error(f"painted labels layer {layer.name!r} is empty: paint a few strokes of each class first")
            return None, None
        return data.astype(np.int64, copy=True), layer

    # ---------------------------------------------------------------------------------------------
    def finetune(self) -> Task | None:
        """Fine-tune the chosen model on the painted strokes; returns the job (None if refused)."""
        if self.running:
            return None
        src = self._sources("Fine-tune")
        if src is None:
            return None
        a, b, src_kw = src
        labels, strokes_layer = self._check_strokes(a)
        if labels is None:
            return None
        base_label = self.model.label()
        if not base_label:
            notify_error("no fine-tunable model is available")
            return None
        root = self.root_method() or base_label
        steps, lr = int(self.steps.value()), (float(self.lr.value()) or None)  # 0 = auto
        class_names = _painted_class_names(strokes_layer)
        background = _painted_background(strokes_layer)
        extra = {"background_value": background} if background is not None else {}
        device_choice = self.device.device()
        xa, xb = layer_array(a), layer_array(b)
        n_painted = int(np.count_nonzero(labels))
        entry = self.current_entry()  # read the widgets here, on the GUI thread
        base_runner = entry.runner if entry is not None else None
        painted = sorted(int(v) for v in np.unique(labels) if v > 0 and v != background)
        colors = _painted_colors(strokes_layer, painted)

        def job():
            from ..engine.device import resolve_device
            from ..engine.pipeline import fuse_steps, input_intensity_of, prepare_pair
            from ..training.finetune import finetune_steps

            device = resolve_device(device_choice)
            if base_runner is not None:
                base = base_runner
            else:
                from ..methods.registry import build_runner

                base = build_runner(base_label, device=device)
            prep = prepare_pair(xa, xb, **src_kw, input_intensity=input_intensity_of(base))
            ua, ub = prep.a, prep.b
            tuned = yield from finetune_steps(
                base, ua, ub, labels, steps=steps, lr=lr, class_names=class_names, device=device, **extra
            )
            _recolor(tuned, colors)
            result = yield from fuse_steps(xa, xb, tuned, device=device, segment=_segments(tuned), **src_kw)
            return tuned, result

        def returned(value):
            tuned, result = value
            entry = self.shelf.add(
                ModelEntry(
                    label=f"{root} tuned",
                    runner=tuned,
                    base=root,
                    info=(
                        f"{root} fine-tuned from {base_label}: {steps} steps, lr {_used_lr(tuned, lr)}, "
                        f"{n_painted} painted pixels on {a.name} + {b.name}"
                    ),
                    source="tuned",
                )
            )
            self.model.select(entry.label)
            self._show(result, a, b, entry.label, base_label)
            self.status.setText(f"fine-tuned → model {entry.label!r}; Save… keeps it")

        self.losses = []
        self.loss.setText("task loss –   fusion loss –")
        return self._start(
            job, f"fine-tuning {base_label}", returned, what=f"Fine-tuning {base_label} on {a.name!r} + {b.name!r}"
        )

    def apply(self, label: str | None = None) -> Task | None:
        """Run the chosen (or named) model on A + B and update the result layers in place."""
        if self.running:
            return None
        if label is not None and not self.model.select(label):
            notify_error(f"no model {label!r} to apply")
            return None
        src = self._sources("Apply")
        if src is None:
            return None
        a, b, src_kw = src
        label = self.model.label()
        if not label:
            notify_error("no model is available")
            return None
        spec = self.model.method_spec()
        previous = self._previous_label()
        kw = dict(src_kw, device=self.device.device())
        xa, xb = layer_array(a), layer_array(b)

        def job():
            from ..engine.pipeline import fuse_steps

            seg = _segments(spec)
            return (yield from fuse_steps(xa, xb, spec, segment=seg, **kw))

        return self._start(
            job,
            f"fusing with {label}",
            lambda result: self._show(result, a, b, label, previous),
            what=f"Fusion of {a.name!r} + {b.name!r} with {label}",
        )

    def reset(self) -> Task | None:
        """Back to the shipped model the current one started from, and its results in the layers."""
        root = self.root_method()
        if not root:
            notify_error("no shipped model to reset to")
            return None
        if not self.model.select(root):
            notify_error(f"the shipped model {root!r} is not installed")
            return None
        return self.apply()

    # ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path | None:
        """Save the chosen tuned/loaded model to one safetensors file (atomic write)."""
        entry = self.current_entry()
        if entry is None:
            notify_error("nothing to save: the shipped model comes with napari-fusion; fine-tune or load a model first")
            return None
        if not hasattr(entry.runner, "to_bundle"):
            notify_error(f"model {entry.label!r} cannot be saved (it has no weights to write)")
            return None
        if path is None:
            suggested = entry.label.replace(" ", "_") + ".safetensors"
            path, _ = QFileDialog.getSaveFileName(self, "Save tuned model", suggested, MODEL_FILTER)
            if not path:
                return None
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".safetensors")
        from ..methods.store import save_bundle

        try:
            tensors, meta = entry.runner.to_bundle()
            meta = dict(meta)
            meta.setdefault("label", entry.label)
            if entry.base:
                meta.setdefault("base", entry.base)
            if entry.info:
                meta.setdefault("description", entry.info)
            out = save_bundle(path, tensors, meta)
        except Exception as err:  # noqa: BLE001
            notify_error(f"could not save model {entry.label!r} to {path}: {error_text(err)}")
            return None
        self.status.setText(f"saved {entry.label!r} → {out}")
        notify_info(f"model {entry.label!r} saved to {out}")
        return out

    def load(self, path: str | Path | None = None) -> ModelEntry | None:
        """Load a model file into this viewer's models and choose it; a bad file changes nothing."""
        if self.running:
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load model", "", MODEL_FILTER)
            if not path:
                return None
        path = Path(path)
        from ..methods.registry import runner_from_file
        from ..methods.store import read_metadata

        try:
            from ..engine.device import resolve_device

            device = resolve_device(self.device.device())
        except ImportError:
            device = "cpu"
        try:
            meta = read_metadata(path)
            runner = runner_from_file(path, device=device)
        except Exception as err:  # noqa: BLE001 - corrupt, truncated, foreign, pickle: all refused
            notify_error(f"could not load model {path.name}: {error_text(err)}")
            return None
        label = str(meta.get("label") or path.name.split(".")[0])
        info = str(meta.get("description") or f"{meta.get('family', 'model')} loaded from {path.name}")
        entry = self.shelf.add(
            ModelEntry(label=label, runner=runner, base=meta.get("base"), info=info, source="loaded", extra={"path": str(path)})
        )
        self.model.select(entry.label)
        self._update_buttons()
        self.status.setText(f"loaded {entry.label!r} from {path}; Apply runs it on A + B")
        return entry

    def new_strokes_layer(self):
        """An empty Labels layer on source A's grid, coloured by the model's classes, ready to paint."""
        a = self.source_a.layer()
        if a is None:
            notify_error("choose source A first: the strokes layer takes its shape and position")
            return None
        from napari.layers import Labels

        from ._common import _transform_kwargs

        entry = self.current_entry()
        if entry is not None:
            classes = classes_of(entry.runner)
        else:
            from ..methods.registry import get_method

            label = self.model.label()
            extra = get_method(label).extra if label else {}
            classes = tuple(extra.get("classes") or ())
        kw = {"colormap": labels_colormap(classes), "features": class_features(classes)} if classes else {}
        name, n = "strokes", 2
        while name in self.viewer.layers:
            name, n = f"strokes {n}", n + 1
        layer = Labels(np.zeros(spatial_shape(a), np.int32), name=name, **kw, **_transform_kwargs(a))
        self.viewer.add_layer(layer)
        layer.brush_size = max(3, int(round(min(spatial_shape(a)) / 60)))
        layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.strokes.set_layer(layer)
        return layer

    # ---------------------------------------------------------------------------------------------
    def _previous_label(self) -> str | None:
        layer = self.viewer.layers[self._fused_name] if self._fused_name in self.viewer.layers else None
        info = (getattr(layer, "metadata", None) or {}).get(META_KEY) if layer is not None else None
        return info.get("method") if isinstance(info, dict) else None

    def _start(self, job, busy_text: str, on_result, *, what: str) -> Task:
        def yielded(p):
            if hasattr(p, "task_loss"):
                step, total = int(p.step), int(p.steps)
                self.losses.append((step, float(p.task_loss), float(p.fusion_loss)))
                self.progress.setRange(0, max(total, 1))
                self.progress.setValue(min(step, total))
                self.progress.setFormat("fine-tuning step %v/%m")
                secs = float(getattr(p, "seconds", 0.0) or 0.0)
                self.loss.setText(
                    f"task loss {p.task_loss:.4f}   fusion loss {p.fusion_loss:.4f}" + (f"   {secs:.0f} s" if secs else "")
                )
            else:
                self.progress.show_progress(p)

        def returned(value):
            try:
                on_result(value)
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
            self.status.setText("cancelled; model and layers unchanged")

        def finished():
            self._update_buttons()

        self.progress.busy(busy_text)
        self.status.setText("")
        self.task = Task(job, yielded=yielded, returned=returned, errored=errored, aborted=aborted, finished=finished, parent=self)
        self._update_buttons()
        self.task.start()
        self._update_buttons()
        return self.task

    def _show(self, result, a, b, label: str, previous: str | None) -> None:
        """Put a result into this widget's layers (renamed after the model that made them)."""
        self.last_result = result
        fused_prev = self._fused_name if self._fused_name in self.viewer.layers else None
        labels_prev = self._labels_name if self._labels_name in self.viewer.layers else None
        reuse_f = [fused_layer_name(p, a.name, b.name) for p in (previous, self.root_method()) if p]
        reuse_l = [labels_layer_name(p) for p in (previous, self.root_method()) if p]
        meta = {"method": label, "source_a": a.name, "source_b": b.name}
        fused = result.fused
        rgb = result_kind(fused, a) == "rgb"
        fl = place_image(
            self.viewer,
            fused_layer_name(label, a.name, b.name),
            fused,
            a,
            rgb=rgb,
            metadata={META_KEY: {**meta, "role": "fused"}},
            grid=getattr(result, "grid", None),
            reuse=reuse_f,
            layer=fused_prev,
        )
        self._fused_name = fl.name
        if getattr(result, "labels", None) is not None:
            classes = tuple(getattr(result, "classes", None) or ())
            ll = place_labels(
                self.viewer,
                labels_layer_name(label),
                result.labels,
                a,
                classes,
                metadata={META_KEY: {**meta, "role": "labels"}},
                reuse=reuse_l,
                layer=labels_prev,
            )
            self._labels_name = ll.name
        strokes = self.strokes.layer()
        if strokes is not None:
            # keep the strokes on top so the user can keep painting over the new result
            i = [x.name for x in self.viewer.layers].index(strokes.name)
            if i != len(self.viewer.layers) - 1:
                self.viewer.layers.move(i, len(self.viewer.layers))
            self.viewer.layers.selection.active = self.viewer.layers[strokes.name]


def _segments(runner) -> bool:
    if isinstance(runner, str):
        from ..methods.registry import get_method

        return get_method(runner).segments
    return bool(classes_of(runner)) and (hasattr(runner, "segment") or hasattr(runner, "fuse_and_segment"))


def _used_lr(tuned, lr: float | None) -> str:
    """The rate a run used: the one given, or what auto chose (from the tuned model's history)."""
    if lr is not None:
        return f"{lr:g}"
    history = tuned.meta.get("finetune_history") or [{}]
    used = history[-1].get("lr")
    return f"{used:g} (auto)" if isinstance(used, (int, float)) else "auto"
