"""Live, the Fine-tune widget's "refit as I paint": after each finished stroke (debounced), the labels
head is refitted on the chosen model's fused image in the background, without fusion training;
painting never waits for it, and only the newest refit's result is shown.

Without Live, a stroke still starts the *preparation* in the background (the model's fused image and
labels, the head's features: what no stroke changes), so that the click only fits the head."""
from __future__ import annotations

import time

from qtpy.QtCore import QTimer

from .finetune_job import TuneView, prepare_job
from .finetune_strokes import StrokesWatcher
from .job import Task, error_text
from .layers import is_alive, layer_array
from .results import fused_layer_name, labels_layer_name

__all__ = ["LIVE_DELAY_MS", "PREPARE_DELAY_MS", "LiveRefits"]

LIVE_DELAY_MS = 500  # Live: refit this long after the last finished stroke
PREPARE_DELAY_MS = 200  # start preparing this long after a stroke (or a model change)


class LiveRefits:
    """Live refits, mixed into :class:`~.finetune.FinetuneWidget`, which provides ``live`` (the
    checkbox), ``strokes``, ``model``, ``status``, ``updates``, ``running``, and ``_request``,
    ``_tune_gen``, ``_show`` and ``_keep`` (a job's request, generator, display and tuned model)."""

    def _init_live(self) -> None:
        self.live_task: Task | None = None  # a Live refit (self.task: a Fine-tune or Apply)
        self._live_gen = 0  # newest Live request; results of older ones only show if nothing newer did
        self._live_shown = 0
        self._live_pending = False
        self._strokes_dirty = False  # strokes changed while a Fine-tune ran (Live refits after it)
        self._watcher = StrokesWatcher(self._on_strokes_changed)  # the strokes layer Live listens to
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self.live_refit)
        self._prepare_thread = None  # the background preparation (prepare_job), if one ran
        self._prepare_timer = QTimer(self)
        self._prepare_timer.setSingleShot(True)
        self._prepare_timer.setInterval(PREPARE_DELAY_MS)
        self._prepare_timer.timeout.connect(self.prepare_ahead)
        self.strokes.currentIndexChanged.connect(lambda *_: self._watch_strokes())
        self.live.toggled.connect(self._on_live_toggled)
        self.model.changed.connect(self._on_model_changed)

    @property
    def live_running(self) -> bool:
        return self.live_task is not None and self.live_task.running

    def _on_live_toggled(self, on: bool) -> None:
        self._watch_strokes()
        if on:
            self.live_refit()
        else:
            self._live_timer.stop()
            self._supersede_live()

    def _watch_strokes(self) -> None:
        """Listen to the chosen strokes layer's edits (a finished stroke, a fill, new data, undo)."""
        self._watcher.watch(self.strokes.layer())

    def _on_strokes_changed(self, event=None) -> None:
        if not is_alive(self):
            return
        if not self.live.isChecked():
            self._prepare_timer.start()
            return
        if self.running:
            self._strokes_dirty = True
            return
        self._live_timer.start()  # (re)start: one refit after the user pauses

    def _on_model_changed(self, *_) -> None:
        layer = self.strokes.layer()
        if is_alive(self) and layer is not None and getattr(layer, "data", None) is not None and layer.data.any():
            self._prepare_timer.start()  # strokes are there: the next click will want this model's work

    def prepare_ahead(self):
        """Prepare the chosen model's work on the chosen pair in the background (nothing to show;
        skipped while a job runs or one is preparing). Returns the thread, or None."""
        if not is_alive(self) or self.running or self.live_running:
            return None
        if self._prepare_thread is not None and self._prepare_thread.is_alive():
            return None
        src = self._sources("prepare", quiet=True)
        label = self.model.label()
        if src is None or not label:
            return None
        a, b, src_kw = src
        entry = self.current_entry()
        req = {"xa": layer_array(a), "xb": layer_array(b), "src_kw": src_kw, "names": (a.name, b.name), "label": label,
               "runner": entry.runner if entry is not None else None, "device": self.device.device()}
        self._prepare_thread = prepare_job(req, self._cache)
        return self._prepare_thread

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
        if not is_alive(self):
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

        def yielded(s: TuneView):
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
            if self._live_pending and self.live.isChecked() and is_alive(self):
                self._live_pending = False
                self._live_timer.start()

        self.status.setText("Live: refitting …")
        self.live_task = Task(self._tune_gen(req, 0), yielded=yielded, errored=errored, finished=finished, parent=self)
        self.live_task.start()
        return self.live_task
