"""The one fusion pipeline: colour via Y, gray-as-RGB, intensity ranges, pan/MS, volumes, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_fusion import color
from napari_fusion.engine.pipeline import (
    FusionResult,
    Progress,
    enhance_arrays,
    finish,
    fuse_arrays,
    fuse_steps,
    prepare_pair,
)
from napari_fusion.geometry import Grid
from napari_fusion.methods.registry import ClassInfo
from napari_fusion.training.data import shared_data_dir

needs_shared = pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")


def _smooth(shape, seed, sigma=2.0):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return (x - x.min()) / (x.max() - x.min())


def _gray8(shape=(60, 80), seed=0):
    return np.round(_smooth(shape, seed) * 255).astype(np.uint8)


def _rgb8(shape=(60, 80), seed=1):
    # moderate saturation so that Y + CbCr -> RGB never clips
    y = 0.25 + 0.5 * _smooth(shape, seed)
    rgb = np.stack([y * 0.9 + 0.05, y, y * 0.8 + 0.1], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


class _Identity:
    """Returns A: the pipeline must then give back A's own values (range/dtype/colour round trip)."""

    name = "identity"
    halo = 0

    def fuse(self, a, b):
        return a


# ------------------------------------------------------------------------------------ colour
def test_gray_and_colour_give_colour_with_the_colour_sources_chroma():
    ir, vi = _gray8(), _rgb8()
    res = fuse_arrays(ir, vi, "average")
    assert isinstance(res, FusionResult) and res.method == "average" and res.labels is None
    assert res.fused.shape == vi.shape and res.fused.dtype == np.uint8
    ycc_out = color.rgb_to_ycbcr(res.fused / 255.0)
    ycc_vi = color.rgb_to_ycbcr(vi / 255.0)
    # CbCr kept (to 8-bit rounding), Y = mean of the two lumas
    assert np.abs(ycc_out[..., 1:] - ycc_vi[..., 1:]).max() < 2.5 / 255
    y_expected = 0.5 * (ir / 255.0 + ycc_vi[..., 0])
    assert np.abs(ycc_out[..., 0] - y_expected).max() < 1.5 / 255


def test_both_colour_a_gives_chroma():
    va, vb = _rgb8(seed=1), _rgb8(seed=2)[..., ::-1].copy()
    p = prepare_pair(va, vb)
    assert p.chroma_from == "A"
    np.testing.assert_allclose(p.chroma, color.rgb_to_ycbcr(va / 255.0)[..., 1:], atol=1e-6)


def test_gray_stored_as_rgb_is_gray():
    mri, ct = _gray8(seed=3), _gray8(seed=4)
    ct_rgb = np.repeat(ct[..., None], 3, axis=-1)
    res = fuse_arrays(mri, ct_rgb, "max")
    assert res.fused.shape == mri.shape  # no colour invented
    np.testing.assert_array_equal(res.fused, fuse_arrays(mri, ct, "max").fused)
    # a gray-as-RGB A with a colour B: the colour comes from B
    pet = _rgb8(seed=5)
    p = prepare_pair(np.repeat(mri[..., None], 3, axis=-1), pet)
    assert p.chroma_from == "B"


