"""The Evaluate dock widget: fusion metrics of fused layers against their sources (and IoU/Dice of a
prediction against ground-truth labels) in a table that can be copied or exported as CSV."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from .job import JobWidget, Task, button_grid, error_text, notify_info
from .layers import META_KEY, layer_array, source_kwargs, spatial_shape
from .pickers import FollowDefaults, LayerCombo, default_pair, source_combos
from .results import fused_sources

__all__ = ["EvaluateWidget", "FUSION_METRICS", "evaluate_layers", "gather_inputs", "score"]

FUSION_METRICS = ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM", "SCD")
_EXTRA_TIPS = {
    "mIoU": "mean intersection over union of the predicted labels against the ground truth (classes present)",
    "mDice": "mean Dice coefficient of the predicted labels against the ground truth (classes present)",
    "pixel_accuracy": "fraction of pixels whose predicted label equals the ground truth (of the painted pixels when unpainted ones are ignored)",
}


def _tips() -> dict[str, str]:
    try:
        from ..metrics import METRIC_DESCRIPTIONS
    except ImportError:
        return dict(_EXTRA_TIPS)
    return {**_EXTRA_TIPS, **METRIC_DESCRIPTIONS}


def _class_names(layer) -> list[str] | None:
    """Class names by label value from a Labels layer's features (index/class), if it has them."""
    feats = getattr(layer, "features", None)
    if feats is None or "index" not in getattr(feats, "columns", ()) or "class" not in feats.columns:
        return None
    names = {int(i): str(n) for i, n in zip(feats["index"], feats["class"])}
    if not names:
        return None
    return [names.get(i, str(i)) for i in range(max(names) + 1)]


def _shape_text(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def gather_inputs(fused, a, b, prediction=None, truth=None, ignore_unpainted: bool | None = None) -> dict:
    """Everything the metrics need from the layers (read on the GUI thread): arrays, the engine's
    source keywords, names and class names; checked for matching shapes. ``ignore_unpainted``:
    whether the truth's 0 pixels are unpainted strokes, not a class (None: decided by
    :func:`napari_fusion.api.painted_truth`)."""
    if spatial_shape(fused) != spatial_shape(a):
        raise ValueError(
            f"fused layer {fused.name!r} is {_shape_text(spatial_shape(fused))} but source A {a.name!r} "
            f"is {_shape_text(spatial_shape(a))}; evaluate a fused image against the sources it came from"
        )
    out = dict(
        fused=layer_array(fused),
        fused_rgb=bool(getattr(fused, "rgb", False)),
        a=layer_array(a),
        b=layer_array(b),
        source_kw={**source_kwargs(a, "a"), **source_kwargs(b, "b")},
        names=(a.name, b.name),
        pred=None,
        truth=None,
        class_names=None,
        ignore_unpainted=False,
    )
    if prediction is not None and truth is not None:
        pred, gt = np.asarray(layer_array(prediction)), np.asarray(layer_array(truth))
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction {prediction.name!r} is {_shape_text(pred.shape)} but ground truth "
                f"{truth.name!r} is {_shape_text(gt.shape)}"
            )
        if ignore_unpainted is None:
            from ..api import painted_truth

            ignore_unpainted = painted_truth(truth)
        out.update(
            pred=pred,
            truth=gt,
            class_names=_class_names(prediction) or _class_names(truth),
            ignore_unpainted=bool(ignore_unpainted),
        )
    return out


