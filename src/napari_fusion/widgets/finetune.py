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

import time

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..methods.runner import is_runner
from .finetune_job import FINETUNE_FAMILIES, TuneCache, TuneView, trainable, tune_job, tuned_label, warm_up
from .finetune_layers import MADE_BY, TunedLayers
from .finetune_live import LIVE_DELAY_MS, LiveRefits
from .finetune_models import MODEL_FILTER, ModelActions
from .finetune_strokes import add_strokes_layer, painted_background, painted_colors, painted_labels, painted_names
from .job import JobWidget, Task, button_grid, error_text, notify_error
from .layers import META_KEY, layer_array, same_layer, source_kwargs
from .models import MethodCombo, ModelEntry, shelf_for
from .options import DeviceCombo
from .pickers import LayerCombo, pick_default_pair, source_combos
from .progress import StillProgressBar
from .results import classes_of, fused_layer_name, labels_layer_name

__all__ = ["FinetuneWidget", "FINETUNE_FAMILIES", "DEFAULT_STEPS", "DEFAULT_LR", "LIVE_DELAY_MS", "MADE_BY", "MODEL_FILTER"]

DEFAULT_STEPS = 30
DEFAULT_LR = 0.0  # shown as "auto": training.finetune.auto_lr picks the rate
REFRESH_SECONDS = 5.0  # while the fusion adapts: new fused image + labels at most this often


def _learned(method) -> bool:
    return bool(method.learned)