def test_rgba_alpha_is_dropped():
    vi = _rgb8()
    rgba = np.concatenate([vi, np.full(vi.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(fuse_arrays(_gray8(), rgba, "average").fused, fuse_arrays(_gray8(), vi, "average").fused)


@pytest.mark.parametrize("make", [
    lambda: _gray8(),
    lambda: (_smooth((50, 70), 7) * 4000 + 300).astype(np.uint16),
    lambda: (_smooth((50, 70), 8) * 3.0 - 1.0).astype(np.float32),
])
def test_identity_method_returns_a_in_its_own_range(make):
    a = make()
    b = _gray8(a.shape, seed=9)
    res = fuse_arrays(a, b, _Identity())
    assert res.fused.dtype == (a.dtype if a.dtype != np.float64 else np.float32) and res.method == "identity"
    inten = color.intensity_of(a)
    expected = color.from_unit(color.to_unit(a, inten)[0], inten)
    np.testing.assert_allclose(res.fused.astype(float), expected.astype(float), atol=1e-4 * inten.span)
    if a.dtype == np.uint8:
        np.testing.assert_array_equal(res.fused, a)


def test_finish_inverts_prepare_for_colour_a():
    vi = _rgb8()
    p = prepare_pair(vi, _gray8())
    back = finish(p.a, p)
    assert np.abs(back.astype(int) - vi.astype(int)).max() <= 1


# -------------------------------------------------------------------------------- tiling path
def test_pipeline_tiled_equals_untiled_within_one_grey_level():
    a, b = _gray8((300, 420), 11), _rgb8((300, 420), 12)
    full = fuse_arrays(a, b, "laplacian", tile=0).fused
    prog = []
    tiled = fuse_arrays(a, b, "laplacian", tile=128, progress=prog.append).fused
    assert np.abs(full.astype(int) - tiled.astype(int)).max() <= 1
    assert prog[-1].done == prog[-1].total > 1 and prog[-1].stage == "tiles"


def test_auto_tiling_kicks_in_above_four_megapixels(monkeypatch):
    from napari_fusion.engine import pipeline

    monkeypatch.setattr(pipeline, "AUTO_TILE_PIXELS", 100 * 100)
    monkeypatch.setattr(pipeline, "AUTO_TILE", 64)
    stages = []
    fuse_arrays(_gray8((150, 150)), _gray8((150, 150), 2), "average", progress=lambda p: stages.append(p.stage))
    assert "tiles" in stages
    stages.clear()
    fuse_arrays(_gray8((90, 90)), _gray8((90, 90), 2), "average", progress=lambda p: stages.append(p.stage))
    assert set(stages) == {"fuse"}


def test_pick_tile_prefers_the_runners_tile_and_otherwise_the_memory_limit():
    from napari_fusion.engine.pipeline import AUTO_TILE, AUTO_TILE_PIXELS, _pick_tile

    assert _pick_tile((500, 500), None, 512) is None  # fits one preferred tile
    assert _pick_tile((480, 640), None, 512) is None  # 1.17 tiles: the halos would cost more than the cache saves
    assert _pick_tile((600, 800), None, 512) == (512, 512)
    assert _pick_tile((200, 3000), None, 512) == (512, 512)  # a long strip too
    assert _pick_tile((1000, 1000), None, None) is None
    side = int(np.sqrt(AUTO_TILE_PIXELS)) + 1
    assert _pick_tile((side, side), None, None) == (AUTO_TILE, AUTO_TILE)
    assert _pick_tile((600, 800), 0, 512) is None  # 0: never tile
    assert _pick_tile((600, 800), 300, 512) == (300, 300)  # the caller's tile wins


def test_fuse_steps_is_a_cancellable_generator():
    gen = fuse_steps(_gray8((200, 200)), _gray8((200, 200), 3), "average", tile=64)
    first = next(gen)
    assert isinstance(first, Progress)
    gen.close()  # the caller stops iterating: no error, no result


# ----------------------------------------------------------------------------- segmentation
class _Seg:
    name = "toy-seg"
    halo = 0
    classes = (ClassInfo(0, "dark", "#000000"), ClassInfo(1, "bright", "#ffffff"))

    def fuse(self, a, b):
        return np.maximum(a, b)

    def fuse_and_segment(self, a, b):
        f = self.fuse(a, b)
        return f, (f > 0.5).astype(np.int32)


def test_segmenting_runner_gives_labels_untiled_and_tiled():
    a, b = _gray8((150, 170), 4), _gray8((150, 170), 5)
    r0 = fuse_arrays(a, b, _Seg(), tile=0)
    r1 = fuse_arrays(a, b, _Seg(), tile=64)
    truth = (np.maximum(a, b) / 255.0 > 0.5).astype(np.int32)
    for r in (r0, r1):
        assert r.labels.dtype == np.int32 and r.classes == _Seg.classes
        assert (r.labels != truth).mean() < 0.002  # only float ties at 0.5 may differ


def test_segment_true_on_a_non_segmenting_method_is_an_error():
    with pytest.raises(ValueError, match="'average' does not segment"):
        fuse_arrays(_gray8(), _gray8(seed=2), "average", segment=True)


def test_enhance_uses_the_methods_own_enhance():
    class _Enh:
        name = "enh"
        halo = 0

        def fuse(self, a, b):  # pragma: no cover - must not be used
            raise AssertionError

        def enhance(self, x):
            return np.sqrt(x)

    img = _gray8()
    res = enhance_arrays(img, _Enh())
    expected = np.round(np.sqrt(img / 255.0) * 255)
    assert np.abs(res.fused.astype(float) - expected).max() <= 1


# ------------------------------------------------------------------------------- pan / MS
def test_pan_ms_ratio_four_keeps_bands_and_colours():
    pan = (_smooth((128, 160), 21, 1.0) * 0.8 + 0.1).astype(np.float32)
    ms = np.stack([(_smooth((32, 40), 22 + i, 1.5) * 0.6 + 0.2) for i in range(4)]).astype(np.float32)
    res = fuse_arrays(pan, ms, "average")
    assert res.fused.shape == (4, 128, 160) and res.fused.dtype == np.float32
    assert res.grid.shape == (128, 160)
    p = prepare_pair(pan, ms)
    assert p.kind == "multiband" and p.bands.shape == (4, 128, 160)
    # band ratios (the MS colours) are those of the upsampled MS wherever nothing clipped
    u, _ = color.to_unit(res.fused, p.intensity)
    ok = (u < 0.999).all(axis=0) & (p.bands > 0.05).all(axis=0)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(u[0][ok] / u[1][ok], p.bands[0][ok] / p.bands[1][ok], rtol=1e-3)
    # PAN detail went in: the result's intensity follows the PAN's high frequencies more than MS did
    hp = lambda x: x - ndimage.gaussian_filter(x, 2)  # noqa: E731
    corr = lambda x, y: np.corrcoef(hp(x).ravel(), hp(y).ravel())[0, 1]  # noqa: E731
    assert corr(u.mean(0), pan) > corr(p.bands.mean(0), pan) + 0.3


def test_pan_ms_integer_dtype_and_explicit_channel_axis():
    pan = (_smooth((64, 64), 1) * 1000).astype(np.uint16)
    ms_last = (_smooth((16, 16, 5), 2) * 3000).astype(np.uint16)  # (h, w, C) with C=5
    res = fuse_arrays(pan, ms_last, "average", channel_axis_b=-1)
    assert res.fused.shape == (5, 64, 64) and res.fused.dtype == np.uint16
    assert res.fused.max() <= np.iinfo(np.uint16).max


def test_multiband_a_is_refused():
    with pytest.raises(ValueError, match="pass the panchromatic"):
        fuse_arrays(np.ones((4, 32, 32), np.float32), np.ones((64, 64), np.float32), "average")


# ----------------------------------------------------------------------------------- volumes
def test_volume_b_on_coarser_grid_is_resampled_and_fused_slice_by_slice():
    a = np.zeros((8, 32, 32), np.float32)
    b = np.zeros((4, 16, 16), np.float32)  # 2 mm voxels over the same field
    b[2, 8, 4] = 1.0  # B voxel (2, 8, 4) -> world (4.5, 16.5, 8.5) mm
    ga = Grid.from_scale(a.shape, 1.0, 0.0, "mm")
    gb = Grid.from_scale(b.shape, 2.0, 0.5, "mm")
    stages = []
    res = fuse_arrays(a, b, "max", grid_a=ga, grid_b=gb, progress=stages.append)
    assert res.fused.shape == a.shape and res.grid is ga
    assert [p.done for p in stages] == list(range(1, 9)) and stages[0].stage == "slices"
    z, y, x = np.unravel_index(np.argmax(res.fused), res.fused.shape)
    # the bright B voxel lands at A index (4..5, 16..17, 8..9) (world 4.5, 16.5, 8.5), linearly spread
    assert z in (4, 5) and y in (16, 17) and x in (8, 9)
    np.testing.assert_allclose(res.fused[4:6, 16:18, 8:10], 0.75**3, atol=1e-5)
    assert res.fused[:3].max() == 0 and res.fused[7].max() == 0


def test_volume_with_segmenting_runner_gives_3d_labels():
    a = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    res = fuse_arrays(a, a, _Seg())
    assert res.labels.shape == a.shape
    np.testing.assert_array_equal(res.labels, (color.to_unit(a)[0] > 0.5).astype(np.int32))


# --------------------------------------------------------------------------------- bad input
GOOD = np.zeros((48, 64), np.uint8)


@pytest.mark.parametrize("a,b,match", [
    (np.zeros((0, 64)), GOOD, "source A is empty"),
    (GOOD, np.zeros((48, 0), np.uint8), "source B is empty"),
    (GOOD, np.ones((48, 64), np.complex64), "source B has unsupported dtype complex64"),
    (np.ones((48, 64), bool), GOOD, "source A has unsupported dtype bool"),
    (GOOD, np.empty((48, 64), object), "source B has unsupported dtype object"),
    (GOOD, np.ones((48, 64, 2), np.uint8), "source B has 2 channels"),
    (np.ones((48, 64, 6), np.uint8), GOOD, "source A has 6 channels"),
    (np.full((48, 64), np.nan, np.float32), GOOD, "source A contains 3072 NaN/inf"),
    (GOOD, np.where(np.eye(48, 64) > 0, np.inf, 0).astype(np.float32), "source B contains 48 NaN/inf"),
    (GOOD, np.ones((30, 47), np.uint8), "source B is 30x47 but source A is 48x64; no known resolution ratio relates them"),
    (np.ones((5, 48, 64), np.float32), GOOD, "source A is 3-D"),
    (GOOD, np.ones((100, 48, 64), np.float32), "source B is 3-D"),
    (np.ones(64), GOOD, "source A has 1 dimension"),
    (GOOD, np.ones((2, 2, 48, 64, 3)), "source B has 5 dimension"),
    (None, GOOD, "source A is missing"),
])
def test_bad_input_errors_name_the_problem_and_source(a, b, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        fuse_arrays(a, b, "average")


def test_volume_vs_image_mismatch_with_grids():
    ga = Grid.identity((4, 20, 20))
    with pytest.raises(ValueError, match="3-D.*2-D"):
        fuse_arrays(np.ones((4, 20, 20), np.float32), np.ones((20, 20), np.float32), "average", grid_a=ga)


def test_unknown_method_lists_known_ones():
    with pytest.raises(KeyError, match="known methods: average, max, laplacian"):
        fuse_arrays(GOOD, GOOD, "nope")


# --------------------------------------------------------------------------------- real data
@needs_shared
def test_real_roadscene_pair_colour_out():
    from napari_fusion.io import read_pair

    root = shared_data_dir() / "ivif" / "RoadScene"
    name = sorted(p.name for p in (root / "ir").iterdir())[0]
    a, b = read_pair(root / "ir" / name, root / "vi" / name)
    res = fuse_arrays(a.data, b.data, "laplacian", grid_a=a.grid, grid_b=b.grid, rgb_a=a.rgb, rgb_b=b.rgb)
    assert res.fused.shape == a.data.shape + (3,) and res.fused.dtype == np.uint8
    cc = color.rgb_to_ycbcr(res.fused / 255.0)[..., 1:] - color.rgb_to_ycbcr(b.data / 255.0)[..., 1:]
    assert np.median(np.abs(cc)) < 1.5 / 255  # visible colours kept (clipping aside)


@needs_shared
def test_real_mri_pet_and_mri_ct():
    from napari_fusion.io import find_pairs, read_pair

    pet = find_pairs(shared_data_dir() / "medical" / "MRI_PET")[0]
    a, b = read_pair(pet)
    res = fuse_arrays(a.data, b.data, "average", rgb_a=a.rgb, rgb_b=b.rgb)
    assert res.fused.shape == (256, 256, 3)  # PET colour kept
    ct = find_pairs(shared_data_dir() / "medical" / "MRI_CT")[0]
    a, b = read_pair(ct)
    res = fuse_arrays(a.data, b.data, "average", rgb_a=a.rgb, rgb_b=b.rgb)
    assert res.fused.shape == (256, 256)  # gray stored as RGB stays gray


@needs_shared
def test_real_landsat_pan_ms_keeps_bands_and_pan_grid():
    from napari_fusion.io import read_pair

    a, b = read_pair(shared_data_dir() / "remote" / "Landsat8_LC80200392015216")
    pan = a.data[:400, :400]
    ga = a.grid.crop((0, 0), (400, 400))
    ms = b.data[:, :200, :200]
    gb = b.grid.crop((0, 0, 0)[:2], (200, 200))
    res = fuse_arrays(pan, ms, "laplacian", grid_a=ga, grid_b=gb, channel_axis_b=0)
    assert res.fused.shape == (ms.shape[0], 400, 400) and res.fused.dtype == ms.dtype
    assert res.grid is ga and res.grid.units == "m"


@needs_shared
def test_real_volumes_on_different_grids():
    from napari_fusion.io import read_image

    case = shared_data_dir() / "volumes" / "SCT-errsm30"
    files = sorted(case.glob("*.nii.gz"))
    t2 = next(f for f in files if f.name.startswith("t2."))
    t2s = next(f for f in files if f.name.startswith("t2s"))
    a, b = read_image(t2), read_image(t2s)
    res = fuse_arrays(a.data, b.data, "max", grid_a=a.grid, grid_b=b.grid)
    assert res.fused.shape == a.data.shape and res.grid is a.grid
    assert res.fused.dtype == a.data.dtype if a.data.dtype.kind in "ui" else np.float32
