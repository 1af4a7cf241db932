"""Fusion metrics (EN ... SCD) and segmentation metrics: hand-computed values and known properties."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from napari_fusion.metrics import (
    METRIC_DESCRIPTIONS,
    METRIC_NAMES,
    QABF_MAX,
    as_gray255,
    average_gradient,
    confusion_matrix,
    entropy,
    fusion_metrics,
    mutual_information,
    qabf,
    scd,
    segmentation_metrics,
    spatial_frequency,
    ssim,
    std,
    vif,
)
from napari_fusion.metrics.fusion import _vif_term
from napari_fusion.methods.classes import BRATS_CLASSES
from napari_fusion.training.data import shared_data_dir

RNG = np.random.default_rng(0)


def _textured(shape=(64, 80), seed=0) -> np.ndarray:
    """A smooth-plus-noise 0..255 test image with structure at several scales."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    x = 100 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 15, shape)
    return np.clip(np.round(x), 0, 255)


# ----------------------------------------------------------------------------- single-image metrics
def test_entropy_hand_values():
    half = np.zeros((4, 4))
    half[:, 2:] = 200
    assert entropy(half) == pytest.approx(1.0)  # two equally likely levels: 1 bit
    quarters = np.repeat(np.array([[0, 50, 100, 150]]), 3, axis=0)
    assert entropy(quarters) == pytest.approx(2.0)
    skewed = np.array([[0, 0, 0, 255]])  # p = 3/4, 1/4
    assert entropy(skewed) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    # floats are binned by rounding to the nearest grey level
    assert entropy(np.array([[10.2, 9.8], [10.4, 9.6]])) == pytest.approx(0.0)


def test_std_hand_values():
    x = np.array([[0, 100], [0, 100]])
    assert std(x) == pytest.approx(50.0)
    assert std(np.array([[1, 2, 3, 4]], np.uint8)) == pytest.approx(math.sqrt(1.25))


def test_spatial_frequency_ramp_and_checkerboard():
    ramp = np.tile(10.0 * np.arange(5), (4, 1))  # horizontal steps of 10, no vertical change
    assert spatial_frequency(ramp) == pytest.approx(10.0)
    checker = 100.0 * (np.indices((4, 4)).sum(0) % 2)
    assert spatial_frequency(checker) == pytest.approx(math.hypot(100, 100))


def test_average_gradient_ramp_and_checkerboard():
    ramp = np.tile(10.0 * np.arange(5), (4, 1))
    assert average_gradient(ramp) == pytest.approx(math.sqrt(100 / 2))
    # 4x4 checkerboard: central differences vanish inside; one-sided +-100 on the border columns
    # and rows. Corners: sqrt((100^2+100^2)/2) = 100 (x4); other border pixels 100/sqrt(2) (x8).
    checker = 100.0 * (np.indices((4, 4)).sum(0) % 2)
    assert average_gradient(checker) == pytest.approx((4 * 100 + 8 * 100 / math.sqrt(2)) / 16)


def test_constant_image_has_no_information():
    c = np.full((50, 60), 87.0)
    assert entropy(c) == 0.0
    assert std(c) == 0.0
    assert spatial_frequency(c) == 0.0
    assert average_gradient(c) == 0.0


# ----------------------------------------------------------------------------- reference metrics
def test_mutual_information_hand_values_and_mi_a_a_equals_en():
    left = np.zeros((8, 8))
    left[:, 4:] = 255
    top = np.zeros((8, 8))
    top[4:, :] = 255
    # F = A: MI(A,F) = H(A) = 1 bit; B independent of F: MI(B,F) = 0
    assert mutual_information(left, left, top) == pytest.approx(1.0)
    a = _textured()
    const = np.zeros_like(a)
    assert mutual_information(a, a, const) == pytest.approx(entropy(a))
    assert mutual_information(a, a, a) == pytest.approx(2 * entropy(a))


