"""Jobs of the dock widgets: a core generator run in a napari thread worker, and the base class of
the four widgets that run them.

The compute is a core generator (``engine.pipeline.fuse_steps``, ``segment_steps``,
``task.loop.tune_steps`` ...) that yields progress; :class:`Task` runs it in a napari thread worker
(or inline when ``NAPARI_FUSION_SYNC=1``, for scripts and tests) and calls back on the GUI thread.
:class:`JobWidget` owns what every widget shows around a job: the progress bar, Cancel, the status
line, the Run buttons off while a job runs, and errors as napari notifications that name the input
and the problem. Nothing here touches a layer: a job's result is only shown once the generator has
returned, so a failed or cancelled job leaves the viewer as it was.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Generator, Sequence

from qtpy.QtCore import QObject
from qtpy.QtWidgets import QApplication, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QLayout, QPushButton, QVBoxLayout, QWidget

from .progress import ProgressBar

__all__ = [
    "SYNC_ENV",
    "JobWidget",
    "Task",
    "button_grid",
    "button_row",
    "error_text",
    "notify_error",
    "notify_info",
    "sync_mode",
]

SYNC_ENV = "NAPARI_FUSION_SYNC"


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
# layout


def button_row(*widgets: QWidget) -> QHBoxLayout:
    """The widgets side by side."""
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


def button_grid(*rows: Sequence[QWidget]) -> QGridLayout:
    """A grid of buttons, one row per sequence; a row with fewer widgets than the widest row spans
    its last widget over the rest (e.g. a Run button over a Stop and a Cancel button)."""
    grid = QGridLayout()
    width = max((len(r) for r in rows), default=0)
    for i, row in enumerate(rows):
        for j, w in enumerate(row):
            if j == len(row) - 1 and len(row) < width:
                grid.addWidget(w, i, j, 1, width - j)
            else:
                grid.addWidget(w, i, j)
    return grid


# --------------------------------------------------------------------------------------------------
# background jobs


class _CarriedError(Exception):
    """A job's RuntimeError (CUDA out of memory, a device that is not there ...) on its way through
    superqt's worker, which takes a RuntimeError from the generator for a deleted worker: it would
    warn, and never report the job failed or finished (the widget would stay busy for good)."""

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


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
            try:
                return (yield from self._gen_func())
            except RuntimeError as err:  # superqt takes these for a deleted worker: never reported
                raise _CarriedError(err) from err

        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        try:  # we report errors ourselves, with a message that names the job
            worker.errored.disconnect(worker._relay_error)
        except (AttributeError, TypeError, RuntimeError):
            pass
        worker.yielded.connect(lambda v: self._call("yielded", v))
        worker.returned.connect(lambda v: self._call("returned", v))
        worker.errored.connect(lambda e: self._call("errored", e.error if isinstance(e, _CarriedError) else e))
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
# the widgets' base


class JobWidget(QWidget):
    """Base of the dock widgets that run jobs: Fusion, Segment, Evaluate, Fine-tune.

    It owns ``progress`` (a :class:`ProgressBar`: counting when the generator yields ``done/total``,
    busy otherwise), ``cancel_button`` (``cancel=False``: none), ``status`` (a word-wrapped line;
    ``status=False``: none) and the enabling of ``run_buttons``: off while a job runs, else on when
    :meth:`can_run`. Subclasses build their form and lay these out, and start a job with
    :meth:`start_job` (the usual callbacks) or :meth:`run_task` (their own).
    """

    progress_class: type[ProgressBar] = ProgressBar

    def __init__(self, napari_viewer, parent: QWidget | None = None, *, cancel: bool = True, status: bool = True) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.task: Task | None = None
        self.run_buttons: list[QPushButton] = []
        self.progress = self.progress_class()
        self.status: QLabel | None = None
        if status:
            self.status = QLabel("")
            self.status.setWordWrap(True)
        self.cancel_button: QPushButton | None = None
        if cancel:
            self.cancel_button = QPushButton("Cancel")
            self.cancel_button.setEnabled(False)
            self.cancel_button.clicked.connect(lambda: self.cancel())

    def dock_layout(self, rows: Sequence[Any], *parts: Any, stretch: bool = True) -> QFormLayout:
        """Lay the dock out top to bottom: a form of ``rows`` (``(label, widget)`` pairs or lone
        widgets), then ``parts`` in order (layouts, widgets, or ``(widget, stretch)`` pairs), then a
        stretch that keeps them at the top (``stretch=False``: none). Returns the form."""
        form = QFormLayout()
        for row in rows:
            if isinstance(row, tuple):
                form.addRow(*row)
            else:
                form.addRow(row)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        for part in parts:
            if isinstance(part, QLayout):
                lay.addLayout(part)
            elif isinstance(part, tuple):
                lay.addWidget(*part)
            else:
                lay.addWidget(part)
        if stretch:
            lay.addStretch(1)
        return form

    @property
    def running(self) -> bool:
        """A job started by :meth:`run_task` is running."""
        return self.task is not None and self.task.running

    def can_run(self) -> bool:
        """Whether the Run buttons may be enabled when no job runs (e.g. a method is available)."""
        return True

    def update_buttons(self, running: bool | None = None) -> None:
        """Run buttons off while a job runs (``running``: the state about to be), Cancel on."""
        running = self.running if running is None else running
        ok = not running and self.can_run()
        for button in self.run_buttons:
            button.setEnabled(ok)
        if self.cancel_button is not None:
            self.cancel_button.setEnabled(running)

    def set_status(self, text: str) -> None:
        if self.status is not None:
            self.status.setText(text)

    @staticmethod
    def refuse(message: str) -> None:
        """Tell the user why a job was not started (a napari notification); returns None."""
        notify_error(message)

    def failed(self, what: str, err: BaseException) -> None:
        """Show a failed job: the bar says so, the status line and a notification name the job's
        input (``what``, e.g. ``"Fusion of 'ir' and 'vi' with gifnet"``) and the problem."""
        self.progress.done("failed")
        self.set_status(error_text(err))
        notify_error(f"{what} failed: {error_text(err)}")

    def show_progress(self, value) -> None:
        """A progress object from the generator on the bar (``None``: a step with nothing to show)."""
        if value is not None:
            self.progress.show_progress(value)

    def run_task(
        self,
        gen_func: Callable[[], Generator[Any, None, Any]],
        *,
        finished: Callable[[], None] | None = None,
        **callbacks: Callable[..., None] | None,
    ) -> Task:
        """Start ``gen_func()`` as this widget's job (:attr:`task`) with these GUI-thread callbacks
        (``yielded``, ``returned``, ``errored``, ``aborted``: as :class:`Task` takes them); the
        buttons follow the job (``finished`` runs after they are back)."""

        def done() -> None:
            self.update_buttons()
            if finished is not None:
                finished()

        self.task = Task(gen_func, **callbacks, finished=done, parent=self)
        self.update_buttons(running=True)
        return self.task.start()

    def start_job(
        self,
        gen_func: Callable[[], Generator[Any, None, Any]],
        *,
        busy: str,
        what: str,
        on_result: Callable[[Any], None],
        finished: Callable[[], None] | None = None,
    ) -> Task:
        """Start a job the usual way: the bar busy with ``busy`` and then following the generator's
        progress, ``on_result(value)`` shows what the generator returned (a failure there fails the
        job too), errors via :meth:`failed` (``what`` names the input), Cancel leaves the layers."""
        self.progress.busy(busy)
        self.set_status("")

        def returned(value) -> None:
            try:
                on_result(value)
            except Exception as err:  # noqa: BLE001 - showing the result must not crash the viewer
                self.failed(what, err)
                return
            self.progress.done("done")

        def aborted() -> None:
            self.progress.done("cancelled")
            self.set_status("cancelled; layers unchanged")

        return self.run_task(
            gen_func, yielded=self.show_progress, returned=returned, errored=lambda err: self.failed(what, err),
            aborted=aborted, finished=finished,
        )

    def cancel(self) -> None:
        """Stop the running job at its next step (between tiles, slices or steps); the widget's
        layers and the user's stay as they were."""
        if self.running:
            self.task.cancel()
            self.progress.setFormat("cancelling …")

