"""Public API: arrays, layers and paths in; arrays and layers out; evaluate, segment, models."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import napari_fusion as nf
from napari_fusion import api
from napari_fusion.geometry import Grid
from napari_fusion.methods.registry import ClassInfo
from napari_fusion.samples import sample_paths


def _gray8(shape=(64, 80), seed=0):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2)
    return np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


class _FakeLayer:
    """Duck-typed napari layer (what the API reads from one)."""

    def __init__(self, data, name, scale=None, translate=None, rgb=False, metadata=None):
        n = data.ndim - (1 if rgb else 0)
        self.data, self.name, self.rgb = data, name, rgb
        self.scale = np.asarray(scale if scale is not None else np.ones(n), float)
        self.translate = np.asarray(translate if translate is not None else np.zeros(n), float)
        self.affine = np.eye(n + 1)
        self.metadata = metadata or {}


def test_public_names_are_exported():
    for name in ("fuse", "enhance", "segment", "evaluate", "finetune", "load_model", "save_model", "methods"):
        assert callable(getattr(nf, name))
    names = [m.name for m in nf.methods()]
    assert names[:3] == ["average", "max", "laplacian"]


def test_fuse_paths_equals_fuse_arrays():
    from napari_fusion.io import read_image

    pa, pb = sample_paths("ivif")
    from_paths = nf.fuse(pa, pb, "laplacian")
    a, b = read_image(pa), read_image(pb)
    from_arrays = nf.fuse(a.data, b.data, "laplacian")
    assert from_paths.shape == b.data.shape and from_paths.dtype == np.uint8
    np.testing.assert_array_equal(from_paths, from_arrays)


def test_fuse_full_result_and_progress():
    seen = []
    res = nf.fuse(_gray8(), _gray8(seed=1), "average", full=True, progress=seen.append)
    assert res.method == "average" and res.grid.shape == (64, 80) and res.labels is None
    assert seen and seen[-1].done == seen[-1].total


def test_layers_with_world_geometry_are_related_by_their_scale():
    # B covers the same field as A at half the resolution: its layer has scale 2 (+ centre shift)
    a = _gray8((64, 80))
    b_full = _gray8((64, 80), seed=3)
    b = b_full[::2, ::2]
    la = _FakeLayer(a, "ir")
    lb = _FakeLayer(b, "vi", scale=(2, 2), translate=(0.5, 0.5))
    res = nf.fuse(la, lb, "max", full=True)
    assert res.fused.shape == a.shape and res.grid.shape == a.shape
    # an A layer's metadata grid (as the reader puts it) is used as is
    g = Grid.from_scale(a.shape, 0.5, 10.0, "mm")
    src = api.as_input(_FakeLayer(a, "MRI", metadata={"grid": g}))
    assert src.grid is g


def test_viewer_gets_a_named_layer_updated_in_place():
    napari = pytest.importorskip("napari")
    viewer = napari.components.ViewerModel()
    a, b = _gray8(), _gray8(seed=2)
    la = viewer.add_image(a, name="ir", scale=(2.0, 3.0), translate=(5.0, 7.0))
    lb = viewer.add_image(b, name="vi", scale=(2.0, 3.0), translate=(5.0, 7.0))
    nf.fuse(la, lb, "average", viewer=viewer)
    assert [layer.name for layer in viewer.layers] == ["ir", "vi", "average (ir + vi)"]
    out = viewer.layers["average (ir + vi)"]
    np.testing.assert_allclose(out.scale, (2.0, 3.0))
    np.testing.assert_allclose(out.translate, (5.0, 7.0))
    out.contrast_limits = (10, 200)  # the user's display settings survive an update
    lb.data = _gray8(seed=5)
    again = nf.fuse(la, lb, "average", viewer=viewer)
    assert len(viewer.layers) == 3 and viewer.layers["average (ir + vi)"] is out
    np.testing.assert_array_equal(out.data, again)
    assert tuple(out.contrast_limits) == (10, 200)


def test_evaluate_matches_metrics_on_8bit_gray():
    from napari_fusion.metrics import fusion_metrics

    a, b = _gray8(seed=4), _gray8(seed=5)
    f = nf.fuse(a, b, "max")
    got = nf.evaluate(f, a, b)
    want = fusion_metrics(f.astype(float), a.astype(float), b.astype(float))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-9)


def test_evaluate_colour_and_segmentation():
    pa, pb = sample_paths("ivif")
    f = nf.fuse(pa, pb, "average")
    scores = nf.evaluate(f, pa, pb, labels=np.array([[0, 1], [1, 1]]), truth=np.array([[0, 1], [0, 1]]))
    assert scores["EN"] > 5 and scores["SSIM"] > 0.5
    assert scores["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)


class _Seg:
    name = "toy-seg"
    halo = 0
    classes = (ClassInfo(0, "dark", "#000000"), ClassInfo(1, "bright", "#ffffff"))

    def fuse(self, a, b):
        return np.maximum(a, b)

    def segment(self, fused, a=None, b=None):
        return (fused > 0.5).astype(np.int32)


def test_segment_pair_and_single_image():
    a, b = _gray8(seed=6), _gray8(seed=7)
    lab2 = nf.segment(a, b, _Seg())
    assert lab2.dtype == np.int32 and lab2.shape == a.shape
    np.testing.assert_array_equal(lab2, (np.maximum(a, b) / 255.0 > 0.5).astype(np.int32))
    lab1 = nf.segment(a, method=_Seg())
    np.testing.assert_array_equal(lab1, (a / 255.0 > 0.5).astype(np.int32))
    with pytest.raises(ValueError, match="does not segment"):
        nf.segment(a, b, "average")


def test_segment_adds_labels_layer():
    napari = pytest.importorskip("napari")
    viewer = napari.components.ViewerModel()
    a, b = _gray8(seed=6), _gray8(seed=7)
    nf.segment(a, b, _Seg(), viewer=viewer)
    assert viewer.layers[-1].name == "toy-seg labels (A + B)"
    assert type(viewer.layers[-1]).__name__ == "Labels"


def test_enhance_single_image_with_a_fusion_method():
    img = _gray8(seed=8)
    out = nf.enhance(img, "max")  # max(x, x) == x
    np.testing.assert_array_equal(out, img)


def test_save_and_load_model_round_trip(tmp_path):
    td = pytest.importorskip("napari_fusion.methods.tdfusion")
    runner = td.TDFusionRunner(td.FusionNet(), device="cpu", meta={"method": "tdfusion"})
    path = nf.save_model(runner, tmp_path / "m.safetensors")
    back = nf.load_model(path, device="cpu")
    a, b = _gray8(seed=1) / 255.0, _gray8(seed=2) / 255.0
    np.testing.assert_allclose(back.fuse(a.astype(np.float32), b.astype(np.float32)),
                               runner.fuse(a.astype(np.float32), b.astype(np.float32)), atol=1e-6)
    # the runner object fuses through the API like a registered method
    fused = nf.fuse(_gray8(seed=1), _gray8(seed=2), back)
    assert fused.shape == (64, 80) and fused.dtype == np.uint8


def test_save_model_refuses_classical_methods(tmp_path):
    with pytest.raises(TypeError, match="no learned weights"):
        nf.save_model("laplacian", tmp_path / "x.safetensors")


def test_finetune_delegates_with_prepared_unit_images(monkeypatch):
    """The API prepares the pair as fuse does and hands unit images to the one task loop."""
    from napari_fusion.task import loop

    calls = {}

    def tune_steps(runner, a, b, labels, *, steps, lr, class_names, class_colors, device, **kw):
        calls.update(a=a, b=b, labels=labels, steps=steps, lr=lr, device=device, names=class_names)
        yield "step"
        return "tuned"

    monkeypatch.setattr(loop, "tune_steps", tune_steps)
    ir = _gray8(seed=1)
    vi = np.stack([_gray8(seed=2)] * 2 + [_gray8(seed=3)], axis=-1)
    seen = []
    strokes = np.zeros(ir.shape, np.int32)
    out = nf.finetune("average", ir, vi, strokes, steps=3, lr=0.01, progress=seen.append, device="cpu", class_names=["bg", "obj"])
    assert out == "tuned" and seen == ["step"]
    assert calls["a"].dtype == np.float32 and calls["a"].shape == ir.shape and calls["b"].max() <= 1.0
    assert calls["steps"] == 3 and calls["device"] == "cpu" and calls["names"] == {0: "bg", 1: "obj"}
    with pytest.raises(ValueError, match="paint on A's grid"):
        nf.finetune("average", ir, vi, np.zeros((3, 3), np.int32))