def test_ssim_of_source_is_one():
    a, b = _textured(seed=1), _textured(seed=2)
    assert ssim(a, a, a) == pytest.approx(2.0)
    from skimage.metrics import structural_similarity

    assert ssim(a, a, b) == pytest.approx(1.0 + structural_similarity(a, b, data_range=255))
    assert ssim(a, a, b) < 2.0 - 1e-3


def test_vif_of_source_is_one_per_term():
    a, b = _textured((64, 64), 3), _textured((64, 64), 4)
    assert _vif_term(a, a) == pytest.approx(1.0, abs=1e-9)
    assert vif(a, a, a) == pytest.approx(2.0, abs=1e-9)
    assert vif(a, a, b) == pytest.approx(1.0 + _vif_term(b, a))
    assert 0.0 < _vif_term(b, a) < 0.5  # unrelated textures share little information
    # a flat fused image keeps no information of either source
    assert vif(np.full_like(a, 120.0), a, b) == pytest.approx(0.0, abs=1e-12)
    # a noisy copy keeps part of it
    noisy = np.clip(a + RNG.normal(0, 20, a.shape), 0, 255)
    assert 0.2 < _vif_term(a, noisy) < 0.9


def _vif_term_2d(ref: np.ndarray, dist: np.ndarray) -> float:
    """Independent check of the separable filtering: the same model with full 2-D windows."""
    from scipy.signal import convolve2d

    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        r = np.arange(n) - (n - 1) / 2
        w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (n / 5) ** 2))
        w /= w.sum()
        filt = lambda x: convolve2d(x, w, mode="valid")  # noqa: E731 (w is symmetric)
        if scale > 1:
            ref, dist = filt(ref)[::2, ::2], filt(dist)[::2, ::2]
        m1, m2 = filt(ref), filt(dist)
        s1 = np.maximum(filt(ref * ref) - m1 * m1, 0)
        s2 = np.maximum(filt(dist * dist) - m2 * m2, 0)
        s12 = filt(ref * dist) - m1 * m2
        g = np.where(s1 < 1e-10, 0, s12 / (s1 + 1e-10))
        sv = np.where(s1 < 1e-10, s2, s2 - g * s12)
        s1 = np.where(s1 < 1e-10, 0, s1)
        g, sv = np.where(s2 < 1e-10, 0, g), np.where(s2 < 1e-10, 0, sv)
        sv, g = np.where(g < 0, s2, sv), np.maximum(g, 0)
        sv = np.maximum(sv, 1e-10)
        num += np.log10(1 + g * g * s1 / (sv + 2)).sum()
        den += np.log10(1 + s1 / 2).sum()
    return num / den


def test_vif_matches_full_2d_window_computation():
    a, b = _textured((70, 90), 5), _textured((70, 90), 6)
    f = np.round(0.6 * a + 0.4 * b)
    assert vif(f, a, b) == pytest.approx(_vif_term_2d(a, f) + _vif_term_2d(b, f), rel=1e-9)


def test_qabf_perfect_and_empty_fusion():
    a = _textured(seed=7)
    assert QABF_MAX == pytest.approx(0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4)))
    assert QABF_MAX == pytest.approx(0.97479, abs=1e-5)
    assert qabf(a, a, a) == pytest.approx(QABF_MAX)
    b = _textured(seed=8)
    assert qabf(np.zeros_like(a), a, b) < 0.01  # no edge survives
    avg = np.round((a + b) / 2)
    assert 0.1 < qabf(avg, a, b) < QABF_MAX - 0.05  # averaging halves each source's edges
    # edges of a straight step: a fused image with the step keeps it, a blurred one less
    step = np.zeros((32, 32))
    step[:, 16:] = 200
    from scipy import ndimage

    blurred = ndimage.uniform_filter(step, 5)
    assert qabf(step, step, np.zeros_like(step)) > qabf(blurred, step, np.zeros_like(step))


