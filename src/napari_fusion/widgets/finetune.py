"""The Fine-tune dock widget: paint strokes of a few classes over a pair, and a segmentation learned
from them appears within seconds, then improves while the fusion adapts to the task.

A thin view over :func:`napari_fusion.task.loop.tune_steps` (the two-speed loop of the console
API's ``finetune``): **Fine-tune** shows the *instant* result (a pixel head on filter features of A,
B and the fused image) as soon as it is there, then, for ``Steps > 0`` on a trainable model
(TDFusion, MultiTaskVIF), refreshes the fused image and the labels every few seconds while the
fusion trains on the painted pixels. **Stop** keeps the result shown so far, **Cancel** puts the
layers and the chosen model back as they were before the click. **Live** refits the head (only) in
the background each time a stroke is finished, like ilastik's live update. The widget owns its
result layers, named after the tuned model and its inputs (``"tdfusion tuned (ir + vi)"``,
``"tdfusion tuned labels (ir + vi)"``); Reset removes them.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    META_KEY,
    DeviceCombo,
    LayerCombo,
    MethodCombo,
    ModelEntry,
    ProgressBar,
    Task,
    _alive,
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
    same_layer,
    shelf_for,
    source_kwargs,
    spatial_ndim,
    spatial_shape,
    unwrap,
)

__all__ = ["FinetuneWidget", "FINETUNE_FAMILIES", "DEFAULT_STEPS", "DEFAULT_LR", "LIVE_DELAY_MS"]

FINETUNE_FAMILIES = ("TDFusion", "MultiTaskVIF")  # families whose fusion trains on the strokes (Steps > 0)
DEFAULT_STEPS = 30
DEFAULT_LR = 0.0  # shown as "auto": training.finetune.auto_lr picks the rate
LIVE_DELAY_MS = 500  # Live: refit this long after the last finished stroke
REFRESH_SECONDS = 5.0  # while the fusion adapts: new fused image + labels at most this often
MODEL_FILTER = "napari-fusion model (*.safetensors);;All files (*)"
MADE_BY = "fine-tune"  # metadata[META_KEY]["made_by"] of the layers this widget owns


def _learned(method) -> bool:
    return bool(method.learned)


def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _painted_colors(layer, values) -> dict[int, str]:
    """The colours the user saw while painting each value (``#rrggbb``), so the tuned model's
    classes keep them."""
    out = {}
    for v in values:
        try:
            rgba = np.asarray(layer.colormap.map(np.array([int(v)])), dtype=float).reshape(-1)[:3]
        except Exception:  # noqa: BLE001 - an exotic colormap: keep the default colours
            return {}
        out[int(v)] = "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02x}" for c in rgba)
    return out


def _painted_names(layer) -> dict[int, str] | None:
    """Class names from the strokes layer's ``features`` (what the console API reads too), without
    napari's placeholder for 0."""
    from ..api import painted_class_names

    names = painted_class_names(layer) or {}
    names = {v: n for v, n in names.items() if v != 0}
    return names or None


def _painted_background(names: dict[int, str] | None) -> int | None:
    """The painted value a user named "background" (class 0 of the result), if any."""
    hits = [v for v, n in (names or {}).items() if n.strip().lower() == "background" and v > 0]
    return hits[0] if hits else None


def _trainable(runner_or_method) -> bool:
    """Whether Steps > 0 can train the fusion of this model (a shipped method or a runner)."""
    from ..task.loop import base_of

    family = getattr(runner_or_method, "family", None)
    if family is None and not isinstance(runner_or_method, str):
        family = getattr(base_of(runner_or_method), "family", None)
    return family in FINETUNE_FAMILIES


def _fingerprint(x) -> tuple:
    """A cheap identity of a source's pixels (shape, dtype and a strided sample)."""
    arr = np.asarray(x)
    step = tuple(max(1, s // 48) for s in arr.shape[:2])
    sample = np.ascontiguousarray(arr[:: step[0], :: step[1]] if arr.ndim >= 2 else arr)
    return (arr.shape, str(arr.dtype), hash(sample.tobytes()))


def _tuned_label(label: str) -> str:
    """The label of a model tuned from ``label``: ``"tdfusion tuned"`` (a tuned one keeps its stem)."""
    stem = re.sub(r" \d+$", "", label)
    return stem if stem.endswith(" tuned") else f"{label} tuned"


_WARMED: list[bool] = []


def _warm_up() -> None:
    """Fit a toy head in the background when the dock opens, so that the first click does not pay
    for what a head fit imports and initialises once per session (torch's optimisers pulled in
    ``torch._dynamo``: 2.6 s on the 2-core machine; a forest imports scikit-learn)."""
    if _WARMED:
        return
    _WARMED.append(True)

    def work() -> None:
        try:
            from ..task.head import fit_head

            feats = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
            strokes = np.zeros((8, 8), np.int32)
            strokes[:2], strokes[-2:] = 1, 2
            fit_head(feats, strokes)
        except Exception:  # noqa: BLE001 - only a warm-up
            pass

    threading.Thread(target=work, name="napari-fusion fine-tune warm-up", daemon=True).start()


class _StillProgressBar(ProgressBar):
    """The shared progress bar, busy without the moving animation: the stage and the seconds so far
    ("fitting head … 3 s", once a second) on a still bar. The moving one repaints the window
    continuously, and with a software-rendered OpenGL canvas (Xvfb, VMs, remote desktops) each
    repaint recomposes the canvas: measured, it took most of a CPU core from the instant fit (a
    first click 3.7 s instead of 11.7 s with tdfusion on the 2-core machine)."""

    def busy(self, text: str) -> None:
        super().busy(text)
        self.setRange(0, 1)
        self.setValue(0)

    def setFormat(self, text: str) -> None:  # noqa: N802 - Qt's name
        if self.busy_text() is not None and text != self.busy_text():
            self._busy_text = text
        super().setFormat(text)


class _Shown:
    """What one update puts into the layers: display fused image, labels, classes, grid."""

    def __init__(self, p, fused, grid) -> None:
        self.progress = p  # the core's TuneProgress
        self.fused = fused  # display intensities (A's range, colour back), or None
        self.grid = grid

    @property
    def labels(self):
        return self.progress.labels

    @property
    def runner(self):
        return self.progress.runner


class _Cache:
    """One model's work on one pair, kept between jobs so that Live refits only fit the head.

    Used from one worker at a time (the widget never runs two jobs that use it at once)."""

    def __init__(self) -> None:
        self.runners: dict[tuple[str, str], Any] = {}  # shipped methods built once per device
        self.key: tuple | None = None
        self.base = None  # held so that the key's id() stays this model's
        self.prepared = None
        self.tune: dict = {}  # tune_steps(cache=...): fused image, the model's labels, features

    def runner(self, label: str, device: str):
        from ..methods.registry import build_runner

        key = (label, str(device))
        if key not in self.runners:
            self.runners = {key: build_runner(label, device=device)}  # one at a time: memory
        return self.runners[key]

    def pair(self, base, xa, xb, src_kw: dict, names: tuple[str, str]):
        """(prepared pair, tune cache dict) for this model and these sources."""
        from ..engine.pipeline import input_intensity_of, prepare_pair
        from ..task.loop import base_of

        core = base_of(base)
        key = (id(core), names, _fingerprint(xa), _fingerprint(xb), repr(src_kw))
        if key != self.key:
            self.prepared = prepare_pair(xa, xb, **src_kw, input_intensity=input_intensity_of(core), names=names)
            self.key, self.base, self.tune = key, core, {}
        return self.prepared, self.tune

    def clear(self) -> None:
        self.key = self.base = self.prepared = None
        self.tune = {}


class FinetuneWidget(QWidget):
    """Fine-tune a learned fusion model on painted strokes: instant labels, then the fusion adapts.

    Painted pixels (label > 0) are the training data; unpainted pixels (0) are ignored. The tuned
    model joins this viewer's models (offered by every widget); its fused image and labels go into
    layers this widget owns (named after the tuned model and the sources); Reset removes them and
    goes back to the shipped model; Save/Load move tuned models through one safetensors file.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.shelf = shelf_for(napari_viewer)
        self.task: Task | None = None  # Fine-tune / Apply
        self.live_task: Task | None = None  # a Live refit
        self.last_result = None
        self.losses: list[tuple[int, float, float]] = []  # (step, task loss, fusion loss)
        self.updates: list[tuple[float, str]] = []  # (seconds since the click, stage) of each layer update
        self._job: dict | None = None  # the running Fine-tune: targets, snapshot, last result, outcome
        self._cache = _Cache()
        self._live_gen = 0  # newest Live request; results of older ones only show if nothing newer did
        self._live_shown = 0
        self._live_pending = False
        self._strokes_dirty = False  # strokes changed while a Fine-tune ran (Live refits after it)
        self._watched = None  # the strokes layer whose events Live listens to
        self._fused_of: dict[str, Any] = {}  # fused layer name -> the model whose fused image it shows

        self.source_a = LayerCombo(napari_viewer, (Image,))
        self.source_b = LayerCombo(napari_viewer, (Image,), predicate=self._b_compatible)
        self.source_a.currentIndexChanged.connect(lambda *_: self.source_b.refresh())
        self.strokes = LayerCombo(napari_viewer, (Labels,), predicate=self._strokes_candidate)
        self.strokes.setToolTip("a Labels layer with a few painted strokes per class (0 = unpainted)")
        self.new_strokes_button = QPushButton("New strokes layer")
        self.new_strokes_button.setToolTip("add an empty Labels layer on source A's grid to paint on")
        self.model = MethodCombo(napari_viewer, method_filter=_learned, entry_filter=lambda e: hasattr(e.runner, "fuse"))
        self.steps = QSpinBox()
        self.steps.setRange(0, 100000)
        self.steps.setValue(DEFAULT_STEPS)
        self.steps.setSpecialValueText("0 (head only)")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(0.0, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setSpecialValueText("auto")  # shown at 0
        self.lr.setValue(DEFAULT_LR)
        self.lr.setToolTip(
            "learning rate of the fusion's training steps; auto: 1e-4 for corrections to a model that already "
            "labels most strokes right, 3e-4 (TDFusion) or 1e-3 (MultiTaskVIF) for a new task"
        )
        self.device = DeviceCombo()
        self.live = QCheckBox("Live: refit as I paint")
        self.live.setToolTip(
            "after each finished stroke (0.5 s later), refit the labels on the chosen model's fused image "
            "in the background (no fusion training); painting never waits for it"
        )

        self.finetune_button = QPushButton("Fine-tune")
        self.finetune_button.setToolTip("labels from the strokes within seconds, then Steps of fusion training")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("stop and keep the model and layers as last shown")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop and put the layers and the chosen model back as before")
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("run the chosen model on A + B and show its results")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("back to the shipped model; removes the tuned result layers of this widget")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("save the chosen tuned/loaded model to one .safetensors file")
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("load a napari-fusion model file (never runs code from the file)")
        self.progress = _StillProgressBar()
        self.loss = QLabel("")
        self.loss.setWordWrap(True)
        self.loss.setStyleSheet("font-family: monospace;")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        for w in (self.loss, self.status):
            w.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        for combo in (self.source_a, self.source_b, self.strokes, self.model.combo, self.device):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
        self.progress.setMinimumWidth(60)

        strokes_box = QWidget()
        strokes_row = QVBoxLayout(strokes_box)
        strokes_row.setContentsMargins(0, 0, 0, 0)
        strokes_row.setSpacing(2)
        strokes_row.addWidget(self.strokes)
        strokes_row.addWidget(self.new_strokes_button)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Source A", self.source_a)
        form.addRow("Source B", self.source_b)
        form.addRow("Strokes", strokes_box)
        form.addRow("Model", self.model)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Device", self.device)
        form.addRow(self.live)
        run_row = QGridLayout()
        run_row.addWidget(self.finetune_button, 0, 0, 1, 2)
        run_row.addWidget(self.stop_button, 1, 0)
        run_row.addWidget(self.cancel_button, 1, 1)
        model_row = QGridLayout()
        model_row.addWidget(self.apply_button, 0, 0)
        model_row.addWidget(self.reset_button, 0, 1)
        model_row.addWidget(self.save_button, 1, 0)
        model_row.addWidget(self.load_button, 1, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(run_row)
        lay.addWidget(self.progress)
        lay.addWidget(self.loss)
        lay.addLayout(model_row)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self.live_refit)

        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.stop_button.clicked.connect(self.stop)
        self.cancel_button.clicked.connect(self.cancel)
        self.apply_button.clicked.connect(lambda: self.apply())
        self.reset_button.clicked.connect(lambda: self.reset())
        self.save_button.clicked.connect(lambda: self.save())
        self.load_button.clicked.connect(lambda: self.load())
        self.new_strokes_button.clicked.connect(self.new_strokes_layer)
        self.model.changed.connect(self._update_buttons)
        self.steps.valueChanged.connect(lambda *_: self._update_buttons())
        self.strokes.currentIndexChanged.connect(lambda *_: self._watch_strokes())
        self.live.toggled.connect(self._on_live_toggled)
        self._update_buttons()
        pick_default_pair(self.source_a, self.source_b)
        self._watch_strokes()
        _warm_up()

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
        """A Fine-tune or Apply job is running (Live refits do not count)."""
        return self.task is not None and self.task.running

    @property
    def live_running(self) -> bool:
        return self.live_task is not None and self.live_task.running

    def _model_trainable(self) -> bool:
        entry = self.model.entry()
        if entry is not None:
            return _trainable(entry.runner)
        label = self.model.label()
        if not label:
            return False
        from ..methods.registry import get_method

        try:
            return get_method(label).family in FINETUNE_FAMILIES
        except Exception:  # noqa: BLE001
            return False

    def effective_steps(self) -> int:
        """The steps a click runs: 0 (head only) for a model whose fusion cannot be trained here."""
        return int(self.steps.value()) if self._model_trainable() else 0

    def _update_buttons(self) -> None:
        running = self.running
        closing = self._job is not None and self._job.get("outcome") is not None
        has_model = bool(self.model.label())
        for b in (self.finetune_button, self.apply_button, self.reset_button):
            b.setEnabled(not running and has_model)
        self.save_button.setEnabled(not running and self.model.entry() is not None)
        self.load_button.setEnabled(not running)
        tuning = running and self._job is not None and not closing
        self.stop_button.setEnabled(tuning)
        self.cancel_button.setEnabled(running and not closing)
        trainable = self._model_trainable()
        self.steps.setEnabled(trainable and not running)
        self.lr.setEnabled(trainable and not running and self.steps.value() > 0)
        self.steps.setToolTip(
            "training steps of the fusion after the instant result (0: head only); on one CPU core a 480x640 "
            "pair takes ~2 s per step with TDFusion, ~0.2 s with MultiTaskVIF"
            if trainable
            else "this model's fusion is not trained here: Fine-tune fits the labels head only"
        )
        if not has_model:
            self.status.setText("no learned fusion model is installed; load one")

    def current_entry(self) -> ModelEntry | None:
        """The tuned/loaded model chosen, or None when a shipped method is chosen."""
        return self.model.entry()

    def root_method(self) -> str | None:
        """The shipped method the current model started from."""
        return self.model.base_name()

    # ---------------------------------------------------------------------------------------------
    def _sources(self, what: str, quiet: bool = False):
        say = (lambda m: None) if quiet else notify_error
        a, b = self.source_a.layer(), self.source_b.layer()
        if a is None or b is None:
            say(f"{what} needs two image layers: choose source A and source B")
            return None
        if same_layer(a, b):
            say(f"source A and source B are the same layer {a.name!r}; choose two different sources")
            return None
        try:
            kw = {**source_kwargs(a, "a"), **source_kwargs(b, "b")}
        except Exception as err:  # noqa: BLE001
            say(f"{what}: {error_text(err)}")
            return None
        return a, b, kw

    def _check_strokes(self, a, quiet: bool = False):
        """The painted labels as an int64 copy and their layer, or (None, message) after telling the
        user what is wrong (``quiet``: only return the message, for Live)."""

        def refuse(msg):
            if not quiet:
                notify_error(msg)
            return None, msg

        layer = self.strokes.layer()
        if layer is None:
            return refuse("Fine-tune needs a Labels layer of painted strokes: click 'New strokes layer' and paint")
        data = np.asarray(layer_array(layer))
        if spatial_ndim(a) != 2:
            return refuse(
                f"fine-tuning works on 2-D pairs; source A {a.name!r} is {spatial_ndim(a)}-D "
                f"({_shape_text(spatial_shape(a))})"
            )
        if tuple(data.shape) != tuple(spatial_shape(a)):
            return refuse(
                f"painted labels {layer.name!r} are {_shape_text(data.shape)} but source A {a.name!r} is "
                f"{_shape_text(spatial_shape(a))}; paint on a Labels layer of the image's shape "
                "('New strokes layer' makes one)"
            )
        if not np.issubdtype(data.dtype, np.integer):
            return refuse(f"painted labels {layer.name!r} hold {data.dtype} values; expected integer labels")
        if data.min() < 0:
            return refuse(f"painted labels {layer.name!r} hold negative values; use 0 for unpainted, 1.. for classes")
        values = np.unique(data)
        values = values[values > 0]
        if values.size == 0:
            return refuse(f"painted labels layer {layer.name!r} is empty: paint a few strokes of each class first")
        if values.size < 2:
            return refuse(
                f"only class {int(values[0])} is painted in {layer.name!r}; paint at least two classes "
                "(for example the object and its surroundings)"
            )
        return data.astype(np.int64, copy=True), layer

    def _request(self, what: str, quiet: bool = False) -> dict | None:
        """Everything a job needs, read from the widgets on the GUI thread (None: refused)."""
        src = self._sources(what, quiet)
        if src is None:
            return None
        a, b, src_kw = src
        labels, layer = self._check_strokes(a, quiet)
        if labels is None:
            if quiet:
                self.status.setText(f"Live: {layer}")
            return None
        label = self.model.label()
        if not label:
            if not quiet:
                notify_error("no learned fusion model is available")
            return None
        entry = self.current_entry()
        names = _painted_names(layer)
        background = _painted_background(names)
        painted = sorted(int(v) for v in np.unique(labels) if v > 0)
        ours = entry is not None and entry.source == "tuned"
        return {
            "a": a, "b": b, "src_kw": src_kw, "xa": layer_array(a), "xb": layer_array(b),
            "names": (a.name, b.name), "labels": labels, "strokes": layer.name,
            "label": label, "entry": entry, "runner": entry.runner if entry is not None else None,
            "ours": ours, "root": self.root_method() or label,
            "target": entry.label if ours else self._free_label(_tuned_label(label)),
            "class_names": names, "background": background,
            "colors": _painted_colors(layer, painted), "device": self.device.device(),
            "n_painted": int(np.count_nonzero(labels)), "n_classes": len(painted),
        }

    def _free_label(self, label: str) -> str:
        taken = {e.label for e in self.shelf.entries()}
        out, n = label, 2
        while out in taken:
            out, n = f"{label} {n}", n + 1
        return out

    def _job_gen(self, req: dict, steps: int, cache: "_Cache"):
        """The worker side of Fine-tune and Live: the core's tune_steps, each complete result made
        displayable (A's intensity range, colour back) here, off the GUI thread."""
        lr = req.get("lr")

        def gen():
            from ..engine.device import resolve_device
            from ..engine.pipeline import finish
            from ..task.loop import tune_steps

            device = resolve_device(req["device"])
            runner = req["runner"] if req["runner"] is not None else cache.runner(req["label"], device)
            prepared, tune_cache = cache.pair(runner, req["xa"], req["xb"], req["src_kw"], req["names"])
            loop = tune_steps(
                runner, prepared.a, prepared.b, req["labels"], steps=steps, lr=lr, class_names=req["class_names"],
                class_colors=req["colors"], background_value=req["background"], device=device,
                refresh_seconds=REFRESH_SECONDS, cache=tune_cache,
            )
            while True:
                try:
                    p = next(loop)
                except StopIteration as stop:
                    return stop.value
                if p.runner is not None and p.stage == "refreshed" and p.step < p.steps:
                    # the network under a refreshed result trains on after the yield: keep a snapshot,
                    # so that Stop keeps exactly what was shown
                    p.runner = p.runner.copy()
                shown = finish(p.fused, prepared) if p.fused is not None else None
                yield _Shown(p, shown, prepared.grid)

        return gen

    # ---------------------------------------------------------------------------------------------
    def finetune(self) -> Task | None:
        """Fine-tune the chosen model on the painted strokes; returns the job (None if refused)."""
        if self.running:
            return None
        req = self._request("Fine-tune")
        if req is None:
            return None
        steps = self.effective_steps()
        req["lr"] = (float(self.lr.value()) or None) if steps > 0 else None  # 0 = auto
        self._supersede_live()
        a, b = req["a"], req["b"]
        fused_name = fused_layer_name(req["target"], a.name, b.name)
        labels_name = labels_layer_name(req["target"], a.name, b.name)
        job = self._job = {
            "req": req, "steps": steps, "fused_name": fused_name, "labels_name": labels_name,
            "snapshot": self._snapshot([fused_name, labels_name]), "model_before": self.model.label(),
            "last": None, "outcome": None, "t0": time.perf_counter(),
        }
        self.losses, self.updates = [], []
        base_label = req["label"]
        if steps == 0 and int(self.steps.value()) > 0:
            note = f"{base_label}'s fusion is not trained here: labels head only"
        else:
            note = ""

        def yielded(s: _Shown):
            if self._job is not job or job["outcome"] is not None:
                return  # Stop/Cancel was clicked: nothing more is shown
            p = s.progress
            secs = float(p.seconds)
            if p.stage == "adapting":
                self.losses.append((int(p.step), float(p.task_loss), float(p.fusion_loss)))
                self.progress.show_progress(p)  # "adapting i/N"
                self.loss.setText(
                    f"step {p.step}/{p.steps}, task loss {p.task_loss:.4f}, fusion loss {p.fusion_loss:.4f} ({secs:.0f} s)"
                )
                return
            if s.labels is None:
                return
            job["last"] = s
            self._show(s, job, req)
            self.updates.append((time.perf_counter() - job["t0"], p.stage))
            if p.stage == "instant":
                self.loss.setText(f"labels from the strokes in {secs:.1f} s" + (f"; {note}" if note else ""))
                if steps > 0:
                    self.progress.busy("adapting the fusion")
            else:
                self.status.setText(f"updated at step {p.step}/{p.steps} ({secs:.0f} s); Stop keeps this result")

        def returned(value):
            if self._job is not job or job["outcome"] is not None:
                return
            if job["last"] is None:  # (the loop always yields its result first)
                errored(RuntimeError("the fine-tuning loop returned no result"))
                return
            entry = self._keep(job)
            self.progress.done("done")
            what = f"{steps} steps" if steps else "labels head"
            self.status.setText(f"fine-tuned ({what}) → model {entry.label!r}; Save… keeps it" + (f"; {note}" if note else ""))

        def errored(err):
            if self._job is job and job["outcome"] is None:
                self._restore(job)
                job["outcome"] = "failed"
            self.progress.done("failed")
            self.status.setText(f"failed; layers and model as before: {error_text(err)}")
            notify_error(f"Fine-tuning {base_label} on {a.name!r} + {b.name!r} failed: {error_text(err)}")

        def finished():
            if job["outcome"] in ("stop", "cancel"):
                self.progress.done("stopped" if job["outcome"] == "stop" else "cancelled")
            if self._job is job:
                self._job = None
            self._update_buttons()
            self._after_job()

        self.progress.busy("fitting head")
        self.loss.setText(f"fitting head … (fused image of {base_label}, filter features, pixel head)")
        self.status.setText("")
        self.task = Task(
            self._job_gen(req, steps, self._cache), yielded=yielded, returned=returned, errored=errored,
            finished=finished, parent=self,
        )
        self._update_buttons()
        self.task.start()
        self._update_buttons()
        return self.task

    def stop(self) -> None:
        """Stop the running Fine-tune and keep the model and the layers as last shown."""
        job = self._job
        if job is None or job["outcome"] is not None or not self.running:
            return
        if job["last"] is None:  # nothing shown yet: nothing to keep
            self.cancel()
            return
        job["outcome"] = "stop"
        entry = self._keep(job)
        p = job["last"].progress
        at = f"step {p.step}/{p.steps}" if p.stage != "instant" else "the instant result"
        self.status.setText(f"stopped at {at} → model {entry.label!r}; Save… keeps it")
        self.progress.setFormat("stopping …")
        self.task.cancel()
        self._update_buttons()

    def cancel(self) -> None:
        """Stop the running job; a Fine-tune puts the layers and the chosen model back as before."""
        if self.task is None or not self.running:
            return
        job = self._job
        if job is not None:
            if job["outcome"] is not None:
                return
            job["outcome"] = "cancel"
            self._restore(job)
            self.status.setText("cancelled; layers and model as before")
        self.task.cancel()
        self.progress.setFormat("cancelling …")
        self._update_buttons()

    # ---------------------------------------------------------------------------------------------
    def _snapshot(self, names) -> dict:
        """What Cancel puts back: each target layer's data and look, or None (made by the job)."""
        out = {}
        for name in names:
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                item = {"data": layer.data, "metadata": dict(layer.metadata)}
                if hasattr(layer, "selected_label"):
                    item.update(data=np.array(layer.data, copy=True), colormap=layer.colormap, features=layer.features.copy())
                out[name] = item
            else:
                out[name] = None
        return out

    def _restore(self, job: dict) -> None:
        for name, item in job["snapshot"].items():
            self._fused_of.pop(name, None)
            here = name in self.viewer.layers
            if item is None:
                if here:
                    self.viewer.layers.remove(name)
                continue
            if not here:
                continue
            layer = self.viewer.layers[name]
            layer.data = item["data"]
            layer.metadata = item["metadata"]
            if "colormap" in item:
                layer.colormap = item["colormap"]
                layer.features = item["features"]
        if job["model_before"] and self.model.label() != job["model_before"]:
            self.model.select(job["model_before"])

    def _keep(self, job: dict) -> ModelEntry:
        """The last result shown becomes the tuned model (the working entry is updated in place)."""
        req, s = job["req"], job["last"]
        steps = s.progress.step if s.progress.stage != "instant" else 0
        info = (
            f"{req['label']} tuned on {req['n_painted']} painted pixels ({req['n_classes']} classes) of "
            f"{req['names'][0]} + {req['names'][1]}: labels head" + (f" + {steps} fusion steps" if steps else "")
        )
        entry = self._shelve(req, s.runner, info)
        if entry.label != req["target"]:  # the label was taken meanwhile: the layers follow the model
            self._rename(job, entry.label)
        self.model.select(entry.label)
        return entry

    def _shelve(self, req: dict, runner, info: str) -> ModelEntry:
        if req["ours"] and self.shelf.get(req["target"]) is req["entry"]:
            entry = req["entry"]
            entry.runner, entry.info = runner, info
            self.shelf.changed.emit()
            return entry
        return self.shelf.add(ModelEntry(label=req["target"], runner=runner, base=req["root"], info=info, source="tuned"))

    def _rename(self, job: dict, label: str) -> None:
        a, b = job["req"]["names"]
        for key, name in (("fused_name", fused_layer_name(label, a, b)), ("labels_name", labels_layer_name(label, a, b))):
            if job[key] in self.viewer.layers:
                self.viewer.layers[job[key]].name = name
            job[key] = name

    def _show(self, s: _Shown, job: dict, req: dict) -> None:
        """Put one result into the widget's own layers (created on the first result); the fused
        layer is only rewritten when the model under the head changed (Live refits: labels only)."""
        a = self._layer(req["names"][0]) or req["a"]
        meta = {"method": req["target"], "source_a": req["names"][0], "source_b": req["names"][1],
                "made_by": MADE_BY, "tuned": True, "root": req["root"]}
        base = getattr(s.runner, "base", None)
        created = False
        if s.fused is not None and (self._fused_of.get(job["fused_name"]) is not base or job["fused_name"] not in self.viewer.layers):
            created |= job["fused_name"] not in self.viewer.layers
            place_image(
                self.viewer, job["fused_name"], s.fused, a, rgb=result_kind(s.fused, a) == "rgb",
                metadata={META_KEY: {**meta, "role": "fused"}}, grid=s.grid,
            )
            self._fused_of[job["fused_name"]] = base
        created |= job["labels_name"] not in self.viewer.layers
        place_labels(
            self.viewer, job["labels_name"], s.labels, a, classes_of(s.runner),
            metadata={META_KEY: {**meta, "role": "labels"}},
        )
        self.last_result = s
        if created:
            self._strokes_on_top()

    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _strokes_on_top(self) -> None:
        """Keep the strokes on top and selected, so the user can keep painting over the result."""
        strokes = self.strokes.layer()
        if strokes is None or strokes.name not in self.viewer.layers:
            return
        names = [x.name for x in self.viewer.layers]
        i = names.index(strokes.name)
        if i != len(names) - 1:
            self.viewer.layers.move(i, len(names))
        self.viewer.layers.selection.active = self.viewer.layers[strokes.name]

    # ---------------------------------------------------------------------------------------------
    # Live
    def _on_live_toggled(self, on: bool) -> None:
        self._watch_strokes()
        if on:
            self.live_refit()
        else:
            self._live_timer.stop()
            self._supersede_live()

    def _watch_strokes(self) -> None:
        """Listen to the chosen strokes layer's edits (a finished stroke, a fill, new data, undo)."""
        layer = self.strokes.layer() if self.live.isChecked() else None
        layer = unwrap(layer) if layer is not None else None
        if layer is self._watched:
            return
        if self._watched is not None:
            for ev in ("paint", "data", "set_data"):
                emitter = getattr(self._watched.events, ev, None)
                if emitter is not None:
                    try:
                        emitter.disconnect(self._on_strokes_changed)
                    except (TypeError, ValueError, RuntimeError):
                        pass
        self._watched = layer
        if layer is not None:
            for ev in ("paint", "data", "set_data"):
                emitter = getattr(layer.events, ev, None)
                if emitter is not None:
                    emitter.connect(self._on_strokes_changed)

    def _on_strokes_changed(self, event=None) -> None:
        if not _alive(self) or not self.live.isChecked():
            return
        if self.running:
            self._strokes_dirty = True
            return
        self._live_timer.start()  # (re)start: one refit after the user pauses

    def _supersede_live(self) -> None:
        """Results of Live refits requested so far are no longer shown."""
        self._live_gen += 1
        self._live_shown = self._live_gen
        self._live_pending = False

    def _after_job(self) -> None:
        if self._strokes_dirty and self.live.isChecked():
            self._strokes_dirty = False
            self._live_timer.start()

    def live_refit(self) -> Task | None:
        """Refit the labels head on the current strokes in the background (what Live runs)."""
        if not _alive(self):
            return None
        if self.running:
            self._strokes_dirty = True
            return None
        if self.live_running:
            self._live_pending = True  # the newest strokes are fitted as soon as this one ends
            return None
        req = self._request("Live", quiet=True)
        if req is None:
            return None
        req["lr"] = None
        self._live_gen += 1
        gen = self._live_gen
        t0 = time.perf_counter()
        a, b = req["a"], req["b"]
        job = {"req": req, "fused_name": fused_layer_name(req["target"], a.name, b.name),
               "labels_name": labels_layer_name(req["target"], a.name, b.name), "live": True}

        def yielded(s: _Shown):
            if gen <= self._live_shown or self.running or s.labels is None or self.model.label() != req["label"]:
                return  # something newer is shown, a Fine-tune owns the layers now, or another model was chosen
            self._live_shown = gen
            job["last"] = s
            self._show(s, job, req)
            entry = self._keep(job)
            secs = time.perf_counter() - t0
            self.updates.append((secs, "live"))
            self.status.setText(
                f"Live: {req['n_classes']} classes, {req['n_painted']} painted pixels → {entry.label!r} in {secs:.1f} s"
            )

        def errored(err):
            self.status.setText(f"Live: {error_text(err)}")

        def finished():
            if self._live_pending and self.live.isChecked() and _alive(self):
                self._live_pending = False
                self._live_timer.start()

        self.status.setText("Live: refitting …")
        self.live_task = Task(self._job_gen(req, 0, self._cache), yielded=yielded, errored=errored, finished=finished, parent=self)
        self.live_task.start()
        return self.live_task

    # ---------------------------------------------------------------------------------------------
    def apply(self, label: str | None = None) -> Task | None:
        """Run the chosen (or named) model on A + B and show its results (layers named after it)."""
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
        entry = self.current_entry()
        tuned = entry is not None and entry.source == "tuned"
        root = self.root_method() or label
        kw = dict(src_kw, device=self.device.device(), names=(a.name, b.name))
        xa, xb = layer_array(a), layer_array(b)

        def job():
            from ..engine.pipeline import fuse_steps

            return (yield from fuse_steps(xa, xb, spec, segment=_segments(spec), **kw))

        def returned(result):
            meta = {"method": label, "source_a": a.name, "source_b": b.name, "made_by": MADE_BY, "tuned": tuned, "root": root}
            place_image(
                self.viewer, fused_layer_name(label, a.name, b.name), result.fused, a,
                rgb=result_kind(result.fused, a) == "rgb", metadata={META_KEY: {**meta, "role": "fused"}}, grid=result.grid,
            )
            if result.labels is not None:
                place_labels(
                    self.viewer, labels_layer_name(label, a.name, b.name), result.labels, a, classes_of(result),
                    metadata={META_KEY: {**meta, "role": "labels"}},
                )
            self.last_result = result
            self._strokes_on_top()
            self.progress.done("done")
            self.status.setText(f"applied {label!r} to {a.name} + {b.name}")

        def errored(err):
            self.progress.done("failed")
            self.status.setText(error_text(err))
            notify_error(f"Fusion of {a.name!r} + {b.name!r} with {label} failed: {error_text(err)}")

        self._supersede_live()
        self.progress.busy(f"fusing with {label}")
        self.status.setText("")
        self.task = Task(
            job, yielded=self.progress.show_progress, returned=returned, errored=errored,
            aborted=lambda: self.progress.done("cancelled"), finished=self._job_finished, parent=self,
        )
        self._update_buttons()
        self.task.start()
        self._update_buttons()
        return self.task

    def _job_finished(self) -> None:
        self._update_buttons()
        self._after_job()

    def reset(self) -> list[str] | None:
        """Back to the shipped model the current one started from; the result layers this widget
        made for models tuned from it are removed (the shipped model's own layers were never touched). Returns the
        names of the layers removed (None if refused)."""
        if self.running:
            return None
        root = self.root_method()
        if not root:
            notify_error("no shipped model to reset to")
            return None
        if not self.model.select(root):
            notify_error(f"the shipped model {root!r} is not installed")
            return None
        self._live_timer.stop()
        self._supersede_live()
        removed = []
        for layer in list(self.viewer.layers):
            info = (getattr(layer, "metadata", None) or {}).get(META_KEY)
            if isinstance(info, dict) and info.get("made_by") == MADE_BY and info.get("tuned") and info.get("root", root) == root:
                removed.append(layer.name)
                self._fused_of.pop(layer.name, None)
                self.viewer.layers.remove(layer.name)
        self.progress.reset_idle()
        self.loss.setText("")
        self.status.setText(f"back to {root!r}" + (f"; removed {', '.join(removed)}" if removed else ""))
        return removed

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
        """An empty Labels layer on source A's grid, ready to paint. A tuned or loaded model's classes
        name and colour its values (to keep refining that task); a shipped model's do not: its classes
        (BraTS tumour classes, say) are not the user's, and would name the tuned classes."""
        a = self.source_a.layer()
        if a is None:
            notify_error("choose source A first: the strokes layer takes its shape and position")
            return None
        from napari.layers import Labels

        from ._common import _transform_kwargs

        entry = self.current_entry()
        classes = classes_of(entry.runner) if entry is not None else ()
        kw = {"colormap": labels_colormap(classes), "features": class_features(classes)} if classes else {}
        name, n = "strokes", 2
        while name in self.viewer.layers:
            name, n = f"strokes {n}", n + 1
        layer = Labels(
            np.zeros(spatial_shape(a), np.int32), name=name, metadata={META_KEY: {"role": "strokes"}}, **kw, **_transform_kwargs(a)
        )
        self.viewer.add_layer(layer)
        layer.brush_size = max(3, int(round(min(spatial_shape(a)) / 60)))
        layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.strokes.set_layer(layer)
        return layer


def _segments(runner) -> bool:
    if isinstance(runner, str):
        from ..methods.registry import get_method

        return get_method(runner).segments
    return bool(classes_of(runner)) and (hasattr(runner, "segment") or hasattr(runner, "fuse_and_segment"))
