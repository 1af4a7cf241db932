"""Layer pickers: combo boxes of the viewer's layers that follow the layer list, and the automatic
choice of a likely pair of sources (the same whether the dock or the data came first), which never
overrides a choice the user made."""
from __future__ import annotations

import weakref
from typing import Any, Callable

from qtpy.QtCore import QObject
from qtpy.QtWidgets import QComboBox, QWidget

from .layers import BandGroup, band_groups, is_alive, same_layer, spatial_ndim
from .results import is_result

__all__ = ["FollowDefaults", "LayerCombo", "default_pair", "pick_default_pair", "source_combos"]


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of some kinds, kept current as layers come, go or are
    renamed; ``predicate`` filters further (e.g. "same dimensionality as source A").

    The combo remembers whether its choice is the user's: anything but :meth:`choose_default`
    (a click, :meth:`set_layer`, ``setCurrentIndex``) makes it so, and a widget's automatic
    defaults (:func:`pick_default_pair`, :class:`FollowDefaults`) never override it. The choice
    follows its layer when the layer is renamed or moved; when the layer is removed the combo
    falls back to an automatic choice again.
    """

    NONE = "(none)"

    def __init__(
        self,
        viewer,
        kinds: tuple[type, ...],
        *,
        predicate: Callable[[Any], bool] | None = None,
        optional: bool = False,
        groups: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer_ref = weakref.ref(viewer)
        self._kinds = kinds
        self._groups = groups
        self._predicate = predicate
        self._optional = optional
        self._objects: list = []  # the candidates behind the items, in item order (NONE excluded)
        self._auto = 0  # > 0 while the combo itself or the defaults change the choice
        self._user = False
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.currentIndexChanged.connect(self._on_index)
        ev = viewer.layers.events
        ev.inserted.connect(self._on_inserted)
        ev.removed.connect(self._on_changed)
        ev.moved.connect(self._on_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_changed)
        self.refresh()

    @property
    def viewer(self):
        return self._viewer_ref()

    @property
    def optional(self) -> bool:
        return self._optional

    @property
    def user_chosen(self) -> bool:
        """Whether the current choice was made by the user (or a script), not by the defaults."""
        return self._user

    def _on_index(self, *_) -> None:
        if not self._auto:
            self._user = True

    def set_predicate(self, predicate: Callable[[Any], bool] | None) -> None:
        self._predicate = predicate
        self.refresh()

    def _on_inserted(self, event=None) -> None:
        if not is_alive(self):
            return
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self._on_changed)
        self.refresh()

    def _on_changed(self, event=None) -> None:
        if is_alive(self):
            self.refresh()

    def candidates(self) -> list:
        viewer = self.viewer
        if viewer is None:
            return []
        out = []
        for layer in reversed(list(viewer.layers)):  # top of the layer list first, as napari shows it
            if not isinstance(layer, self._kinds):
                continue
            if self._predicate is not None:
                try:
                    if not self._predicate(layer):
                        continue
                except Exception:  # noqa: BLE001 - a broken layer is simply not offered
                    continue
            out.append(layer)
        if self._groups:
            for g in band_groups(viewer):
                try:
                    if self._predicate is None or self._predicate(g):
                        out.append(g)
                except Exception:  # noqa: BLE001
                    continue
        return out

    @staticmethod
    def _text(layer) -> str:
        return layer.label if isinstance(layer, BandGroup) else layer.name

    def _current_object(self):
        i = self.currentIndex() - (1 if self._optional else 0)
        return self._objects[i] if 0 <= i < len(self._objects) else None

    @staticmethod
    def _same(x, y) -> bool:
        if isinstance(x, BandGroup) or isinstance(y, BandGroup):  # groups are rebuilt at each look
            return isinstance(x, BandGroup) and isinstance(y, BandGroup) and x.name == y.name
        return same_layer(x, y)

    def refresh(self) -> None:
        current, obj = self.currentText(), self._current_object()
        cands = self.candidates()
        names = [self._text(layer) for layer in cands]
        items = ([self.NONE] if self._optional else []) + names
        offset = 1 if self._optional else 0
        same_items = items == [self.itemText(i) for i in range(self.count())]
        if same_items and all(self._same(x, y) for x, y in zip(cands, self._objects)):
            self._objects = cands
            return
        # where the current choice went: the same layer (renamed or moved), else the same name
        index = None
        if obj is not None:
            index = next((i + offset for i, c in enumerate(cands) if self._same(c, obj)), None)
        if index is None and current in items and (obj is None or current == self.NONE):
            index = items.index(current)
        lost = index is None and bool(current) and current != self.NONE
        self._auto += 1
        try:
            self.blockSignals(True)
            self._objects = cands
            if not same_items:
                self.clear()
                self.addItems(items)
            if index is not None:
                self.setCurrentIndex(index)
            elif self._optional or not items:
                self.setCurrentIndex(0 if items else -1)
            else:
                self.setCurrentIndex(0)
            self.blockSignals(False)
            if lost:  # the chosen layer is gone: the choice is automatic again
                self._user = False
            if self.currentText() != current:
                self.currentIndexChanged.emit(self.currentIndex())
        finally:
            self.blockSignals(False)
            self._auto -= 1

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        viewer = self.viewer
        if viewer is None or not name or name == self.NONE:
            return None
        if name not in viewer.layers:
            if self._groups:
                for g in band_groups(viewer):
                    if g.label == name:
                        return g
            return None
        layer = viewer.layers[name]
        return layer if isinstance(layer, self._kinds) else None

    def _select(self, layer_or_name) -> bool:
        if layer_or_name is None or layer_or_name == self.NONE:
            if not self._optional:
                return False
            self.setCurrentIndex(0)
            return True
        self.refresh()
        if isinstance(layer_or_name, str):
            i = self.findText(layer_or_name)
            if i < 0 and self._groups:  # a band group by its name ("ms"), as metadata records it
                i = next((k for k, c in enumerate(self._objects) if isinstance(c, BandGroup) and c.name == layer_or_name), -1)
                i = i + (1 if self._optional and i >= 0 else 0)
        else:
            k = next((k for k, c in enumerate(self._objects) if self._same(c, layer_or_name)), -1)
            i = k + (1 if self._optional else 0) if k >= 0 else self.findText(self._text(layer_or_name))
        if i < 0:
            return False
        self.setCurrentIndex(i)
        return True

    def set_layer(self, layer_or_name) -> bool:
        """Select a layer (object or name; None or ``NONE`` for no layer in an optional combo) as
        the user's choice; False if it is not offered."""
        ok = self._select(layer_or_name)
        if ok:
            self._user = True
        return ok

    def choose_default(self, layer_or_name, *, force: bool = False) -> bool:
        """Select a layer as an automatic default; a choice the user made is kept (unless
        ``force``, e.g. the sources recorded in a fused layer the user picked). False when not
        applied."""
        if self._user and not force:
            return False
        self._auto += 1
        try:
            ok = self._select(layer_or_name)
        finally:
            self._auto -= 1
        if ok:
            self._user = False
        return ok