def test_scd_hand_value_and_symmetry():
    a = np.round(RNG.uniform(0, 100, (40, 50)))
    b = np.round(RNG.uniform(0, 100, (40, 50)))
    # F = A + B: F - B = A and F - A = B, both correlations are 1
    assert scd(a + b, a, b) == pytest.approx(2.0)
    f = np.round(0.7 * a + 0.3 * b + RNG.normal(0, 5, a.shape)).clip(0, 255)
    assert scd(f, a, b) == pytest.approx(scd(f, b, a))
    # F = A: F - A is constant, contributes 0; corr(A - B, A) for independent A, B is 1/sqrt(2)
    assert scd(a, a, b) == pytest.approx(1 / math.sqrt(2), abs=0.05)


def test_fusion_metrics_order_subset_and_descriptions():
    a, b = _textured(seed=9), _textured(seed=10)
    f = np.round((a + b) / 2)
    m = fusion_metrics(f, a, b)
    assert tuple(m) == METRIC_NAMES == ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM", "SCD")
    assert m["EN"] == pytest.approx(entropy(f)) and m["Qabf"] == pytest.approx(qabf(f, a, b))
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    sub = fusion_metrics(f, a, b, which=["qabf", "EN"])
    assert list(sub) == ["Qabf", "EN"] and sub["EN"] == m["EN"]
    assert set(METRIC_DESCRIPTIONS) == set(METRIC_NAMES)
    assert all(len(d) > 20 for d in METRIC_DESCRIPTIONS.values())
    with pytest.raises(ValueError, match="unknown fusion metric 'PSNR'"):
        fusion_metrics(f, a, b, which=["PSNR"])
    # uint8 input gives the same numbers as float input
    m8 = fusion_metrics(f.astype(np.uint8), a.astype(np.uint8), b.astype(np.uint8))
    assert m8 == pytest.approx(m)


def test_bad_inputs_name_the_problem():
    a = _textured()
    with pytest.raises(ValueError, match=r"fused is 64x80, source A is 64x80 and source B is 60x80"):
        fusion_metrics(a, a, a[:60])
    nan = a.copy()
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="source B contains 1 NaN"):
        fusion_metrics(a, a, nan)
    with pytest.raises(ValueError, match=r"fused is 3-D .*Y channel"):
        fusion_metrics(np.stack([a] * 3, -1), a, a)
    with pytest.raises(ValueError, match=r"source A has values in [0-9.]+\.\.1000; .*0\.\.255"):
        fusion_metrics(a, a * 1000 / a.max(), a)
    with pytest.raises(ValueError, match=r"all lie in \[0, 1\]"):
        fusion_metrics(a / 255, a / 255, a / 255)
    dark = (a > 128).astype(np.float64)  # a rounded 0..255 image that is only 0s and 1s is valid
    assert fusion_metrics(dark, dark, dark, which="SSIM")["SSIM"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 41x41"):
        vif(a[:30, :30], a[:30, :30], a[:30, :30])
    with pytest.raises(ValueError, match="is empty"):
        entropy(np.zeros((0, 4)))


def test_as_gray255_conversions():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert np.all(as_gray255(red) == round(0.299 * 255))
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    assert np.allclose(as_gray255(unit), [[0, 128], [255, 64]])
    assert np.allclose(as_gray255(unit, quantize=False), unit * 255)
    wide = np.linspace(0, 4095, 100 * 100).reshape(100, 100).astype(np.uint16)
    g = as_gray255(wide)
    assert g.min() == 0 and g.max() == 255  # 12-bit data stretched (robust percentiles) to 0..255
    with pytest.raises(ValueError, match="expected a 2-D gray"):
        as_gray255(np.zeros((2, 3, 4, 5)))


def test_metrics_import_without_torch_or_qt():
    code = (
        "import sys, napari_fusion.metrics as m; "
        "bad = [k for k in ('torch', 'qtpy', 'PyQt6', 'napari') if k in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")
def test_matches_field_evaluator_on_a_real_msrs_pair():
    """Average fusion of MSRS 00004N; expected numbers computed with the MMIF-CDDFuse evaluator's
    formulas (MI converted from nats to bits; SSIM with data_range 255 in both)."""
    from skimage import io

    root = shared_data_dir() / "ivif" / "MSRS"
    ir = io.imread(root / "ir" / "00004N.png").astype(np.float64)
    vi = as_gray255(io.imread(root / "vi" / "00004N.png"))
    f = np.round((ir + vi) / 2)
    m = fusion_metrics(f, ir, vi)
    expected = {
        "EN": 5.347274116956624,
        "SD": 17.297304062879828,
        "SF": 3.639889407606663,
        "AG": 1.1265931483947123,
        "MI": 1.7040998593553638 / math.log(2),
        "VIF": 0.6159836128512135,
        "SCD": 1.1520361682506604,
    }
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-9), k
    # the evaluator sets Q_g = gF (not 1) where source and fused edge strengths are equal
    assert m["Qabf"] == pytest.approx(0.33131712085416837, rel=1e-4)
    # the Laplacian-pyramid baseline keeps more detail and edges than the mean
    from napari_fusion.methods.classical import fuse_laplacian

    lap = np.round(255 * fuse_laplacian((ir / 255).astype(np.float32), (vi / 255).astype(np.float32)))
    ml = fusion_metrics(lap, ir, vi, which=["SF", "AG", "Qabf"])
    assert ml["SF"] > m["SF"] and ml["AG"] > m["AG"] and ml["Qabf"] > m["Qabf"]


