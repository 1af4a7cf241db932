"""GUI tests of the napari widgets: real viewer (pytest-qt, make_napari_viewer, Xvfb), real sample
pairs, the real fusion pipeline run through napari thread workers."""
from __future__ import annotations

import csv
import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_fusion.engine.pipeline import fuse_arrays, prepare_pair  # noqa: E402
from napari_fusion.methods.registry import ClassInfo, get_method  # noqa: E402

# one torch thread: on a busy 2-core machine, OpenMP threads fighting the GUI thread and other
# processes made a 3-step fine-tune ~10x slower
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]

PLUGIN = "napari-fusion"
WAIT = 180_000  # ms; generous for a loaded 2-core machine (jobs take seconds; fine-tuning ~10 s)


# --------------------------------------------------------------------------------------------------
# small runners with known behaviour (the widgets' job is to route data and show results)


class SlowRunner:
    """Mean of the sources, 30 ms per call: a tiled run takes long enough to be cancelled."""

    name = "slow-mean"
    halo = 0

    def __init__(self) -> None:
        self.calls = 0

    def fuse(self, a, b):
        self.calls += 1
        time.sleep(0.03)
        return (a + b) * 0.5


CLASSES = (
    ClassInfo(0, "background", "#000000"),
    ClassInfo(1, "warm", "#ff0000"),
    ClassInfo(2, "bright", "#00ff00"),
)


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


class OnePassSegmenter(ThresholdSegmenter):
    """MultiTaskVIF-like: fused image and labels from one call; counts what was called."""

    name = "one-pass"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fuse(self, a, b):
        self.calls.append("fuse")
        return super().fuse(a, b)

    def segment(self, fused, a, b):
        self.calls.append("segment")
        return super().segment(fused, a, b)

    def fuse_and_segment(self, a, b):
        self.calls.append("fuse_and_segment")
        return ThresholdSegmenter.fuse(self, a, b), ThresholdSegmenter.segment(self, None, a, b)


@pytest.fixture(autouse=True)
def _cpu(cpu_only):
    """GUI tests run on the CPU, as in CI: "auto" in the Device combo means CPU here."""



def _shelve(viewer, label: str, runner, base=None):
    from napari_fusion.widgets.models import ModelEntry, shelf_for

    return shelf_for(viewer).add(ModelEntry(label=label, runner=runner, base=base, info=f"test model {label}"))


def _wait_done(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT)


@pytest.fixture
def ivif(make_napari_viewer, sample_layers):
    viewer = make_napari_viewer()
    ir, vi = sample_layers(viewer, "ivif")
    return viewer, ir, vi


# --------------------------------------------------------------------------------------------------
# plugin discovery


def test_widgets_in_plugins_menu_and_dockable(make_napari_viewer):
    from napari.plugins import _npe2

    from napari_fusion.widgets import EvaluateWidget, FinetuneWidget, FusionPanel, FusionWidget, SegmentWidget

    viewer = make_napari_viewer()
    titles = []
    for action in viewer.window.plugins_menu.actions():
        if action.menu() is not None and action.text() == "napari fusion":
            titles = [a.text() for a in action.menu().actions()]
    assert titles == ["All tools", "Fusion", "Segment", "Evaluate", "Fine-tune"]

    expected = {
        "Fusion": FusionWidget,
        "Segment": SegmentWidget,
        "Evaluate": EvaluateWidget,
        "Fine-tune": FinetuneWidget,
        "All tools": FusionPanel,
    }
    for name, cls in expected.items():
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert isinstance(widget, cls), name
    # `napari -w napari-fusion` opens the plugin's first widget: the tabbed panel with every tool
    _, first = _npe2.get_widget_contribution(PLUGIN)
    assert first == "All tools"
    panel = viewer.window.add_plugin_dock_widget(PLUGIN, "All tools")[1]
    assert [panel.tabs.tabText(i) for i in range(panel.tabs.count())] == ["Fusion", "Segment", "Evaluate", "Fine-tune"]


# --------------------------------------------------------------------------------------------------
# Fusion widget


