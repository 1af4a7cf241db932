"""The Evaluate dock widget: fusion metrics of fused layers against their sources (and IoU/Dice of a
prediction against ground-truth labels) in a table that can be copied or exported as CSV."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QApplication,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    same_layer,
    META_KEY,
    LayerCombo,
    ProgressBar,
    Task,
    error_text,
    layer_array,
    notify_error,
    notify_info,
    source_kwargs,
    spatial_ndim,
    spatial_shape,
)

__all__ = ["EvaluateWidget", "FUSION_METRICS", "evaluate_layers", "gather_inputs", "score"]

FUSION_METRICS = ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM", "SCD")
_EXTRA_TIPS = {
    "mIoU": "mean intersection over union of the predicted labels against the ground truth (classes present)",
    "mDice": "mean Dice coefficient of the predicted labels against the ground truth (classes present)",
    "pixel_accuracy": "fraction of pixels whose predicted label equals the ground truth",
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


def gather_inputs(fused, a, b, prediction=None, truth=None) -> dict:
    """Everything the metrics need from the layers (read on the GUI thread): arrays, the engine's
    source keywords, names and class names; checked for matching shapes."""
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
    )
    if prediction is not None and truth is not None:
        pred, gt = np.asarray(layer_array(prediction)), np.asarray(layer_array(truth))
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction {prediction.name!r} is {_shape_text(pred.shape)} but ground truth "
                f"{truth.name!r} is {_shape_text(gt.shape)}"
            )
        out.update(pred=pred, truth=gt, class_names=_class_names(prediction) or _class_names(truth))
    return out


def score(inputs: dict) -> dict[str, float]:
    """Fusion metrics (and segmentation metrics when labels are given) of :func:`gather_inputs`.

    The sources go through the fusion path's own preparation (``engine.pipeline.prepare_pair``: B
    brought onto A's grid, colour to BT.601 Y, each source's intensity mapping), and the fused image,
    which lies in A's range (the multispectral range for pan-sharpened bands), is mapped back to unit
    with that same mapping, so a fused image equal to A scores exactly as A does. Volumes are scored
    slice by slice (slices with content) and averaged.
    """
    from ..color import rgb_to_ycbcr, to_unit
    from ..engine.pipeline import prepare_pair
    from ..metrics import fusion_metrics, segmentation_metrics

    prep = prepare_pair(inputs["a"], inputs["b"], **inputs["source_kw"])
    uf, _ = to_unit(np.asarray(inputs["fused"]), prep.intensity)
    if inputs["fused_rgb"]:
        uf = rgb_to_ycbcr(uf)[..., 0]
    elif uf.ndim == prep.a.ndim + 1:  # a stack of fused bands: its intensity
        uf = uf.mean(axis=0)
    to255 = lambda u: np.round(np.clip(u, 0.0, 1.0) * 255.0)  # noqa: E731 - as an 8-bit file would hold it
    yf, ya, yb = to255(uf), to255(prep.a), to255(prep.b)
    out: dict[str, float] = {}
    if ya.ndim == 3:
        per = [fusion_metrics(yf[z], ya[z], yb[z]) for z in range(ya.shape[0]) if ya[z].std() > 0 or yb[z].std() > 0]
        if not per:
            na, nb = inputs["names"]
            raise ValueError(f"source A {na!r} and source B {nb!r} are constant: nothing to evaluate")
        out.update({k: float(np.mean([p[k] for p in per])) for k in per[0]})
    else:
        out.update({k: float(v) for k, v in fusion_metrics(yf, ya, yb).items()})
    pred, gt = inputs["pred"], inputs["truth"]
    if pred is not None and gt is not None:
        n = int(max(pred.max(initial=0), gt.max(initial=0))) + 1
        names = inputs["class_names"]
        if names is not None and len(names) < n:
            names = names + [str(i) for i in range(len(names), n)]
        seg = segmentation_metrics(pred, gt, n_classes=max(n, len(names or ())), class_names=names)
        out.update({k: float(v) for k, v in seg.items()})
    return out


def evaluate_layers(fused, a, b, prediction=None, truth=None) -> dict[str, float]:
    """Metrics of a fused layer against sources A and B, and IoU/Dice of ``prediction`` against
    ``truth`` when both are given (see :func:`score`)."""
    return score(gather_inputs(fused, a, b, prediction, truth))


class EvaluateWidget(QWidget):
    """A table of fusion metrics (rows) for each evaluated fused layer (columns)."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.task: Task | None = None
        self.results: dict[str, dict[str, float]] = {}  # column name -> metrics

        self.fused = LayerCombo(napari_viewer, (Image,))
        self.fused.setToolTip("the fused layer to score; its sources are picked from its metadata when known")
        self.source_a = LayerCombo(napari_viewer, (Image,))
        self.source_b = LayerCombo(napari_viewer, (Image,), predicate=self._b_compatible)
        self.source_a.currentIndexChanged.connect(lambda *_: self.source_b.refresh())
        self.prediction = LayerCombo(napari_viewer, (Labels,), optional=True)
        self.truth = LayerCombo(napari_viewer, (Labels,), optional=True)
        self.prediction.setToolTip("predicted labels (e.g. from the Segment widget)")
        self.truth.setToolTip("ground-truth labels; with a prediction adds IoU/Dice per class and their means")
        self.fused.currentIndexChanged.connect(self._follow_fused)

        self.evaluate_button = QPushButton("Evaluate")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("copy the table to the clipboard (tab-separated, pastes into spreadsheets)")
        self.export_button = QPushButton("Export CSV…")
        self.clear_button = QPushButton("Clear")
        self.progress = ProgressBar()
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.setMinimumHeight(260)
        self.note = QLabel("higher is better for every metric; the best of each row is bold")
        self.note.setStyleSheet("color: palette(mid); font-size: 11px;")

        form = QFormLayout()
        form.addRow("Fused", self.fused)
        form.addRow("Source A", self.source_a)
        form.addRow("Source B", self.source_b)
        form.addRow("Prediction", self.prediction)
        form.addRow("Ground truth", self.truth)
        buttons = QHBoxLayout()
        for w in (self.evaluate_button, self.copy_button, self.export_button, self.clear_button):
            buttons.addWidget(w)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.note)

        self.evaluate_button.clicked.connect(self.evaluate)
        self.copy_button.clicked.connect(self.copy)
        self.export_button.clicked.connect(lambda: self.export_csv())
        self.clear_button.clicked.connect(self.clear)
        self._follow_fused()

    def _b_compatible(self, layer) -> bool:
        a = self.source_a.layer() if hasattr(self, "source_a") else None
        return a is None or (not same_layer(layer, a) and spatial_ndim(layer) == spatial_ndim(a))

    def _follow_fused(self, *_) -> None:
        """Pick the sources a fused layer was made from (recorded in its metadata)."""
        layer = self.fused.layer()
        info = (getattr(layer, "metadata", None) or {}).get(META_KEY) if layer is not None else None
        if isinstance(info, dict):
            if info.get("source_a"):
                self.source_a.set_layer(info["source_a"])
            if info.get("source_b"):
                self.source_b.set_layer(info["source_b"])

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    # ---------------------------------------------------------------------------------------------
    def evaluate(self) -> Task | None:
        """Score the chosen fused layer in a worker and add/replace its column in the table."""
        if self.running:
            return None
        fused, a, b = self.fused.layer(), self.source_a.layer(), self.source_b.layer()
        if fused is None or a is None or b is None:
            notify_error("Evaluate needs a fused layer and its two sources A and B")
            return None
        pred, truth = self.prediction.layer(), self.truth.layer()
        if (pred is None) != (truth is None):
            notify_error("Evaluate: segmentation metrics need both a prediction and a ground-truth Labels layer")
            return None
        column = fused.name
        try:
            inputs = gather_inputs(fused, a, b, pred, truth)
        except Exception as err:  # noqa: BLE001
            notify_error(f"Evaluation of {fused.name!r}: {error_text(err)}")
            return None

        def job():
            yield None  # one step: lets a Cancel before the metrics start take effect
            return score(inputs)

        def returned(metrics):
            self.results[column] = metrics
            self._fill()
            self.progress.done("done")

        def errored(err):
            self.progress.done("failed")
            notify_error(f"Evaluation of {fused.name!r} failed: {error_text(err)}")

        self.evaluate_button.setEnabled(False)
        self.progress.busy(f"scoring {fused.name}")
        self.task = Task(
            job,
            returned=returned,
            errored=errored,
            finished=lambda: self.evaluate_button.setEnabled(True),
            parent=self,
        )
        return self.task.start()

    def clear(self) -> None:
        self.results.clear()
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
        self.table.setHorizontalHeaderLabels(cols)
        for i, r in enumerate(rows):
            head = self.table.verticalHeaderItem(i)
            tips = _tips()
            if head is not None and r in tips:
                head.setToolTip(tips[r])
            vals = [self.results[c].get(r) for c in cols]
            finite = [v for v in vals if v is not None and math.isfinite(v)]
            best = max(finite) if len(finite) >= 2 else None
            for j, v in enumerate(vals):
                item = QTableWidgetItem("" if v is None else _fmt(v))
                if best is not None and v == best:  # every metric here is higher-is-better
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                    item.setToolTip("best of the evaluated layers")
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()

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
            notify_error("nothing to export yet: evaluate a fused layer first")
            return None
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
            notify_error(f"could not write {path}: {err}")
            return None
        notify_info(f"metrics written to {out}")
        return out


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4f}"