# ----------------------------------------------------------------------------- segmentation
def test_segmentation_hand_example():
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix(pred, truth)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = segmentation_metrics(pred, truth)
    assert m["IoU/0"] == pytest.approx(1 / 3) and m["Dice/0"] == pytest.approx(1 / 2)
    assert m["IoU/1"] == pytest.approx(2 / 3) and m["Dice/1"] == pytest.approx(4 / 5)
    assert m["IoU/2"] == pytest.approx(1 / 2) and m["Dice/2"] == pytest.approx(2 / 3)
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["mDice"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)


def test_segmentation_ignore_index_and_absent_classes():
    truth = np.array([[0, 0, 1], [1, 255, 255]])
    pred = np.array([[0, 0, 1], [1, 3, 2]])  # wrong where truth is ignored: must not count
    m = segmentation_metrics(pred, truth, n_classes=4, ignore_index=255)
    assert m["IoU/0"] == 1.0 and m["IoU/1"] == 1.0
    assert math.isnan(m["IoU/2"]) and math.isnan(m["Dice/3"])  # absent from truth and kept prediction
    assert m["mIoU"] == 1.0 and m["mDice"] == 1.0 and m["pixel_accuracy"] == 1.0
    # without the ignore index the 255 labels are out of range
    with pytest.raises(ValueError, match="truth holds label 255, outside the classes 0..3"):
        segmentation_metrics(pred, truth, n_classes=4)
    # a class only predicted (never true) is present: IoU 0, pulls the mean down
    m2 = segmentation_metrics(np.array([[0, 1]]), np.array([[0, 0]]), n_classes=3)
    assert m2["IoU/1"] == 0.0 and math.isnan(m2["IoU/2"])
    assert m2["mIoU"] == pytest.approx((0.5 + 0.0) / 2)


