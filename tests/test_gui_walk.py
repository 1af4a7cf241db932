"""The second user walk of issue 17 (napari under Xvfb), as tests: defaults that do not depend on
whether the dock or the data came first, result layers owned by their job's inputs, mIoU against
painted strokes, progress during one untiled pass, and an Evaluate table that fits the dock."""
from __future__ import annotations

import os

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_fusion.methods.registry import ClassInfo  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-fusion"
TOOLS = ("Fusion", "Segment", "Evaluate")


@pytest.fixture(autouse=True)
def _cpu_inline(cpu_only, monkeypatch):
    """CPU, and jobs run inline on the GUI thread: these tests are about what the widgets choose
    and show, not about threads (test_widgets.py runs the real workers)."""
    monkeypatch.setenv("NAPARI_FUSION_SYNC", "1")


def _choices(w) -> dict:
    return {k: getattr(w, k).currentText() for k in ("fused", "source_a", "source_b", "image") if hasattr(w, k)}


def _docks(viewer) -> dict:
    return {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in TOOLS}


EXPECTED = {
    "ivif": {
        "Fusion": {"source_a": "ir", "source_b": "vi"},
        "Segment": {"source_a": "ir", "source_b": "vi", "image": "(none)"},
        "Evaluate": {"fused": "(none)", "source_a": "ir", "source_b": "vi"},
    },
    "pan_ms": {  # the three band layers of ms.tif go together as B of the Fusion and Evaluate tools
        "Fusion": {"source_a": "pan", "source_b": "ms (all 3 bands)"},
        "Segment": {"source_a": "pan", "source_b": "ms B2 blue", "image": "(none)"},
        "Evaluate": {"fused": "(none)", "source_a": "pan", "source_b": "ms (all 3 bands)"},
    },
}


# --------------------------------------------------------------------------------------------------
# defaults: the same whether the dock or the data came first


@pytest.mark.parametrize("key", ["ivif", "pan_ms"])
def test_dock_before_data_gives_the_same_defaults_as_data_first(make_napari_viewer, sample_layers, key):
    seen = {}
    for order in ("data first", "dock first"):
        viewer = make_napari_viewer()
        if order == "data first":
            sample_layers(viewer, key)  # File > Open Sample > napari fusion
            docks = _docks(viewer)
        else:
            docks = _docks(viewer)
            sample_layers(viewer, key)
        seen[order] = {name: _choices(w) for name, w in docks.items()}
    assert seen["dock first"] == seen["data first"] == EXPECTED[key]


def test_defaults_follow_results_until_the_user_chooses(make_napari_viewer, sample_layers):
    from napari_fusion import fuse

    viewer = make_napari_viewer()
    docks = _docks(viewer)
    ir, vi = sample_layers(viewer, "ivif")
    ev = docks["Evaluate"]
    fuse(ir, vi, "average", viewer=viewer)  # the console API's result layer records its sources
    assert _choices(ev) == {"fused": "average (ir + vi)", "source_a": "ir", "source_b": "vi"}
    docks["Fusion"].method.select("max")
    docks["Fusion"].fuse()
    assert ev.fused.currentText() == "max (ir + vi)"  # the newest result, while nothing was chosen
    # the result layers are not offered as the default pair of the other tools
    assert _choices(docks["Fusion"]) == {"source_a": "ir", "source_b": "vi"}
    assert _choices(docks["Segment"]) == {"source_a": "ir", "source_b": "vi", "image": "(none)"}

    ev.fused.set_layer("average (ir + vi)")  # the user's choice stays while layers come and go
    fuse(ir, vi, "laplacian", viewer=viewer)
    assert ev.fused.currentText() == "average (ir + vi)" and ev.fused.user_chosen
    viewer.layers["average (ir + vi)"].name = "mean"  # ... and follows its layer when renamed
    assert ev.fused.currentText() == "mean"
    viewer.layers.remove("mean")  # gone: back to the automatic choice
    assert ev.fused.currentText() == "laplacian (ir + vi)" and not ev.fused.user_chosen