def test_fuse_sample_pair_through_worker_and_rerun_in_place(ivif, qtbot, notifications):
    viewer, ir, vi = ivif
    ir.scale, ir.translate = (2.0, 2.0), (10.0, -4.0)  # the result must take A's placement
    vi.scale, vi.translate = (2.0, 2.0), (10.0, -4.0)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    assert (w.source_a.currentText(), w.source_b.currentText()) == ("ir", "vi")
    assert w.method.select("laplacian")
    assert w.method.description.text() == get_method("laplacian").description
    w.device.setCurrentText("CPU")

    qtbot.mouseClick(w.fuse_button, qtbot_button())
    assert w.running  # a real worker thread, not inline
    _wait_done(qtbot, w)
    assert notifications.errors == []
    out = viewer.layers["laplacian (ir + vi)"]
    assert out.rgb and out.data.shape == (301, 496, 3) and out.data.dtype == np.uint8
    np.testing.assert_allclose(out.scale, (2.0, 2.0))
    np.testing.assert_allclose(out.translate, (10.0, -4.0))
    expected = fuse_arrays(ir.data, vi.data, "laplacian", rgb_a=False, rgb_b=True).fused
    np.testing.assert_array_equal(out.data, expected)
    assert w.progress.format() == "done"

    # again, other method: one more layer; same method again: the same layer, updated in place
    w.method.select("average")
    w.fuse()
    _wait_done(qtbot, w)
    avg = viewer.layers["average (ir + vi)"]
    n = len(viewer.layers)
    vi.data = vi.data[::-1].copy()  # new content in B
    w.fuse()
    _wait_done(qtbot, w)
    assert len(viewer.layers) == n
    assert viewer.layers["average (ir + vi)"] is avg
    np.testing.assert_array_equal(avg.data, fuse_arrays(ir.data, vi.data, "average").fused)


def qtbot_button():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_cancel_stops_the_worker_and_leaves_layers(ivif, qtbot):
    viewer, ir, vi = ivif
    runner = SlowRunner()
    _shelve(viewer, "slow", runner)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    assert w.method.select("slow")
    w.tile.setValue(64)  # 301x496 in 64-px tiles: 40 tiles, ~1.2 s when not cancelled
    names = [layer.name for layer in viewer.layers]
    w.fuse()
    qtbot.waitUntil(lambda: runner.calls >= 1, timeout=WAIT)
    qtbot.mouseClick(w.cancel_button, qtbot_button())
    _wait_done(qtbot, w)
    assert runner.calls < 40
    assert [layer.name for layer in viewer.layers] == names
    assert w.progress.format() == "cancelled"
    assert w.fuse_button.isEnabled() and not w.cancel_button.isEnabled()


def test_device_picker_offers_the_engines_devices_and_the_choice_reaches_the_core(ivif, qtbot, monkeypatch, notifications):
    """Every widget's Device combo lists engine.device.available_devices() (so a second GPU can be
    chosen), and the device chosen is what the core's step generator is called with."""
    import napari_fusion.engine.device as engine_device
    import napari_fusion.engine.pipeline as pipeline

    monkeypatch.setattr(engine_device, "available_devices", lambda: ["cpu", "cuda:0", "cuda:1"])
    viewer, ir, vi = ivif
    _shelve(viewer, "threshold", ThresholdSegmenter())
    fusion = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")[1]
    segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")[1]
    finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")[1]
    for w in (fusion, segment, finetune):
        assert w.device.devices() == ["cpu", "cuda:0", "cuda:1"]
        assert [w.device.itemText(i) for i in range(w.device.count())] == ["auto", "CPU", "cuda:0", "cuda:1"]
        assert w.device.device() == "auto"
        assert w.device.set_device("cuda:1") and w.device.device() == "cuda:1"
        assert not w.device.set_device("mps")

    seen = []
    real_fuse, real_segment = pipeline.fuse_steps, pipeline.segment_steps

    def fuse_steps(a, b, method, **kw):  # records the device, then runs on the CPU this machine has
        seen.append(("fuse", kw["device"]))
        return (yield from real_fuse(a, b, method, **{**kw, "device": "cpu"}))

    def segment_steps(a, b, method, **kw):
        seen.append(("segment", kw["device"]))
        return (yield from real_segment(a, b, method, **{**kw, "device": "cpu"}))

    monkeypatch.setattr(pipeline, "fuse_steps", fuse_steps)
    monkeypatch.setattr(pipeline, "segment_steps", segment_steps)
    assert fusion.method.select("average")
    fusion.fuse()
    _wait_done(qtbot, fusion)
    assert segment.method.select("threshold")
    segment.segment()
    _wait_done(qtbot, segment)
    assert finetune.model.select("threshold")
    finetune.apply()
    _wait_done(qtbot, finetune)
    # (the engine's own inner calls, made with the "cpu" substituted above, are left out)
    assert [x for x in seen if x[1] != "cpu"] == [("fuse", "cuda:1"), ("segment", "cuda:1"), ("fuse", "cuda:1")]
    assert notifications.errors == []
    assert {"average (ir + vi)", "threshold labels (ir + vi)", "threshold (ir + vi)"} <= {x.name for x in viewer.layers}

    # Fine-tune resolves the chosen device in its job: a device that is not there fails the job with
    # a notification naming the inputs and the problem, and changes no layer
    asked = []

    def resolve_device(pref="auto"):
        asked.append(pref)
        raise RuntimeError(f"device {pref!r} was requested but this machine has no CUDA device")

    monkeypatch.setattr(engine_device, "resolve_device", resolve_device)
    strokes = finetune.new_strokes_layer()
    strokes.data[10:20, 10:60] = 1
    strokes.data[200:210, 10:60] = 2
    names = [x.name for x in viewer.layers]
    finetune.steps.setValue(0)
    finetune.finetune()
    _wait_done(qtbot, finetune)
    assert asked == ["cuda:1"]
    assert [x.name for x in viewer.layers] == names
    assert finetune.progress.format() == "failed"
    assert "'ir' + 'vi' failed" in notifications.errors[-1] and "'cuda:1'" in notifications.errors[-1]