def score(inputs: dict) -> dict[str, float]:
    """Fusion metrics (and segmentation metrics when labels are given) of :func:`gather_inputs`.

    The sources go through the fusion path's own preparation (``engine.pipeline.prepare_pair``: B
    brought onto A's grid, colour to BT.601 Y, each source's intensity mapping), and the fused image,
    which lies in A's range (the multispectral range for pan-sharpened bands), is mapped back to unit
    with that same mapping, so a fused image equal to A scores exactly as A does. Volumes are scored
    slice by slice and averaged over :func:`napari_fusion.metrics.scored_slices` (the API's slices).
    """
    from ..api import label_scores
    from ..color import rgb_to_ycbcr, to_unit
    from ..engine.pipeline import prepare_pair
    from ..metrics import fusion_metrics, volume_fusion_metrics

    prep = prepare_pair(inputs["a"], inputs["b"], **inputs["source_kw"])
    uf, _ = to_unit(np.asarray(inputs["fused"]), prep.intensity)
    if inputs["fused_rgb"]:
        uf = rgb_to_ycbcr(uf)[..., 0]
    elif uf.ndim == prep.a.ndim + 1:  # a stack of fused bands: its intensity
        uf = uf.mean(axis=0)
    to255 = lambda u: np.round(np.clip(u, 0.0, 1.0) * 255.0)  # noqa: E731 - as an 8-bit file would hold it
    yf, ya, yb = to255(uf), to255(prep.a), to255(prep.b)
    out: dict[str, float] = {}
    if ya.ndim == 3:  # the slices with content, at most 16 (metrics.scored_slices: the API's rule too)
        out.update(volume_fusion_metrics(yf, ya, yb, names=tuple(inputs["names"])))
    else:
        out.update({k: float(v) for k, v in fusion_metrics(yf, ya, yb).items()})
    pred, gt = inputs["pred"], inputs["truth"]
    if pred is not None and gt is not None:
        n = int(max(pred.max(initial=0), gt.max(initial=0))) + 1
        names = inputs["class_names"]
        if names is not None and len(names) < n:
            names = names + [str(i) for i in range(len(names), n)]
        seg = label_scores(
            pred, gt, n_classes=max(n, len(names or ())), class_names=names, ignore_unpainted=inputs.get("ignore_unpainted", False)
        )
        out.update({k: float(v) for k, v in seg.items()})
    return out


def evaluate_layers(fused, a, b, prediction=None, truth=None, ignore_unpainted: bool | None = None) -> dict[str, float]:
    """Metrics of a fused layer against sources A and B, and IoU/Dice of ``prediction`` against
    ``truth`` when both are given (see :func:`score`)."""
    return score(gather_inputs(fused, a, b, prediction, truth, ignore_unpainted))