def _sources_first(layers: list) -> list:
    """Layers that are not napari-fusion results (when there are any), in the same order."""
    src = [x for x in layers if not is_result(x)]
    return src or list(layers)


def _default_b(combo_b: LayerCombo, a) -> Any:
    others = [c for c in combo_b.candidates() if not same_layer(c, a)]
    groups = [c for c in others if isinstance(c, BandGroup)]
    if groups:  # a multispectral file shown as band layers: all its bands together
        return groups[0]
    singles = _sources_first([c for c in others if not isinstance(c, BandGroup)])
    return singles[-1] if singles else None  # the lowest other layer: the one just above A


def default_pair(combo_a: LayerCombo, combo_b: LayerCombo) -> None:
    """Choose the likely pair, from the layer list only (so the same whether the dock or the data
    came first): A = the bottom-most source image with a partner (readers and samples add A
    first), B = the lowest other one, or a multispectral band group (pan-sharpening). Result
    layers are passed over while there are sources. A user's choice is kept (the other combo is
    chosen to go with it); an optional combo shows ``(none)`` when there is no pair."""
    b_user = combo_b.layer() if combo_b.user_chosen else None
    if combo_a.user_chosen:
        a = combo_a.layer()
        if b_user is None:
            b = _default_b(combo_b, a) if a is not None else None  # A set to (none): no pair
            if b is not None or combo_b.optional:
                combo_b.choose_default(b)
        return
    cands = [c for c in combo_a.candidates() if not isinstance(c, BandGroup)]
    if b_user is not None:
        cands = [c for c in cands if not same_layer(c, b_user) and spatial_ndim(c) == spatial_ndim(b_user)]
    ordered = list(reversed(_sources_first(cands)))  # bottom-most first
    ordered += [c for c in reversed(cands) if not any(same_layer(c, o) for o in ordered)]
    for a in ordered:
        if b_user is not None:
            combo_a.choose_default(a)
            return
        combo_a.choose_default(a)
        combo_b.refresh()
        b = _default_b(combo_b, a)
        if b is not None:
            combo_b.choose_default(b)
            return
    # no pair: an optional combo says so; a plain one keeps its first layer (A alone is useful)
    if combo_a.optional:
        combo_a.choose_default(None)
    elif ordered:
        combo_a.choose_default(ordered[0])
    if combo_b.optional and b_user is None:
        combo_b.choose_default(None)