class FinetuneWidget(LiveRefits, ModelActions, JobWidget):
    """Fine-tune a learned fusion model on painted strokes: instant labels, then the fusion adapts.

    Painted pixels (label > 0) are the training data; unpainted pixels (0) are ignored. The tuned
    model joins this viewer's models (offered by every widget); its fused image and labels go into
    layers this widget owns (named after the tuned model and the sources); Reset removes them and
    goes back to the shipped model; Save/Load move tuned models through one safetensors file.
    """

    progress_class = StillProgressBar

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        from napari.layers import Image, Labels

        self.shelf = shelf_for(napari_viewer)
        self.last_result = None
        self.losses: list[tuple[int, float, float]] = []  # (step, task loss, fusion loss)
        self.updates: list[tuple[float, str]] = []  # (seconds since the click, stage) of each layer update
        self._job: dict | None = None  # the running Fine-tune: targets, snapshot, last result, outcome
        self._cache = TuneCache()
        self.tuned_layers = TunedLayers(napari_viewer)

        self.source_a, self.source_b = source_combos(napari_viewer, (Image,))
        self.strokes = LayerCombo(napari_viewer, (Labels,), predicate=self._strokes_candidate)
        self.strokes.setToolTip("a Labels layer with a few painted strokes per class (0 = unpainted)")
        self.new_strokes_button = QPushButton("New strokes layer")
        self.new_strokes_button.setToolTip("add an empty Labels layer on source A's grid to paint on")
        self.model = MethodCombo(napari_viewer, method_filter=_learned, entry_filter=lambda e: is_runner(e.runner))
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
        self.cancel_button.setToolTip("stop and put the layers and the chosen model back as before")
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("run the chosen model on A + B and show its results")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("back to the shipped model; removes the tuned result layers of this widget")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("save the chosen tuned/loaded model to one .safetensors file")
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("load a napari-fusion model file (never runs code from the file)")
        self.loss = QLabel("")
        self.loss.setWordWrap(True)
        self.loss.setStyleSheet("font-family: monospace;")
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
        inputs = [("Source A", self.source_a), ("Source B", self.source_b), ("Strokes", strokes_box), ("Model", self.model)]
        form = self.dock_layout(
            [*inputs, ("Steps", self.steps), ("Learning rate", self.lr), ("Device", self.device), self.live],
            button_grid([self.finetune_button], [self.stop_button, self.cancel_button]),
            self.progress,
            self.loss,
            button_grid([self.apply_button, self.reset_button], [self.save_button, self.load_button]),
            self.status,
        )
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self._init_live()
        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.stop_button.clicked.connect(self.stop)
        self.apply_button.clicked.connect(lambda: self.apply())
        self.reset_button.clicked.connect(lambda: self.reset())
        self.save_button.clicked.connect(lambda: self.save())
        self.load_button.clicked.connect(lambda: self.load())
        self.new_strokes_button.clicked.connect(self.new_strokes_layer)
        self.model.changed.connect(lambda: self.update_buttons())
        self.steps.valueChanged.connect(lambda *_: self.update_buttons())
        self.update_buttons()
        pick_default_pair(self.source_a, self.source_b)
        self._watch_strokes()
        warm_up()

    # ---------------------------------------------------------------------------------------------
    @staticmethod
    def _strokes_candidate(layer) -> bool:
        info = (getattr(layer, "metadata", None) or {}).get(META_KEY)
        return not (isinstance(info, dict) and info.get("role") == "labels")  # not a model's output

    def _model_trainable(self) -> bool:
        entry = self.model.entry()
        if entry is not None:
            return trainable(entry.runner)
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

    def update_buttons(self, running: bool | None = None) -> None:
        """A Fine-tune or Apply job disables the buttons (Live refits do not count)."""
        running = self.running if running is None else running
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

    def _request(self, what: str, quiet: bool = False) -> dict | None:
        """Everything a job needs, read from the widgets on the GUI thread (None: refused)."""
        src = self._sources(what, quiet)
        if src is None:
            return None
        a, b, src_kw = src
        layer = self.strokes.layer()
        try:
            labels = painted_labels(layer, a)
        except ValueError as err:
            if quiet:
                self.status.setText(f"Live: {err}")
            else:
                notify_error(str(err))
            return None
        label = self.model.label()
        if not label:
            if not quiet:
                notify_error("no learned fusion model is available")
            return None
        entry = self.current_entry()
        names = painted_names(layer)
        background = painted_background(names)
        painted = sorted(int(v) for v in np.unique(labels) if v > 0)
        ours = entry is not None and entry.source == "tuned"
        return {
            "a": a, "b": b, "src_kw": src_kw, "xa": layer_array(a), "xb": layer_array(b),
            "names": (a.name, b.name), "labels": labels, "strokes": layer.name,
            "label": label, "entry": entry, "runner": entry.runner if entry is not None else None,
            "ours": ours, "root": self.root_method() or label,
            "target": entry.label if ours else self._free_label(tuned_label(label)),
            "class_names": names, "background": background,
            "colors": painted_colors(layer, painted), "device": self.device.device(),
            "n_painted": int(np.count_nonzero(labels)), "n_classes": len(painted),
        }

    def _free_label(self, label: str) -> str:
        taken = {e.label for e in self.shelf.entries()}
        out, n = label, 2
        while out in taken:
            out, n = f"{label} {n}", n + 1
        return out

    def _tune_gen(self, req: dict, steps: int):
        """The job of a Fine-tune (``steps``) or a Live refit (0 steps) on the request ``req``."""
        return tune_job(req, steps, self._cache, refresh_seconds=REFRESH_SECONDS)

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
            "snapshot": self.tuned_layers.snapshot([fused_name, labels_name]), "model_before": self.model.label(),
            "last": None, "outcome": None, "t0": time.perf_counter(),
        }
        self.losses, self.updates = [], []
        base_label = req["label"]
        if steps == 0 and int(self.steps.value()) > 0:
            note = f"{base_label}'s fusion is not trained here: labels head only"
        else:
            note = ""

        def yielded(s: TuneView):
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
            self.failed(f"Fine-tuning {base_label} on {a.name!r} + {b.name!r}", err)
            self.status.setText(f"failed; layers and model as before: {error_text(err)}")

        def finished():
            if job["outcome"] in ("stop", "cancel"):
                self.progress.done("stopped" if job["outcome"] == "stop" else "cancelled")
            if self._job is job:
                self._job = None
            self.update_buttons()
            self._after_job()

        self.progress.busy("fitting head")
        self.loss.setText(f"fitting head … (fused image of {base_label}, filter features, pixel head)")
        self.status.setText("")
        return self.run_task(self._tune_gen(req, steps), yielded=yielded, returned=returned, errored=errored, finished=finished)

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
        self.update_buttons()

    def cancel(self) -> None:
        """Stop the running job; a Fine-tune puts the layers and the chosen model back as before."""
        if not self.running:
            return
        job = self._job
        if job is not None:
            if job["outcome"] is not None:
                return
            job["outcome"] = "cancel"
            self._restore(job)
            self.status.setText("cancelled; layers and model as before")
        super().cancel()
        self.update_buttons()

    # ---------------------------------------------------------------------------------------------
    def _restore(self, job: dict) -> None:
        """Cancel or failure: the job's layers and the chosen model as before its click."""
        self.tuned_layers.restore(job["snapshot"])
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
            self.tuned_layers.rename(job, entry.label)
        self.model.select(entry.label)
        return entry

    def _shelve(self, req: dict, runner, info: str) -> ModelEntry:
        if req["ours"] and self.shelf.get(req["target"]) is req["entry"]:
            entry = req["entry"]
            entry.runner, entry.info = runner, info
            self.shelf.changed.emit()
            return entry
        return self.shelf.add(ModelEntry(label=req["target"], runner=runner, base=req["root"], info=info, source="tuned"))

    def _show(self, s: TuneView, job: dict, req: dict) -> None:
        """One result into the widget's own layers; the strokes stay on top of new ones."""
        created = self.tuned_layers.show(s, job, req)
        self.last_result = s
        if created:
            self.tuned_layers.strokes_on_top(self.strokes.layer())

    # ---------------------------------------------------------------------------------------------
    def new_strokes_layer(self):
        """An empty Labels layer on source A's grid, ready to paint. A tuned or loaded model's classes
        name and colour its values (to keep refining that task); a shipped model's do not: its classes
        (BraTS tumour classes, say) are not the user's, and would name the tuned classes."""
        a = self.source_a.layer()
        if a is None:
            return self.refuse("choose source A first: the strokes layer takes its shape and position")
        entry = self.current_entry()
        layer = add_strokes_layer(self.viewer, a, classes_of(entry.runner) if entry is not None else ())
        self.strokes.set_layer(layer)
        return layer
