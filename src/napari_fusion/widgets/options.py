"""Run options the widgets share: the device picker (the engine's own list of devices) and the tile
size box (the engine's meaning of a tile size: auto, never, or N px)."""
from __future__ import annotations

from typing import Sequence

from qtpy.QtCore import Qt
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import QComboBox, QSpinBox, QWidget

__all__ = ["DeviceCombo", "TileSpinBox", "device_label"]


def device_label(name: str) -> str:
    """How the picker shows an engine device name: ``"CPU"`` for ``"cpu"``, GPUs by their engine
    name (``cuda``, ``cuda:1``, ``mps``: what the API's and the CLI's ``device`` take)."""
    return "CPU" if name == "cpu" else name


class DeviceCombo(QComboBox):
    """``auto``, then every device :func:`napari_fusion.engine.device.available_devices` lists here
    (best first: ``cuda``, ``cuda:1`` ..., ``mps``, ``cpu``); :meth:`device` is the engine's name of
    the choice. ``devices`` replaces the engine's list (for tests)."""

    def __init__(self, parent: QWidget | None = None, *, devices: Sequence[str] | None = None) -> None:
        super().__init__(parent)
        if devices is None:
            from ..engine.device import available_devices

            devices = available_devices()
        self.addItem("auto", "auto")
        gpus = [str(d) for d in devices if str(d) != "cpu"]
        tip = f"the first GPU when there is one, else the CPU (here: {gpus[0] if gpus else 'cpu'}); $NAPARI_FUSION_DEVICE overrides it"
        self.setItemData(0, tip, Qt.ItemDataRole.ToolTipRole)
        for name in devices:
            self.addItem(device_label(str(name)), str(name))
        self.setToolTip(f"auto: {tip}")

    def devices(self) -> list[str]:
        """The engine names offered besides ``auto``."""
        return [str(self.itemData(i)) for i in range(1, self.count())]

    def device(self) -> str:
        """The engine's device name of the choice: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
        data = self.currentData()
        return str(data) if data else "auto"

    def set_device(self, name: str) -> bool:
        """Choose a device by its engine name; False when it is not offered here."""
        i = self.findData(str(name))
        if i < 0:
            return False
        self.setCurrentIndex(i)
        return True


class TileSpinBox(QSpinBox):
    """Tile size picker with the engine's meaning everywhere: ``auto`` (:meth:`tile` None: the
    engine decides), ``never`` (0: one pass, never tiled) or ``N px`` tiles. Steps go
    auto, never, 128, 256, ... (``step``); typing a number or ``auto``/``never`` works too."""

    AUTO = -1
    WORDS = {AUTO: "auto", 0: "never"}

    def __init__(self, parent=None, *, maximum: int = 16384, step: int = 128) -> None:
        super().__init__(parent)
        self.setRange(self.AUTO, int(maximum))
        self.setSingleStep(int(step))
        self.setValue(self.AUTO)

    def tile(self) -> int | None:
        """The engine's ``tile``: None (automatic), 0 (never) or the tile side in pixels."""
        v = int(self.value())
        return None if v == self.AUTO else v

    def setTile(self, tile: int | None) -> None:  # noqa: N802 - Qt-style name next to setValue
        self.setValue(self.AUTO if tile is None else max(0, int(tile)))

    # --- display and parsing -------------------------------------------------------------------
    def textFromValue(self, value: int) -> str:  # noqa: N802 - Qt's name
        return self.WORDS.get(int(value), f"{int(value)} px")

    def _parse(self, text: str) -> int | None:
        t = text.strip().lower()
        for v, word in self.WORDS.items():
            if t == word:
                return v
        t = t.removesuffix("px").strip()
        return int(t) if t.isdigit() else None

    def valueFromText(self, text: str) -> int:  # noqa: N802 - Qt's name
        v = self._parse(text)
        return self.AUTO if v is None else v

    def validate(self, text: str, pos: int):
        t = text.strip().lower()
        v = self._parse(text)
        if v is not None and self.minimum() <= v <= self.maximum():
            state = QValidator.State.Acceptable
        elif t == "" or any(w.startswith(t) for w in self.WORDS.values()) or t.removesuffix("p").strip().isdigit() or t.endswith(" "):
            state = QValidator.State.Intermediate
        else:
            state = QValidator.State.Invalid
        like = super().validate(text, pos)  # PyQt returns (state, text, pos), PySide the state
        return (state, text, pos) if isinstance(like, tuple) else state

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt's name
        # auto -> never -> step -> 2*step ...: the words are steps of their own, sizes stay multiples
        v, step = int(self.value()), int(self.singleStep())
        for _ in range(abs(int(steps))):
            if steps > 0:
                v = 0 if v == self.AUTO else (v // step + 1) * step
            else:
                v = self.AUTO if v <= 0 else (0 if v <= step else ((v - 1) // step) * step)
        self.setValue(max(self.minimum(), min(self.maximum(), v)))