def test_a_user_choice_of_one_source_brings_the_other(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("a0", "a1", "a2"):
        viewer.add_image(np.zeros((20, 30), np.float32), name=name)
    docks = _docks(viewer)
    fw, seg = docks["Fusion"], docks["Segment"]
    assert _choices(fw) == {"source_a": "a0", "source_b": "a1"}
    fw.source_a.set_layer("a1")  # B goes with it: the lowest other layer
    assert _choices(fw) == {"source_a": "a1", "source_b": "a0"}
    fw.source_b.set_layer("a2")
    viewer.add_image(np.zeros((20, 30), np.float32), name="a3")
    assert _choices(fw) == {"source_a": "a1", "source_b": "a2"}  # both the user's: kept
    seg.source_a.set_layer(None)  # no pair: B follows, the lowest image is segmented alone
    assert _choices(seg) == {"source_a": "(none)", "source_b": "(none)", "image": "a0"}


def test_segment_defaults_to_the_one_image_and_a_user_image_clears_the_pair(make_napari_viewer):
    viewer = make_napari_viewer()
    seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")[1]
    viewer.add_image(np.zeros((20, 30), np.float32), name="only")
    assert _choices(seg) == {"source_a": "(none)", "source_b": "(none)", "image": "only"}
    viewer.add_image(np.ones((20, 30), np.float32), name="second")
    assert _choices(seg) == {"source_a": "only", "source_b": "second", "image": "(none)"}
    seg.image.set_layer("second")  # the user wants one image segmented: the automatic pair goes
    assert _choices(seg) == {"source_a": "(none)", "source_b": "(none)", "image": "second"}
    viewer.add_image(np.ones((20, 30), np.float32), name="third")
    assert _choices(seg) == {"source_a": "(none)", "source_b": "(none)", "image": "second"}


# --------------------------------------------------------------------------------------------------
# result layers: each job owns its layers, named after its inputs


CLASSES = (ClassInfo(0, "background", "#000000"), ClassInfo(1, "warm", "#ff0000"), ClassInfo(2, "bright", "#00ff00"))


class ThresholdSegmenter:
    """Fuses by maximum; class 1 where A > 0.6, class 2 where only B > 0.6."""

    name = "threshold"
    classes = CLASSES

    def fuse(self, a, b):
        return np.maximum(a, b)

    def segment(self, fused, a, b):
        out = np.zeros(a.shape, np.int32)
        out[b > 0.6] = 2
        out[a > 0.6] = 1
        return out


def test_each_job_owns_its_result_layers_named_after_its_inputs(make_napari_viewer, sample_layers):
    from napari_fusion import api, naming
    from napari_fusion.widgets.models import ModelEntry, shelf_for
    from napari_fusion.widgets.results import labels_layer_name

    viewer = make_napari_viewer()
    ir, vi = sample_layers(viewer, "ivif")
    runner = ThresholdSegmenter()
    shelf_for(viewer).add(ModelEntry(label="threshold", runner=runner, info="test segmenter"))
    seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")[1]
    assert seg.method.select("threshold")
    seg.segment()  # the default pair: ir + vi
    first = viewer.layers["threshold labels (ir + vi)"]
    fused = viewer.layers["threshold (ir + vi)"]

    ir2 = viewer.add_image(ir.data[::-1].copy(), name="ir2")
    vi2 = viewer.add_image(vi.data[::-1].copy(), name="vi2")
    seg.source_a.set_layer(ir2)
    seg.source_b.set_layer(vi2)
    before = first.data.copy()
    seg.segment()  # other inputs: layers of their own, the first job's layers untouched
    second = viewer.layers["threshold labels (ir2 + vi2)"]
    assert second is not first and "threshold (ir2 + vi2)" in viewer.layers
    np.testing.assert_array_equal(first.data, before)
    np.testing.assert_array_equal(second.data, before[::-1])

    n = len(viewer.layers)
    seg.source_a.set_layer(ir)
    seg.source_b.set_layer(vi)
    seg.segment()  # the same inputs again: the same layers, updated in place
    assert len(viewer.layers) == n
    assert viewer.layers["threshold labels (ir + vi)"] is first and viewer.layers["threshold (ir + vi)"] is fused

    seg.source_a.set_layer(None)
    seg.source_b.set_layer(None)
    seg.image.set_layer(ir)
    seg.segment()  # one image: its own layer too
    assert "threshold labels (ir)" in viewer.layers and len(viewer.layers) == n + 1

    # the Fusion widget and the console API name (and so reuse) the same layers for the same job
    fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")[1]
    fw.source_a.set_layer(ir)
    fw.source_b.set_layer(vi)
    assert fw.method.select("threshold")
    fw.fuse()
    api.segment(ir, vi, runner, viewer=viewer)
    api.fuse(ir, vi, runner, viewer=viewer)
    assert len(viewer.layers) == n + 1
    assert viewer.layers["threshold labels (ir + vi)"] is first and viewer.layers["threshold (ir + vi)"] is fused
    # one naming rule: napari_fusion.naming, which the widgets' helpers call
    assert labels_layer_name("m", "a", "b") == naming.labels_name("m", "a", "b") == "m labels (a + b)"
    assert api._layer_name("m", api.as_input(ir), api.as_input(vi)) == naming.fused_name("m", "ir", "vi") == "m (ir + vi)"
    assert naming.labels_name("m", "a") == "m labels (a)" and naming.enhanced_name("gifnet", "vi") == "gifnet enhanced (vi)"


# --------------------------------------------------------------------------------------------------
# mIoU against painted strokes: unpainted (0) is not a class


def _strokes_scenario(shape=(301, 496)):
    """The issue's scenario: a model whose labels cover the whole image with the painted classes
    (a tuned model predicts no 0) and that is right on 10.8% of 2000 painted stroke pixels."""
    h, w = shape
    strokes = np.zeros(shape, np.int32)
    strokes[60:65, 50:250] = 1  # 1000 px of class 1
    strokes[225:230, 150:350] = 2  # 1000 px of class 2
    pred = np.ones(shape, np.int32)
    pred[:, w // 2 :] = 2
    for c, other in ((1, 2), (2, 1)):
        px = np.argwhere(strokes == c)
        pred[tuple(px.T)] = other
        pred[tuple(px[:108].T)] = c  # right on 108 of each class's 1000 pixels
    return strokes, pred


def test_miou_against_painted_strokes_ignores_unpainted_pixels(make_napari_viewer, sample_layers, qtbot):
    from napari_fusion import evaluate, fuse
    from napari_fusion.metrics import segmentation_metrics

    strokes, pred = _strokes_scenario()
    counted = segmentation_metrics(pred, strokes)  # the old rule: unpainted pixels are class 0
    assert counted["mIoU"] < 0.002 and counted["pixel_accuracy"] < 0.002  # the "0.0016"
    iou = 108 / (1000 + 892)  # class 1: right 108, missed 892, and 892 class-2 strokes called 1

    viewer = make_napari_viewer()
    ir, vi = sample_layers(viewer, "ivif")
    fuse(ir, vi, "average", viewer=viewer)
    viewer.add_labels(pred, name="model labels")
    s_layer = viewer.add_labels(strokes, name="strokes")  # painted in the viewer: no file behind it
    ev = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")[1]
    assert not ev.ignore_unpainted.isEnabled()
    ev.prediction.set_layer("model labels")
    ev.truth.set_layer("strokes")
    assert ev.ignore_unpainted.isEnabled() and ev.ignore_unpainted.isChecked()  # 1.3% painted
    ev.evaluate()
    qtbot.waitUntil(lambda: not ev.running, timeout=120_000)
    res = ev.results["average (ir + vi)"]
    assert res["pixel_accuracy"] == pytest.approx(0.108)
    assert res["mIoU"] == pytest.approx(iou) and res["IoU/1"] == pytest.approx(iou) and res["IoU/2"] == pytest.approx(iou)
    assert res["mDice"] == pytest.approx(0.108)
    assert "IoU/0" not in res and "Dice/0" not in res  # unpainted is not a class
    assert "2000 painted pixels" in ev.note.text() and "unpainted (0) ignored" in ev.note.text()

    ev.ignore_unpainted.setChecked(False)  # the user says 0 is a class: the old numbers
    ev.evaluate()
    qtbot.waitUntil(lambda: not ev.running, timeout=120_000)
    assert ev.results["average (ir + vi)"]["mIoU"] == pytest.approx(counted["mIoU"])
    assert "0 is a class" in ev.note.text()

    # the console API: the same rule for a painted layer; arrays are complete maps unless told
    fused = viewer.layers["average (ir + vi)"]
    api_layer = evaluate(fused, ir, vi, labels=viewer.layers["model labels"], truth=s_layer)
    assert api_layer["mIoU"] == pytest.approx(iou) and api_layer["pixel_accuracy"] == pytest.approx(0.108)
    api_array = evaluate(fused, ir, vi, labels=pred, truth=strokes)
    assert api_array["mIoU"] == pytest.approx(counted["mIoU"])
    api_told = evaluate(fused, ir, vi, labels=pred, truth=strokes, ignore_unpainted=True)
    assert api_told["mIoU"] == pytest.approx(iou)


def test_complete_label_maps_keep_class_zero(make_napari_viewer):
    from napari_fusion.api import painted_truth

    viewer = make_napari_viewer()
    sparse = np.zeros((40, 40), np.int32)
    sparse[10:14, 5:30] = 1
    from_file = viewer.add_labels(sparse, name="seg", metadata={"path": "/data/seg.nii.gz"})
    dense = viewer.add_labels(np.ones((40, 40), np.int32), name="dense")
    painted = viewer.add_labels(sparse, name="painted")
    model = viewer.add_labels(sparse, name="model labels (a + b)", metadata={"napari_fusion": {"role": "labels"}})
    assert painted_truth(painted)
    assert not painted_truth(from_file)  # a ground-truth file: 0 is background
    assert not painted_truth(dense)  # mostly painted: a complete map
    assert not painted_truth(model)  # a model's output
    assert not painted_truth(sparse)  # a plain array: a complete map unless ignore_unpainted=True
    ev = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")[1]
    for layer, ticked in ((from_file, False), (painted, True), (dense, False)):
        ev.truth.set_layer(layer)
        assert ev.ignore_unpainted.isChecked() is ticked, layer.name


# --------------------------------------------------------------------------------------------------
# progress of one untiled pass: busy with its stage, then finishing


class SlowOnePass:
    """A one-pass method (no tiles) that records what the Fusion widget's bar shows while it runs."""

    name = "one-pass-probe"
    halo = 0

    def __init__(self, bar) -> None:
        self.bar = bar
        self.seen = None

    def fuse(self, a, b):
        self.seen = (self.bar.minimum(), self.bar.maximum(), self.bar.text())
        return (a + b) * 0.5


def test_single_pass_progress_is_busy_with_its_stage(make_napari_viewer, sample_layers):
    from napari_fusion.engine.pipeline import Progress
    from napari_fusion.widgets.models import ModelEntry, shelf_for
    from napari_fusion.widgets.progress import ProgressBar

    bar = ProgressBar()
    bar.show_progress(Progress(0, 1, "fuse"))
    assert (bar.minimum(), bar.maximum()) == (0, 0) and bar.text().startswith("fusing (one pass)")
    bar.show_progress(Progress(1, 1, "fuse"))
    assert bar.maximum() == 0 and bar.text().startswith("finishing")
    bar.show_progress(Progress(3, 40, "tiles"))  # counted work keeps its count
    assert (bar.maximum(), bar.value(), bar.text()) == (40, 3, "tile 3/40")
    bar.show_progress(Progress(0, 0, "preparing"))
    assert bar.maximum() == 0 and bar.text().startswith("preparing")
    bar.done()
    assert bar.text() == "done" and bar.busy_text() is None

    viewer = make_napari_viewer()
    sample_layers(viewer, "ivif")
    fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")[1]
    probe = SlowOnePass(fw.progress)
    shelf_for(viewer).add(ModelEntry(label="probe", runner=probe, info="records the bar"))
    assert fw.method.select("probe")
    fw.fuse()
    lo, hi, text = probe.seen
    assert (lo, hi) == (0, 0), "an indeterminate (busy) bar during the pass, not 0/1"
    assert text.startswith("fusing (one pass)")
    assert fw.progress.format() == "done"


# --------------------------------------------------------------------------------------------------
# the Evaluate table fits the dock


def test_evaluate_table_fits_a_narrow_dock(make_napari_viewer, sample_layers, qtbot):
    from qtpy.QtCore import Qt

    from napari_fusion import fuse

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 860)
    dock, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "All tools")
    ir, vi = sample_layers(viewer, "ivif")
    ev = panel.evaluate
    panel.tabs.setCurrentIndex(2)
    for m in ("average", "laplacian", "max"):
        fuse(ir, vi, m, viewer=viewer)
        ev.fused.set_layer(f"{m} (ir + vi)")
        ev.evaluate()
        qtbot.waitUntil(lambda: not ev.running, timeout=120_000)
    viewer.window._qt_window.resizeDocks([dock], [300], Qt.Orientation.Horizontal)
    qtbot.wait(200)
    for i in range(panel.tabs.count()):  # no tab is cut at the right edge of a 300-px dock
        panel.tabs.setCurrentIndex(i)
        qtbot.wait(100)
        area = panel.tabs.widget(i)
        assert area.widget().minimumSizeHint().width() <= area.viewport().width(), panel.tabs.tabText(i)
    panel.tabs.setCurrentIndex(2)
    assert ev.table.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAsNeeded
    assert ev.table.wordWrap()
    assert ev.table.horizontalHeaderItem(0).text() == "average\n(ir + vi)"  # two-line titles
    assert ev.table.horizontalHeaderItem(0).toolTip().startswith("average (ir + vi)")
    head = ev.table.horizontalHeader()
    assert all(head.sectionSize(j) >= head.minimumSectionSize() for j in range(3))
    assert ev.as_rows()[0] == ["metric", "average (ir + vi)", "laplacian (ir + vi)", "max (ir + vi)"]
    shots = os.environ.get("NAPARI_FUSION_SCREENSHOTS")
    if shots:  # for a look at the dock: NAPARI_FUSION_SCREENSHOTS=/some/folder
        viewer.screenshot(os.path.join(shots, "evaluate_narrow_dock.png"), canvas_only=False)