def test_segmentation_class_names_and_errors():
    truth = np.array([[0, 4], [2, 2]])
    m = segmentation_metrics(truth, truth, class_names=BRATS_CLASSES)
    assert m["IoU/enhancing tumour"] == 1.0 and math.isnan(m["IoU/necrosis"])
    assert list(m)[:5] == [f"IoU/{c[1]}" for c in BRATS_CLASSES]
    from napari_fusion.methods.registry import ClassInfo

    names = (ClassInfo(0, "road", "#000000"), ClassInfo(1, "car", "#ff0000"))
    assert "Dice/car" in segmentation_metrics(np.array([[1]]), np.array([[1]]), class_names=names)
    with pytest.raises(ValueError, match=r"prediction has shape \(2, 3\) but truth has shape \(2, 2\)"):
        segmentation_metrics(np.zeros((2, 3), int), truth)
    with pytest.raises(ValueError, match="non-integer"):
        segmentation_metrics(np.full((2, 2), 0.5), truth)
    with pytest.raises(ValueError, match="prediction holds label 7, outside the classes 0..4"):
        segmentation_metrics(np.array([[0, 7], [2, 2]]), truth, n_classes=5)


# ----------------------------------------------------------------------------- benchmark scripts
def _benchmark_module(name: str):
    import importlib
    from pathlib import Path

    bench = str(Path(__file__).resolve().parent.parent / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def test_markdown_table_and_csv_helpers(tmp_path):
    common = _benchmark_module("_common")
    table = common.markdown_table(["method", "SF"], [["a", 1.23456], ["b", float("nan")], ["c", 2.0]], digits=[0, 2], bold_max=[1])
    assert table.splitlines() == ["| method | SF |", "|---|---:|", "| a | 1.23 |", "| b | — |", "| c | **2.00** |"]
    path = common.write_csv(tmp_path / "x.csv", ["a", "b"], [[1, float("nan")], ["q", 0.5]])
    assert common.read_csv(path) == [{"a": "1", "b": ""}, {"a": "q", "b": "0.5"}]


def test_pair_split_uses_a_fixed_split_file_or_every_fifth_name(tmp_path):
    from napari_fusion.training.data import pair_split
    from napari_fusion.training.data import training_names

    plain = tmp_path / "plain" / "ir"
    plain.mkdir(parents=True)
    for i in range(11):
        (plain / f"{i:05d}.png").write_bytes(b"")
    assert [n for n, p in pair_split(plain).items() if p == "test"] == ["00000.png", "00005.png", "00010.png"]
    fixed = tmp_path / "fixed" / "ir"
    fixed.mkdir(parents=True)
    for n in ("a.png", "b.png", "c.png", "d.png"):
        (fixed / n).write_bytes(b"")
    (fixed.parent / "split.csv").write_text("a.png,test\nb.png,train\nc.png,train\nname,split\n")
    assert pair_split(fixed) == {"a.png": "test", "b.png": "train", "c.png": "train"}  # d.png: not listed, not used
    assert training_names(fixed) == ["b.png", "c.png"]


def test_index_split_holds_out_every_fifth_sorted_name_in_any_order():
    from napari_fusion.training.data import index_split

    scenes = [f"scene{i:02d}" for i in range(11)]
    split = index_split(reversed(scenes))  # scene folders come in directory order
    assert [n for n, p in split.items() if p == "test"] == ["scene00", "scene05", "scene10"]
    assert len(split) == 11 and list(split) == scenes


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")
def test_benchmark_test_pairs_are_the_pairs_training_holds_out():
    """Benchmark pairs: MSRS's split.csv test split, elsewhere sorted index % 5 == 0; never training names."""
    import csv

    from napari_fusion.training.data import training_names

    common = _benchmark_module("_common")
    root = shared_data_dir()
    for key in ("roadscene", "msrs", "mri_ct", "mri_pet"):
        d = common.DATASETS[key]
        fa = root / d.folder / d.sub_a
        names = sorted(p.name for p in fa.iterdir() if (root / d.folder / d.sub_b / p.name).is_file())
        test = d.select(fa)
        if key == "msrs":
            with (root / d.folder / "split.csv").open(newline="") as fh:
                rows = [r for r in csv.reader(fh) if len(r) == 2 and r[1] in ("train", "test")]
            assert test == sorted(n for n, part in rows if part == "test") and len(test) == 49
            assert common.msrs_test_names() == test
        else:
            assert test == names[::5] and len(test) >= 5, key
        assert not set(test) & set(training_names(fa)), key
        assert len(test) + len(training_names(fa)) == len(names), key


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")
def test_fusion_quality_benchmark_one_pair(tmp_path):
    """The benchmark's table holds exactly the metrics of the fused pair it loads."""
    fq = _benchmark_module("fusion_quality")
    common = _benchmark_module("_common")
    out = tmp_path / "fq"
    assert fq.main(["--datasets", "mri_ct", "--methods", "average", "--limit", "1", "--device", "cpu", "--out", str(out)]) == 0
    rows = common.read_csv(out.with_suffix(".csv"))
    assert [(r["dataset"], r["method"], r["pairs"]) for r in rows] == [("mri_ct", "average", "1")]
    pair = next(common.iter_pairs("mri_ct", 1))
    assert pair.a.dtype == np.uint8 and pair.a.shape == pair.b.shape == (256, 256)
    fused, _ = common.fuse_gray("average", pair.a, pair.b)
    expected = fusion_metrics(fused, pair.a, pair.b)
    for k in METRIC_NAMES:
        assert float(rows[0][k]) == pytest.approx(expected[k], rel=1e-12), k
    assert "## MRI / CT" in out.with_suffix(".md").read_text()
    # a second run of another method merges into the same table
    assert fq.main(["--datasets", "mri_ct", "--methods", "max", "--limit", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert [r["method"] for r in common.read_csv(out.with_suffix(".csv"))] == ["average", "max"]


def test_speed_benchmark_smoke(tmp_path):
    speed = _benchmark_module("speed")
    out = tmp_path / "speed"
    assert speed.main(["--methods", "average", "--sizes", "32x48", "--repeats", "2", "--warmup", "1",
                       "--device", "cpu", "--out", str(out)]) == 0
    rows = _benchmark_module("_common").read_csv(out.with_suffix(".csv"))
    assert [(r["method"], r["device"], r["size"], r["repeats"]) for r in rows] == [("average", "cpu", "32x48", "2")]
    assert float(rows[0]["ms_min"]) <= float(rows[0]["ms_median"]) <= float(rows[0]["ms_max"])
    assert rows[0]["parameters"] == ""  # a classical method has no weights


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")
def test_gifnet_benchmark_scores_the_authors_fused_images(tmp_path):
    """``--reference-dir``: fused images put beside the held-out pairs are scored as 'reference'."""
    import imageio.v3 as iio

    bench = _benchmark_module("gifnet_vs_reference")
    common = _benchmark_module("_common")
    pair = next(common.iter_pairs("mri_ct", 1))
    stand_in = np.maximum(pair.a, pair.b)  # any fused image; here the max, so its scores are known
    (tmp_path / "ref" / "mri_ct").mkdir(parents=True)
    iio.imwrite(tmp_path / "ref" / "mri_ct" / f"{pair.name}.png", stand_in)
    out = tmp_path / "g"
    args = ["--skip-speed", "--datasets", "mri_ct", "--limit", "1", "--device", "cpu", "--out", str(out),
            "--reference-dir", str(tmp_path / "ref")]
    assert bench.main(args) == 0
    rows = {r["method"]: r for r in common.read_csv(tmp_path / "g_quality.csv")}
    assert set(rows) == {"average", "laplacian", "max", "gifnet", "reference"}
    for k in ("Qabf", "VIF"):
        assert float(rows["reference"][k]) == pytest.approx(float(rows["max"][k]), rel=1e-9)
    md = out.with_suffix(".md").read_text()
    assert "gifnet vs the authors' model" in md and "| mri_ct | 1 |" in md
    # a reference image of the wrong size is an error that names the file
    iio.imwrite(tmp_path / "ref" / "mri_ct" / f"{pair.name}.png", stand_in[:-1])
    with pytest.raises(ValueError, match=f"{pair.name}.png"):
        bench.main(args)