def test_mismatched_pair_notifies_and_leaves_layers_untouched(make_napari_viewer, qtbot, notifications):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    a = viewer.add_image(rng.random((480, 640), dtype=np.float32), name="big")
    b = viewer.add_image(rng.random((301, 471), dtype=np.float32), name="odd")
    before_a, before_b = a.data.copy(), b.data.copy()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    w.source_a.set_layer("big")
    w.source_b.set_layer("odd")
    w.method.select("average")
    w.fuse()
    _wait_done(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["big", "odd"]
    np.testing.assert_array_equal(a.data, before_a)
    np.testing.assert_array_equal(b.data, before_b)
    assert len(notifications.errors) == 1
    msg = notifications.errors[0]
    assert "301x471" in msg and "480x640" in msg and "no known resolution ratio" in msg
    assert w.progress.format() == "failed"


class OutOfMemoryRunner:
    """Fails as a GPU that runs out of memory does (torch raises a RuntimeError)."""

    name = "oom"

    def fuse(self, a, b):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_runtime_error_in_the_worker_fails_the_job_instead_of_hanging(ivif, qtbot, notifications):
    """superqt's worker takes a RuntimeError from the generator for a deleted worker and never says
    the job finished: the job base carries it through, so the widget reports it and is usable again."""
    viewer, ir, vi = ivif
    _shelve(viewer, "oom", OutOfMemoryRunner())
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    assert w.method.select("oom")
    names = [x.name for x in viewer.layers]
    w.fuse()
    _wait_done(qtbot, w)
    assert [x.name for x in viewer.layers] == names
    assert w.progress.format() == "failed" and w.fuse_button.isEnabled() and not w.cancel_button.isEnabled()
    assert notifications.errors[-1] == "Fusion of 'ir' and 'vi' with oom failed: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_source_b_offers_compatible_layers_and_follows_the_layer_list(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((20, 30), np.float32), name="img a")
    viewer.add_image(np.zeros((5, 20, 30), np.float32), name="vol")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    w.source_a.set_layer("img a")
    items = lambda c: [c.itemText(i) for i in range(c.count())]  # noqa: E731
    assert items(w.source_b) == []  # a volume cannot be fused with a 2-D image
    viewer.add_image(np.ones((40, 60), np.float32), name="img b")
    assert items(w.source_b) == ["img b"]
    viewer.layers["img b"].name = "renamed"
    assert items(w.source_b) == ["renamed"]
    viewer.layers.remove("renamed")
    assert items(w.source_b) == []
    w.source_a.set_layer("vol")
    viewer.add_image(np.ones((5, 10, 15), np.float32), name="vol b")
    assert items(w.source_b) == ["vol b"]


def test_volumes_fuse_slice_by_slice_onto_a_world_grid(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    va = rng.random((6, 40, 48), dtype=np.float32)
    vb = rng.random((6, 40, 48), dtype=np.float32)
    viewer.add_image(va, name="t1", scale=(3.0, 0.5, 0.5), translate=(5.0, 1.0, 2.0))
    viewer.add_image(vb, name="t2", scale=(3.0, 0.5, 0.5), translate=(5.0, 1.0, 2.0))
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    w.source_a.set_layer("t1")
    w.source_b.set_layer("t2")
    w.method.select("max")
    seen = []
    show = w.progress.show_progress
    w.progress.show_progress = lambda p: (seen.append((p.done, p.total, p.stage)), show(p))
    w.fuse()
    _wait_done(qtbot, w)
    out = viewer.layers["max (t1 + t2)"]
    assert out.data.shape == (6, 40, 48)
    np.testing.assert_allclose(out.scale, (3.0, 0.5, 0.5))
    np.testing.assert_allclose(out.translate, (5.0, 1.0, 2.0))
    assert [s[0] for s in seen if s[2] == "slices"] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(out.data, fuse_arrays(va, vb, "max").fused)


def test_pan_ms_band_layers_fuse_as_one_multiband_source(make_napari_viewer, qtbot, sample_layers):
    viewer = make_napari_viewer()
    layers = sample_layers(viewer, "pan_ms")
    pan = layers[0]
    bands = [x for x in layers[1:]]
    assert len(bands) == 3
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    w.source_a.set_layer(pan)
    label = [w.source_b.itemText(i) for i in range(w.source_b.count()) if "bands" in w.source_b.itemText(i)]
    assert len(label) == 1 and label[0].endswith("(all 3 bands)")
    w.source_b.setCurrentText(label[0])
    w.method.select("average")
    w.fuse()
    _wait_done(qtbot, w)
    out = [x for x in viewer.layers if x.name.startswith(f"average ({pan.name} + ")]
    assert len(out) == 3
    for band_out, band_in in zip(out, bands):
        assert band_out.data.shape == pan.data.shape
        np.testing.assert_allclose(band_out.scale, pan.scale)
        assert band_out.colormap.name == band_in.colormap.name
    ms = np.stack([x.data for x in bands])
    from napari_fusion.widgets.layers import grid_of

    ref = fuse_arrays(pan.data, ms, "average", grid_a=grid_of(pan), grid_b=grid_of(bands[0]), channel_axis_b=0).fused
    np.testing.assert_array_equal(np.stack([x.data for x in out]), ref)


def test_enhance_button_tracks_gifnet_availability(ivif, qtbot):
    viewer, ir, vi = ivif
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    from napari_fusion.widgets.models import missing_weights

    try:
        usable = missing_weights(get_method("gifnet")) is None
    except KeyError:
        usable = False
    if not usable:
        assert not w.enhance_button.isEnabled()
        assert "gifnet" in w.enhance_button.toolTip()
        return
    assert w.enhance_button.isEnabled()
    w.source_a.set_layer("vi")
    w.enhance()
    _wait_done(qtbot, w)
    out = viewer.layers["gifnet enhanced (vi)"]
    assert out.rgb and out.data.shape == vi.data.shape


# --------------------------------------------------------------------------------------------------
# Segment widget


def test_segment_gives_labels_with_class_colours_and_names(ivif, qtbot, notifications):
    viewer, ir, vi = ivif
    runner = ThresholdSegmenter()
    _shelve(viewer, "threshold", runner)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert w.method.select("threshold")
    w.source_a.set_layer("ir")
    w.source_b.set_layer("vi")
    w.segment()
    _wait_done(qtbot, w)
    assert notifications.errors == []
    lab = viewer.layers["threshold labels (ir + vi)"]
    assert isinstance(lab, napari.layers.Labels)
    ref = fuse_arrays(ir.data, vi.data, runner, segment=True)
    np.testing.assert_array_equal(lab.data, ref.labels)
    assert set(np.unique(lab.data)) == {0, 1, 2}
    np.testing.assert_allclose(lab.colormap.map(np.array([1]))[0], [1, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(lab.colormap.map(np.array([2]))[0], [0, 1, 0, 1], atol=1e-6)
    assert lab.colormap.map(np.array([0]))[0][3] == 0  # background transparent
    assert dict(zip(lab.features["index"], lab.features["class"])) == {0: "background", 1: "warm", 2: "bright"}
    assert "threshold (ir + vi)" in viewer.layers  # the fused image of the same run
    assert "warm" in w.legend.text()


def test_one_pass_method_fills_fused_and_labels_from_one_call(ivif, qtbot):
    viewer, ir, vi = ivif
    runner = OnePassSegmenter()
    _shelve(viewer, "one-pass", runner)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    w.method.select("one-pass")
    w.source_a.set_layer("ir")
    w.source_b.set_layer("vi")
    w.segment()
    _wait_done(qtbot, w)
    assert runner.calls == ["fuse_and_segment"]
    fused = viewer.layers["one-pass (ir + vi)"]
    lab = viewer.layers["one-pass labels (ir + vi)"]
    assert fused.data.shape == (301, 496, 3) and lab.data.shape == (301, 496)
    # the same run again updates both layers in place
    n = len(viewer.layers)
    w.segment()
    _wait_done(qtbot, w)
    assert len(viewer.layers) == n and viewer.layers["one-pass labels (ir + vi)"] is lab


def test_segment_single_image(ivif, qtbot):
    viewer, ir, vi = ivif
    _shelve(viewer, "threshold", ThresholdSegmenter())
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    w.method.select("threshold")
    w.source_a.setCurrentIndex(0)  # (none): segment one image
    w.source_b.setCurrentIndex(0)
    w.image.set_layer("ir")
    w.segment()
    _wait_done(qtbot, w)
    lab = viewer.layers["threshold labels (ir)"]
    u = ir.data.astype(np.float32) / 255.0
    np.testing.assert_array_equal(lab.data, np.where(u > 0.6, 1, 0))  # A == B == ir: class 1 only


def test_segment_with_the_shipped_brats_model(make_napari_viewer, qtbot, sample_layers):
    """The real segmenter: the model's own class names and colours reach the Labels layer."""
    from napari_fusion.methods.registry import build_runner

    try:
        runner = build_runner("tdfusion-brats", device="cpu")
    except FileNotFoundError:
        pytest.skip("tdfusion-brats weights are not installed in this build")
    viewer = make_napari_viewer()
    mri, ct = sample_layers(viewer, "mri_ct")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert w.method.select("tdfusion-brats")
    w.source_a.set_layer(mri)
    w.source_b.set_layer(ct)
    w.segment()
    _wait_done(qtbot, w)
    lab = viewer.layers[f"tdfusion-brats labels ({mri.name} + {ct.name})"]
    assert lab.data.shape == mri.data.shape[:2]
    ref = fuse_arrays(mri.data, ct.data, "tdfusion-brats", grid_a=grid_of_layer(mri), grid_b=grid_of_layer(ct))
    np.testing.assert_array_equal(lab.data, ref.labels)
    for c in runner.classes:
        if c.index:
            want = [int(c.color[i : i + 2], 16) / 255 for i in (1, 3, 5)] + [1.0]
            np.testing.assert_allclose(lab.colormap.map(np.array([c.index]))[0], want, atol=1e-6)
    names = dict(zip(lab.features["index"], lab.features["class"]))
    assert all(names[c.index] == c.name for c in runner.classes)


def test_segment_with_the_shipped_multitaskvif_fills_both_layers(make_napari_viewer, qtbot, sample_layers):
    """The real MultiTaskVIF: one run gives the fused image and the labels, equal to the pipeline's."""
    from napari_fusion.methods.registry import build_runner

    try:
        build_runner("multitaskvif", device="cpu")
    except FileNotFoundError:
        pytest.skip("multitaskvif weights are not installed in this build")
    viewer = make_napari_viewer()
    mri, ct = sample_layers(viewer, "mri_ct")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert w.method.select("multitaskvif")
    w.source_a.set_layer(mri)
    w.source_b.set_layer(ct)
    w.segment()
    _wait_done(qtbot, w)
    ref = fuse_arrays(mri.data, ct.data, "multitaskvif", grid_a=grid_of_layer(mri), grid_b=grid_of_layer(ct), segment=True)
    lab = viewer.layers[f"multitaskvif labels ({mri.name} + {ct.name})"]
    fused = [x for x in viewer.layers if x.name.startswith("multitaskvif (")]
    assert len(fused) == 1 and isinstance(fused[0], napari.layers.Image)
    np.testing.assert_array_equal(lab.data, ref.labels)
    np.testing.assert_array_equal(np.asarray(fused[0].data), np.asarray(ref.fused))


def grid_of_layer(layer):
    from napari_fusion.widgets.layers import grid_of

    return grid_of(layer)


# --------------------------------------------------------------------------------------------------
# Evaluate widget


def test_evaluate_fills_table_copies_and_exports_csv(ivif, qtbot, tmp_path, notifications):
    from qtpy.QtWidgets import QApplication

    from napari_fusion.metrics import METRIC_NAMES, as_gray255, entropy, fusion_metrics

    viewer, ir, vi = ivif
    _, fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    fw.method.select("average")
    fw.fuse()
    _wait_done(qtbot, fw)
    fused = viewer.layers["average (ir + vi)"]

    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    w.fused.set_layer(fused)
    assert (w.source_a.currentText(), w.source_b.currentText()) == ("ir", "vi")  # from the layer's metadata
    w.evaluate()
    _wait_done(qtbot, w)
    assert notifications.errors == []
    res = w.results["average (ir + vi)"]
    assert list(res) == list(METRIC_NAMES)
    f, a, b = as_gray255(fused.data), as_gray255(ir.data), as_gray255(vi.data)
    ref = fusion_metrics(f, a, b)
    for k in METRIC_NAMES:
        assert res[k] == pytest.approx(ref[k], rel=2e-3, abs=1e-4), k
    assert res["EN"] == pytest.approx(entropy(f), rel=2e-3)
    assert w.table.rowCount() == 9 and w.table.columnCount() == 1
    assert [w.table.verticalHeaderItem(i).text() for i in range(9)] == list(METRIC_NAMES)
    assert float(w.table.item(0, 0).text()) == pytest.approx(res["EN"], abs=1e-4)

    text = w.copy()
    assert QApplication.clipboard().text() == text
    assert text.splitlines()[0] == "metric\taverage (ir + vi)"
    path = w.export_csv(tmp_path / "m.csv")
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["metric", "average (ir + vi)"]
    assert [r[0] for r in rows[1:]] == list(METRIC_NAMES)
    assert float(rows[2][1]) == pytest.approx(res["SD"], abs=1e-4)


def test_evaluate_segmentation_against_ground_truth(ivif, qtbot):
    viewer, ir, vi = ivif
    truth = np.zeros((301, 496), np.int32)
    truth[:100] = 1
    pred = np.zeros_like(truth)
    pred[:50] = 1
    viewer.add_labels(truth, name="truth")
    viewer.add_labels(pred, name="pred", features={"index": [0, 1], "class": ["ground", "sky"]})
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    w.fused.set_layer("vi")  # any image on A's grid can be scored against the sources
    w.source_a.set_layer("ir")
    w.source_b.set_layer("vi")
    w.prediction.set_layer("pred")
    w.truth.set_layer("truth")
    # a third of the pixels nonzero and made in the viewer: taken for painted strokes by default;
    # this truth is a complete map (0 = ground), so 0 is a class here
    assert w.ignore_unpainted.isChecked()
    w.ignore_unpainted.setChecked(False)
    w.evaluate()
    _wait_done(qtbot, w)
    res = w.results["vi"]
    iou_sky, iou_ground = 50 / 100, 201 / 251
    assert res["IoU/sky"] == pytest.approx(iou_sky)
    assert res["IoU/ground"] == pytest.approx(iou_ground)
    assert res["mIoU"] == pytest.approx((iou_sky + iou_ground) / 2)
    assert "mIoU" in [w.table.verticalHeaderItem(i).text() for i in range(w.table.rowCount())]


# --------------------------------------------------------------------------------------------------
# Fine-tune widget


def _strokes(viewer, shape, name="strokes"):
    """Two painted classes, ~4% of the pixels: a few strokes as a user would paint them."""
    h, w = shape
    lab = np.zeros(shape, np.int32)
    lab[h // 5 : h // 5 + 3, w // 8 : w // 2] = 1
    lab[3 * h // 4 : 3 * h // 4 + 3, w // 3 : 7 * w // 8] = 2
    return viewer.add_labels(lab, name=name)


def _crop(ir, vi):
    """A 96x128 crop of the sample pair: fine-tuning on CPU in a test stays within seconds."""
    ir.data = ir.data[100:196, 200:328].copy()
    vi.data = vi.data[100:196, 200:328].copy()
    return (96, 128)


def test_finetune_refuses_bad_labels_and_changes_nothing(ivif, qtbot, notifications):
    viewer, ir, vi = ivif
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    w.source_a.set_layer("ir")
    w.source_b.set_layer("vi")
    viewer.add_labels(np.zeros((301, 496), np.int32), name="empty")
    viewer.add_labels(np.ones((100, 100), np.int32), name="small")
    names = [layer.name for layer in viewer.layers]
    entries = len(w.shelf.entries())

    w.strokes.set_layer("empty")
    assert w.finetune() is None
    assert "'empty' is empty" in notifications.errors[-1]
    w.strokes.set_layer("small")
    assert w.finetune() is None
    assert "100x100" in notifications.errors[-1] and "301x496" in notifications.errors[-1]
    assert len(notifications.errors) == 2
    assert [layer.name for layer in viewer.layers] == names
    assert len(w.shelf.entries()) == entries and not w.running


def test_new_strokes_layer_is_on_a_grid_and_ready_to_paint(ivif):
    viewer, ir, vi = ivif
    ir.scale = (2.0, 3.0)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    w.source_a.set_layer("ir")
    layer = w.new_strokes_layer()
    assert layer.data.shape == (301, 496) and not layer.data.any()
    np.testing.assert_allclose(layer.scale, (2.0, 3.0))
    assert layer.mode == "paint" and w.strokes.layer().name == layer.name


def test_load_garbage_or_pickle_shows_error_and_changes_nothing(ivif, tmp_path, notifications):
    import pickle

    viewer, ir, vi = ivif
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    before = (w.model.label(), [w.model.combo.itemText(i) for i in range(w.model.combo.count())], len(w.shelf.entries()))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(range(256)))
    pick = tmp_path / "model.pt"
    pick.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=2))
    assert w.load(garbage) is None
    assert w.load(pick) is None
    assert w.load(tmp_path / "missing.safetensors") is None
    errs = notifications.errors
    assert len(errs) == 3
    assert "garbage.safetensors" in errs[0]
    assert "pickle" in errs[1]
    assert "does not exist" in errs[2]
    after = (w.model.label(), [w.model.combo.itemText(i) for i in range(w.model.combo.count())], len(w.shelf.entries()))
    assert after == before


def _model_file(tmp_path) -> tuple[str, object]:
    """A TDFusion model file: the shipped IR/visible base when it is installed, else a freshly
    initialised one (the widget's job, routing and showing, is the same)."""
    pytest.importorskip("napari_fusion.training.finetune")
    from napari_fusion.methods.registry import build_runner
    from napari_fusion.methods.store import save_bundle
    from napari_fusion.methods.tdfusion import FusionNet, TDFusionRunner

    try:
        runner = build_runner("tdfusion", device="cpu")
    except FileNotFoundError:
        import torch

        torch.manual_seed(0)
        runner = TDFusionRunner(FusionNet(), device="cpu", meta={"method": "tdfusion"})
    tensors, meta = runner.to_bundle()
    meta["label"] = "base"
    return save_bundle(tmp_path / "base.safetensors", tensors, meta), runner


def test_finetune_from_strokes_owns_its_layers_save_and_load(ivif, qtbot, tmp_path, notifications):
    viewer, ir, vi = ivif
    shape = _crop(ir, vi)
    path, _ = _model_file(tmp_path)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    w.source_a.set_layer("ir")
    w.source_b.set_layer("vi")
    entry = w.load(path)
    assert entry is not None and w.model.label() == "base"
    w.apply()  # the base model's result, as the Fusion widget would show it
    _wait_done(qtbot, w)
    fused = viewer.layers["base (ir + vi)"]
    before = fused.data.copy()

    _strokes(viewer, shape)
    w.strokes.set_layer("strokes")
    w.steps.setValue(3)
    n = len(viewer.layers)
    w.finetune()
    assert w.running
    _wait_done(qtbot, w)
    assert notifications.errors == []
    assert [s for s, _, _ in w.losses] == [1, 2, 3]
    assert all(np.isfinite(t) and np.isfinite(f) for _, t, f in w.losses)
    assert w.loss.text().startswith("step 3/3, task loss")
    assert [s for _, s in w.updates][0] == "instant" and w.updates[-1][1] == "refreshed"
    # the job's own layers, named after the tuned model and its inputs; the base's layer is neither
    # renamed nor rewritten; the strokes stay on top for more painting
    assert fused.name == "base (ir + vi)"
    np.testing.assert_array_equal(fused.data, before)
    tuned_fused = viewer.layers["base tuned (ir + vi)"]
    assert not np.array_equal(tuned_fused.data, before)
    lab = viewer.layers["base tuned labels (ir + vi)"]
    assert set(np.unique(lab.data)) == {1, 2}
    assert [c.index for c in w.current_entry().runner.classes] == [1, 2]  # exactly the painted classes
    strokes = viewer.layers["strokes"]
    for v in (1, 2):  # the classes keep the colours the user painted them with
        np.testing.assert_allclose(lab.colormap.map(np.array([v]))[0][:3], strokes.colormap.map(np.array([v]))[0][:3], atol=1 / 255)
    assert len(viewer.layers) == n + 2
    assert viewer.layers[-1].name == "strokes"
    assert w.model.label() == "base tuned"
    tuned, tuned_labels = tuned_fused.data.copy(), lab.data.copy()

    saved = w.save(tmp_path / "mine.safetensors")
    assert saved is not None and saved.is_file()
    assert not list(tmp_path.glob(".mine*"))  # no temporary left by the atomic write
    w.model.select("base")
    w.apply()
    _wait_done(qtbot, w)
    np.testing.assert_array_equal(fused.data, before)
    assert fused.name == "base (ir + vi)"
    loaded = w.load(saved)
    assert loaded is not None and w.model.label() == loaded.label
    w.apply()
    _wait_done(qtbot, w)
    # the saved file reproduces the tuned model (fused image and the head's labels)
    again = viewer.layers[f"{loaded.label} (ir + vi)"]
    np.testing.assert_allclose(again.data.astype(float), tuned.astype(float), atol=1)
    assert float(np.mean(viewer.layers[f"{loaded.label} labels (ir + vi)"].data == tuned_labels)) > 0.99
    assert notifications.errors == []


def test_reset_returns_to_the_shipped_model(ivif, qtbot):
    pytest.importorskip("napari_fusion.training.finetune")
    from napari_fusion.methods.registry import build_runner

    try:
        build_runner("tdfusion", device="cpu")
    except FileNotFoundError:
        pytest.skip("the shipped tdfusion weights are not in this build")
    viewer, ir, vi = ivif
    shape = _crop(ir, vi)
    _, fw = viewer.window.add_plugin_dock_widget(PLUGIN, "Fusion")
    fw.method.select("tdfusion")
    fw.fuse()
    _wait_done(qtbot, fw)
    fused = viewer.layers["tdfusion (ir + vi)"]
    shipped = fused.data.copy()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    w.source_a.set_layer("ir")
    w.source_b.set_layer("vi")
    _strokes(viewer, shape)
    w.strokes.set_layer("strokes")
    w.model.select("tdfusion")
    w.steps.setValue(2)
    w.finetune()
    _wait_done(qtbot, w)
    # fine-tuning never renames or rewrites the Fusion widget's layer (issue 17)
    assert fused.name == "tdfusion (ir + vi)"
    np.testing.assert_array_equal(fused.data, shipped)
    assert "tdfusion tuned labels (ir + vi)" in viewer.layers and "tdfusion tuned (ir + vi)" in viewer.layers
    # Reset: the shipped model again, the tuned layers gone (issue 17: it used to leave the labels)
    w.reset()
    assert w.model.label() == "tdfusion"
    # (the shipped tdfusion segments: the Fusion widget's own labels layer stays too)
    assert [x.name for x in viewer.layers] == ["ir", "vi", "tdfusion (ir + vi)", "tdfusion labels (ir + vi)", "strokes"]
    np.testing.assert_array_equal(fused.data, shipped)


# --------------------------------------------------------------------------------------------------
# helpers with behaviour of their own


def test_grid_of_layer_matches_napari_transform(make_napari_viewer):
    from napari_fusion.widgets.layers import grid_of

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((10, 12), np.float32), scale=(2.0, 0.5), translate=(3.0, -1.0), rotate=30)
    g = grid_of(layer)
    assert g.shape == (10, 12)
    for idx in ((0, 0), (9, 11), (4, 7)):
        np.testing.assert_allclose(g.index_to_world(np.array(idx, float)), layer.data_to_world(idx), atol=1e-9)


def test_prepare_pair_units_used_by_evaluate_match_the_engine(ivif):
    """The Evaluate widget's unit sources are exactly what fusion saw (same preparation)."""
    from napari_fusion.widgets.layers import source_kwargs

    viewer, ir, vi = ivif
    prep = prepare_pair(ir.data, vi.data, **source_kwargs(ir, "a"), **source_kwargs(vi, "b"))
    np.testing.assert_allclose(prep.a, ir.data / 255.0, atol=1e-6)
    assert prep.chroma_from == "B"
