"""The progress bar of a widget's job: counts what the core's generators count (``tile 3/40``,
``slice 12/155``, ``adapting 5/30``) and is busy, with the stage and the seconds so far, while there
is nothing to count."""
from __future__ import annotations

from qtpy.QtWidgets import QProgressBar, QWidget

__all__ = ["ProgressBar", "StillProgressBar", "stage_text"]

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


class StillProgressBar(ProgressBar):
    """A :class:`ProgressBar` busy without the moving animation: the stage and the seconds so far
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
