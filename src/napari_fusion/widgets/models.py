"""The methods and models a widget offers: the registry's methods and this viewer's tuned or loaded
models (:class:`ModelShelf`, one per viewer), in one combo with each choice's description."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QStandardItemModel
from qtpy.QtWidgets import QComboBox, QLabel, QSizePolicy, QVBoxLayout, QWidget

from .layers import is_alive, unwrap

__all__ = ["MethodCombo", "ModelEntry", "ModelShelf", "method_segments", "missing_weights", "shelf_for"]


@dataclass
class ModelEntry:
    """A model held in this viewer session: fine-tuned in the widget or loaded from a file."""

    label: str  # what combos and result layer names show, e.g. "tdfusion tuned"
    runner: Any
    base: str | None = None  # the shipped method it started from, when known
    info: str = ""  # one line for tooltips
    source: str = "tuned"  # "tuned" | "loaded"
    extra: dict = field(default_factory=dict)

    @property
    def segments(self) -> bool:
        return method_segments(self.runner)


class ModelShelf(QObject):
    """The tuned/loaded models of one viewer, offered by every widget's method combo."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[str, ModelEntry] = {}

    def add(self, entry: ModelEntry) -> ModelEntry:
        """Add a model; a taken label gets a number (``tdfusion tuned 2``)."""
        label, n = entry.label, 2
        while label in self._entries and self._entries[label].runner is not entry.runner:
            label = f"{entry.label} {n}"
            n += 1
        entry.label = label
        self._entries[label] = entry
        self.changed.emit()
        return entry

    def get(self, label: str) -> ModelEntry | None:
        return self._entries.get(label)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())


_SHELVES: "weakref.WeakKeyDictionary[Any, ModelShelf]" = weakref.WeakKeyDictionary()


def shelf_for(viewer) -> ModelShelf:
    """The model shelf of a viewer (created on first use, forgotten with the viewer)."""
    viewer = unwrap(viewer)
    shelf = _SHELVES.get(viewer)
    if shelf is None:
        shelf = _SHELVES[viewer] = ModelShelf()
    return shelf


class MethodCombo(QWidget):
    """Registry methods (filtered) and the session's models, with the one-line description of the
    current choice shown under the combo and as each item's tooltip."""

    changed = Signal()

    def __init__(
        self,
        viewer,
        *,
        method_filter: Callable[[Any], bool] | None = None,
        entry_filter: Callable[[ModelEntry], bool] | None = None,
        default: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._method_filter = method_filter or (lambda m: True)
        self._entry_filter = entry_filter or (lambda e: True)
        self._shelf = shelf_for(viewer)
        self.combo = QComboBox()
        self.description = QLabel()
        self.description.setWordWrap(True)
        # a long description wraps to the dock's width instead of widening it
        self.description.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.description.setStyleSheet("color: palette(mid); font-size: 11px;")
        self.description.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.combo)
        lay.addWidget(self.description)
        self._descriptions: dict[str, str] = {}
        self.combo.currentIndexChanged.connect(self._on_index)
        self._shelf.changed.connect(self._on_shelf)
        self.refresh()
        if not (default and self.select(default)):
            try:
                from ..methods.registry import default_method

                preferred = default_method()
            except Exception:  # noqa: BLE001
                preferred = None
            if not (preferred and self.select(preferred)):
                self._select_first_enabled()
        self._on_index()

    def _enabled(self, i: int) -> bool:
        model = self.combo.model()
        item = model.item(i) if isinstance(model, QStandardItemModel) else None
        return item is None or item.isEnabled()

    def _select_first_enabled(self) -> None:
        for i in range(self.combo.count()):
            if self._enabled(i):
                self.combo.setCurrentIndex(i)
                return

    def _on_shelf(self) -> None:
        if is_alive(self):
            self.refresh()

    def methods(self) -> list:
        from ..methods.registry import list_methods

        return [m for m in list_methods() if self._method_filter(m)]

    def refresh(self) -> None:
        current = self.combo.currentText()
        self.combo.blockSignals(True)
        self.combo.clear()
        self._descriptions.clear()
        model = self.combo.model()
        for m in self.methods():
            self.combo.addItem(m.name)
            desc = m.description
            missing = missing_weights(m)
            if missing:
                desc = f"{desc} — weights not installed ({missing.name})"
                item = model.item(self.combo.count() - 1) if isinstance(model, QStandardItemModel) else None
                if item is not None:
                    item.setEnabled(False)
            self._descriptions[m.name] = desc
            model.setData(model.index(self.combo.count() - 1, 0), desc, Qt.ItemDataRole.ToolTipRole)
        for e in self._shelf.entries():
            if not self._entry_filter(e):
                continue
            self.combo.addItem(e.label)
            text = e.info or f"{e.source} model" + (f" (from {e.base})" if e.base else "")
            self._descriptions[e.label] = text
            model.setData(model.index(self.combo.count() - 1, 0), text, Qt.ItemDataRole.ToolTipRole)
        i = self.combo.findText(current)
        if i >= 0:
            self.combo.setCurrentIndex(i)
        self.combo.blockSignals(False)
        self._on_index()

    def _on_index(self, *_):
        text = self.combo.currentText()
        desc = self._descriptions.get(text, "")
        self.description.setText(desc)
        self.combo.setToolTip(desc)
        self.changed.emit()

    def select(self, label: str) -> bool:
        """Choose a method or model by label; False if it is not offered or not installed."""
        i = self.combo.findText(label)
        if i < 0 or not self._enabled(i):
            return False
        self.combo.setCurrentIndex(i)
        return True

    def label(self) -> str:
        """What the user picked, as shown (a registry name or a session model's label); "" when
        nothing usable is picked (e.g. every method lacks its weights)."""
        i = self.combo.currentIndex()
        return self.combo.currentText() if i >= 0 and self._enabled(i) else ""

    def entry(self) -> ModelEntry | None:
        """The session model picked, or None for a registry method."""
        return self._shelf.get(self.label())

    def method_spec(self):
        """What the engine takes as ``method``: a registry name or a runner object."""
        e = self.entry()
        return e.runner if e is not None else self.label()

    def base_name(self) -> str | None:
        """The shipped method behind the choice (itself for a registry method)."""
        e = self.entry()
        return e.base if e is not None else (self.label() or None)


def missing_weights(method):
    """The weights file a method needs but that is not installed, else None."""
    path = getattr(method, "weights_path", None)
    if path is None or path.is_file():
        return None
    return path


def method_segments(spec) -> bool:
    """Whether a method (a registry name) or a runner gives labels as well as a fused image."""
    if isinstance(spec, str):
        from ..methods.registry import get_method

        try:
            return get_method(spec).segments
        except KeyError:
            return False
    from ..methods.runner import as_runner, is_runner

    return is_runner(spec) and as_runner(spec).segments
