"""napari widgets: thin Qt views over the core API (the only package that imports Qt).

Four dock widgets (Plugins > napari fusion): :class:`FusionWidget`, :class:`SegmentWidget`,
:class:`EvaluateWidget`, :class:`FinetuneWidget`; and :class:`FusionPanel`, all four in tabs, which
is what ``napari -w napari-fusion`` opens.
"""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .evaluate import EvaluateWidget
from .finetune import FinetuneWidget
from .fusion import FusionWidget
from .segment import SegmentWidget

__all__ = ["FusionWidget", "SegmentWidget", "EvaluateWidget", "FinetuneWidget", "FusionPanel"]


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    return area


class FusionPanel(QWidget):
    """All napari-fusion tools in one dock, one tab each (Fusion, Segment, Evaluate, Fine-tune)."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.fusion = FusionWidget(napari_viewer)
        self.segment = SegmentWidget(napari_viewer)
        self.evaluate = EvaluateWidget(napari_viewer)
        self.finetune = FinetuneWidget(napari_viewer)
        self.tabs = QTabWidget()
        for w, title in (
            (self.fusion, "Fusion"),
            (self.segment, "Segment"),
            (self.evaluate, "Evaluate"),
            (self.finetune, "Fine-tune"),
        ):
            self.tabs.addTab(_scrolled(w), title)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