class FollowDefaults(QObject):
    """Runs a widget's ``pick`` (its automatic defaults) now and again whenever layers are added,
    removed or moved, so that the defaults depend on the layer list only, not on whether the dock
    or the data came first. ``pick`` uses :meth:`LayerCombo.choose_default`, which keeps the
    user's choices."""

    def __init__(self, viewer, pick: Callable[[], None], parent: QObject) -> None:
        super().__init__(parent)
        self._pick = pick
        self._busy = False
        ev = viewer.layers.events
        ev.inserted.connect(self._on_layers)
        ev.removed.connect(self._on_layers)
        ev.moved.connect(self._on_layers)
        self._on_layers()

    def apply(self, *_) -> None:
        """Pick the defaults again now (e.g. after the user chose one of the layers)."""
        self._on_layers()

    def _on_layers(self, event=None) -> None:
        if self._busy or not is_alive(self):
            return
        self._busy = True
        try:
            self._pick()
        except RuntimeError as err:  # the widget was closed
            if "deleted" not in str(err):
                raise
        finally:
            self._busy = False


def pick_default_pair(combo_a: LayerCombo, combo_b: LayerCombo, *, follow: bool = True) -> None:
    """Preselect a likely pair (:func:`default_pair`) now and, with ``follow``, again whenever
    layers come, go or move (until the user chooses), so that opening the dock before the data
    gives the same defaults as opening it after."""
    if not follow:
        default_pair(combo_a, combo_b)
        return
    viewer = combo_a.viewer
    if viewer is None:
        return

    def pick() -> None:
        if is_alive(combo_a) and is_alive(combo_b):
            combo_a.refresh()
            combo_b.refresh()
            default_pair(combo_a, combo_b)

    follower = FollowDefaults(viewer, pick, combo_a)
    combo_a._follow_defaults = follower
    for combo in (combo_a, combo_b):  # a user's choice of one: the other goes with it
        combo.currentIndexChanged.connect(follower.apply)


def source_combos(viewer, kinds: tuple[type, ...], *, optional: bool = False, groups: bool = False) -> tuple[LayerCombo, LayerCombo]:
    """Source A and source B pickers: B offers the layers (and, with ``groups``, the band groups)
    other than A with A's number of spatial axes, and follows A's choice."""
    combo_a = LayerCombo(viewer, kinds, optional=optional)

    def fits_a(layer) -> bool:
        a = combo_a.layer()
        return a is None or (not same_layer(layer, a) and spatial_ndim(layer) == spatial_ndim(a))

    combo_b = LayerCombo(viewer, kinds, optional=optional, groups=groups, predicate=fits_a)
    combo_a.currentIndexChanged.connect(lambda *_: combo_b.refresh())
    return combo_a, combo_b