class EvaluateWidget(JobWidget):
    """A table of fusion metrics (rows) for each evaluated fused layer (columns).

    Defaults (from the layer list, whether the dock or the data came first): **Fused** is the
    top-most fused result layer (``(none)`` while there is none), its sources are the ones recorded
    in its metadata, else the likely pair. **Ignore unpainted (0)** is ticked when the ground truth
    is painted strokes (:func:`napari_fusion.api.painted_truth`): its 0 pixels are then left out and
    class 0 is not scored.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent, cancel=False, status=False)
        from napari.layers import Image, Labels

        self.results: dict[str, dict[str, float]] = {}  # column name -> metrics
        self.scored: dict[str, str] = {}  # column name -> what the segmentation scores counted

        self.fused = LayerCombo(napari_viewer, (Image,), optional=True)
        self.fused.setToolTip("the fused layer to score; its sources are picked from its metadata when known")
        self.source_a, self.source_b = source_combos(napari_viewer, (Image,), groups=True)
        self.prediction = LayerCombo(napari_viewer, (Labels,), optional=True)
        self.truth = LayerCombo(napari_viewer, (Labels,), optional=True)
        self.prediction.setToolTip("predicted labels (e.g. from the Segment widget)")
        self.truth.setToolTip("ground-truth labels; with a prediction adds IoU/Dice per class and their means")
        self.ignore_unpainted = QCheckBox("ignore unpainted (0)")
        self.ignore_unpainted.setToolTip(
            "the ground truth is painted strokes: leave its unpainted (0) pixels out and do not score class 0.\n"
            "Ticked by itself for a Labels layer painted in the viewer with under half its pixels painted;\n"
            "unticked for complete label maps (read from a file), where 0 is a class (background)"
        )
        self.ignore_unpainted.setEnabled(False)
        self.fused.currentIndexChanged.connect(self._follow_fused)
        self.truth.currentIndexChanged.connect(self._follow_truth)

        self.evaluate_button = QPushButton("Evaluate")
        self.run_buttons = [self.evaluate_button]
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("copy the table to the clipboard (tab-separated, pastes into spreadsheets)")
        self.export_button = QPushButton("Export CSV…")
        self.clear_button = QPushButton("Clear")
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        # columns keep a readable width and the table scrolls sideways inside the dock instead of
        # widening the dock past its right edge
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        head.setMinimumSectionSize(64)
        head.setDefaultAlignment(Qt.AlignmentFlag.AlignCenter | Qt.AlignmentFlag.AlignVCenter)
        head.setStretchLastSection(False)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.table.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.table.setWordWrap(True)
        self.table.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.table.setMinimumWidth(0)
        self.table.setMinimumHeight(260)
        self.note = QLabel("higher is better for every metric; the best of each row is bold")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: palette(mid); font-size: 11px;")

        inputs = [("Fused", self.fused), ("Source A", self.source_a), ("Source B", self.source_b)]
        form = self.dock_layout(
            [*inputs, ("Prediction", self.prediction), ("Ground truth", self.truth), ("", self.ignore_unpainted)],
            # two rows of two: fits a narrow dock without clipping a label
            button_grid([self.evaluate_button, self.clear_button], [self.copy_button, self.export_button]),
            self.progress,
            (self.table, 1),
            self.note,
            stretch=False,
        )
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.evaluate_button.clicked.connect(self.evaluate)
        self.copy_button.clicked.connect(self.copy)
        self.export_button.clicked.connect(lambda: self.export_csv())
        self.clear_button.clicked.connect(self.clear)
        self._defaults = FollowDefaults(napari_viewer, self._pick_defaults, self)
        for combo in (self.source_a, self.source_b):  # a user's choice of one: the other goes with it
            combo.currentIndexChanged.connect(self._defaults.apply)
        self._follow_fused()
        self._follow_truth()

    def _pick_defaults(self) -> None:
        """Fused = the top-most fused result layer; sources = the ones it records, else the likely
        pair. The user's choices are kept."""
        for combo in (self.fused, self.source_a, self.source_b, self.prediction, self.truth):
            combo.refresh()
        fused = [x for x in self.fused.candidates() if fused_sources(x) is not None]
        self.fused.choose_default(fused[0] if fused else None)  # candidates are listed top first
        recorded = fused_sources(self.fused.layer())
        if recorded is not None:
            self.source_a.choose_default(recorded[0])
            self.source_b.refresh()
            self.source_b.choose_default(recorded[1])
            return
        default_pair(self.source_a, self.source_b)

    def _follow_fused(self, *_) -> None:
        """Pick the sources a fused layer was made from (recorded in its metadata)."""
        layer = self.fused.layer()
        info = (getattr(layer, "metadata", None) or {}).get(META_KEY) if layer is not None else None
        recorded = fused_sources(layer)
        if recorded is None and isinstance(info, dict):  # e.g. an enhanced layer: source A only
            recorded = (info.get("source_a"), info.get("source_b"))
        if recorded is None:
            return
        if recorded[0]:
            self.source_a.choose_default(recorded[0], force=True)
        if recorded[1]:
            self.source_b.refresh()
            self.source_b.choose_default(recorded[1], force=True)

    def _follow_truth(self, *_) -> None:
        """Tick "ignore unpainted (0)" for painted strokes (:func:`napari_fusion.api.painted_truth`)."""
        from ..api import painted_truth

        truth = self.truth.layer()
        self.ignore_unpainted.setEnabled(truth is not None)
        try:
            painted = truth is not None and painted_truth(truth)
        except Exception:  # noqa: BLE001 - a layer we cannot read: leave the box unticked
            painted = False
        self.ignore_unpainted.setChecked(painted)

    # ---------------------------------------------------------------------------------------------
    def evaluate(self) -> Task | None:
        """Score the chosen fused layer in a worker and add/replace its column in the table."""
        if self.running:
            return None
        fused, a, b = self.fused.layer(), self.source_a.layer(), self.source_b.layer()
        if fused is None or a is None or b is None:
            return self.refuse("Evaluate needs a fused layer and its two sources A and B")
        pred, truth = self.prediction.layer(), self.truth.layer()
        if (pred is None) != (truth is None):
            return self.refuse("Evaluate: segmentation metrics need both a prediction and a ground-truth Labels layer")
        column = fused.name
        ignore = self.ignore_unpainted.isChecked()
        try:
            inputs = gather_inputs(fused, a, b, pred, truth, ignore_unpainted=ignore)
        except Exception as err:  # noqa: BLE001
            return self.refuse(f"Evaluation of {fused.name!r}: {error_text(err)}")
        scored = ""
        if truth is not None:
            gt = inputs["truth"]
            if ignore:
                n = int(np.count_nonzero(gt))
                scored = f"{pred.name} vs {truth.name}: {n} painted pixels of {gt.size} scored ({100 * n / max(gt.size, 1):.1f}%); unpainted (0) ignored"
            else:
                scored = f"{pred.name} vs {truth.name}: all {gt.size} pixels scored, 0 is a class"

        def job():
            yield None  # one step: lets a Cancel before the metrics start take effect
            return score(inputs)

        def show(metrics):
            self.results[column] = metrics
            if scored:
                self.scored[column] = scored
            else:
                self.scored.pop(column, None)
            self._fill()

        return self.start_job(job, busy=f"scoring {fused.name}", on_result=show, what=f"Evaluation of {fused.name!r}")

    def clear(self) -> None:
        self.results.clear()
        self.scored.clear()
        self._fill()

    def rows(self) -> list[str]:
        """Metric names in table order: the fusion metrics, then segmentation metrics."""
        seen: list[str] = [m for m in FUSION_METRICS if any(m in r for r in self.results.values())]
        for r in self.results.values():
            for k in r:
                if k not in seen:
                    seen.append(k)
        return seen

    def _fill(self) -> None:
        rows, cols = self.rows(), list(self.results)
        self.table.clear()
        self.table.setRowCount(len(rows))
        self.table.setColumnCount(len(cols))
        self.table.setVerticalHeaderLabels(rows)
        for j, c in enumerate(cols):  # "method (A + B)" on two lines: narrower columns
            item = QTableWidgetItem(_header_text(c))
            item.setToolTip(c + (f"\n{self.scored[c]}" if c in self.scored else ""))
            self.table.setHorizontalHeaderItem(j, item)
        tips = _tips()
        for i, r in enumerate(rows):
            head = self.table.verticalHeaderItem(i)
            if head is not None and r in tips:
                head.setToolTip(tips[r])
            vals = [self.results[c].get(r) for c in cols]
            finite = [v for v in vals if v is not None and math.isfinite(v)]
            best = max(finite) if len(finite) >= 2 else None
            for j, v in enumerate(vals):
                item = QTableWidgetItem("" if v is None else _fmt(v))
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if best is not None and v == best:  # every metric here is higher-is-better
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                    item.setToolTip("best of the evaluated layers")
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        head = self.table.horizontalHeader()
        for j in range(len(cols)):  # a very long layer name does not make one huge column
            head.resizeSection(j, max(head.minimumSectionSize(), min(head.sectionSize(j), _MAX_COLUMN)))
        self.table.horizontalHeader().setMinimumHeight(0)
        text = "higher is better for every metric; the best of each row is bold"
        notes = [self.scored[c] for c in cols if c in self.scored]
        self.note.setText("\n".join([text, *notes]))

    def as_rows(self) -> list[list[str]]:
        """The table as text rows, header first (``metric``, one column per fused layer)."""
        cols = list(self.results)
        out = [["metric", *cols]]
        for r in self.rows():
            out.append([r, *(_fmt(self.results[c][r]) if r in self.results[c] else "" for c in cols)])
        return out

    def copy(self) -> str:
        """Copy the table to the clipboard as tab-separated text (and return that text)."""
        text = "\n".join("\t".join(row) for row in self.as_rows()) + "\n"
        QApplication.clipboard().setText(text)
        return text

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the table to a CSV file (atomically); asks for a path when none is given."""
        if not self.results:
            return self.refuse("nothing to export yet: evaluate a fused layer first")
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "fusion_metrics.csv", "CSV (*.csv)")
            if not path:
                return None
        from ..io.atomic import write_atomic

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(self.as_rows())
        try:
            out = write_atomic(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))
        except OSError as err:
            return self.refuse(f"could not write {path}: {err}")
        notify_info(f"metrics written to {out}")
        return out


_MAX_COLUMN = 180  # px: the widest a column gets by itself (the user can drag it wider)


def _header_text(name: str) -> str:
    """A column title on two lines, ``"method\n(A + B)"``, when the layer name has inputs."""
    head, sep, tail = name.partition(" (")
    return f"{head}\n({tail}" if sep and head else name


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4f}"
