"""Grid and bring_onto: resolution ratios, affine resampling with known voxels, error messages."""
from __future__ import annotations

import numpy as np
import pytest

from napari_fusion.geometry import Grid, bring_onto, implied_grid, resolution_ratio
from napari_fusion.training.data import shared_data_dir

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="needs ../shared/data")


def _rot_x(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


# --- Grid ------------------------------------------------------------------------------------
def test_grid_from_scale_maps_index_to_world_and_back():
    g = Grid.from_scale((10, 20), (15.0, 30.0), (-100.0, 50.0), units="m")
    assert g.ndim == 2
    np.testing.assert_allclose(g.scale, [15, 30])
    np.testing.assert_allclose(g.translate, [-100, 50])
    np.testing.assert_allclose(g.index_to_world([2, 3]), [-70, 140])
    np.testing.assert_allclose(g.world_to_index([-70, 140]), [2, 3])
    assert g.is_axis_aligned and not g.is_identity
    assert Grid.identity((4, 5)).is_identity


def test_grid_rejects_wrong_affine_and_compares_by_value():
    with pytest.raises(ValueError, match="3x3"):
        Grid((4, 5), np.eye(4))
    with pytest.raises(ValueError, match="singular"):
        Grid((4, 5), np.diag([1.0, 0.0, 1.0]))
    assert Grid.from_scale((4, 5), 2.0) == Grid.from_scale((4, 5), (2.0, 2.0))
    assert Grid.from_scale((4, 5), 2.0) != Grid.from_scale((4, 5), 2.0, 1.0)
    assert Grid.from_scale((4, 5), 2.0) != Grid.from_scale((4, 6), 2.0)


def test_grid_crop_moves_origin_to_first_pixel_of_crop():
    g = Grid.from_scale((100, 100), (15.0, 15.0), (-3000.0, 400.0), "m")
    c = g.crop((10, 20), (5, 6))
    assert c.shape == (5, 6)
    np.testing.assert_allclose(c.index_to_world([0, 0]), g.index_to_world([10, 20]))
    np.testing.assert_allclose(c.index_to_world([4, 5]), g.index_to_world([14, 25]))


def test_layer_kwargs_axis_aligned_and_oblique():
    g = Grid.from_scale((3, 4, 5), (2.0, 0.5, 0.5), (1.0, 2.0, 3.0), "mm")
    kw = g.layer_kwargs()
    assert kw == {"scale": (2.0, 0.5, 0.5), "translate": (1.0, 2.0, 3.0), "units": "mm"}
    aff = np.eye(4)
    aff[:3, :3] = _rot_x(10) @ np.diag([2.0, 0.5, 0.5])
    aff[:3, 3] = [1, 2, 3]
    kw = Grid((3, 4, 5), aff, "mm").layer_kwargs()
    np.testing.assert_allclose(kw["scale"], [2.0, 0.5, 0.5])
    # napari composes affine @ diag(scale): it must give back the grid's affine
    full = kw["affine"] @ np.diag([*kw["scale"], 1.0])
    np.testing.assert_allclose(full, aff, atol=1e-12)


# --- resolution ratios -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape_b, shape_a, expected",
    [
        ((480, 640), (480, 640), 1.0),
        ((320, 320), (1280, 1280), 4.0),
        ((603, 627), (1207, 1254), 2.0),  # Landsat: one extra PAN row
        ((1280, 1280), (320, 320), 0.25),
        ((301, 471), (480, 640), None),
        ((240, 330), (480, 640), None),  # different ratio per axis
        ((481, 640), (480, 640), None),
    ],
)
def test_resolution_ratio(shape_b, shape_a, expected):
    assert resolution_ratio(shape_b, shape_a) == expected


def test_implied_grid_corner_aligned_ratio_4():
    g = implied_grid((320, 320), Grid.identity((1280, 1280)))
    np.testing.assert_allclose(g.scale, [4, 4])
    # MS pixel k covers PAN pixels 4k..4k+3: its centre is at 4k + 1.5
    np.testing.assert_allclose(g.index_to_world([0, 10]), [1.5, 41.5])


# --- bring_onto, 2-D -------------------------------------------------------------------------
def test_same_grid_returns_input_unchanged():
    b = np.arange(12.0).reshape(3, 4)
    g = Grid.from_scale((3, 4), 2.0)
    assert bring_onto(b, g, Grid.from_scale((3, 4), 2.0)) is b
    assert bring_onto(b, Grid.identity((3, 4)), Grid.identity((3, 4))) is b


def test_mismatched_sizes_error_names_both_shapes():
    with pytest.raises(ValueError) as err:
        bring_onto(np.zeros((301, 471)), Grid.identity((301, 471)), Grid.identity((480, 640)))
    assert str(err.value) == "source B is 301x471 but source A is 480x640; no known resolution ratio relates them"


def test_ratio_4_nearest_reproduces_blocks():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 60000, size=(8, 6)).astype(np.uint16)
    out = bring_onto(b, Grid.identity(b.shape), Grid.identity((32, 24)), order=0)
    assert out.dtype == np.uint16 and out.shape == (32, 24)
    np.testing.assert_array_equal(out, np.kron(b, np.ones((4, 4), np.uint16)))


def test_ratio_4_linear_reproduces_a_ramp_at_pixel_centres():
    b = np.tile(np.arange(8, dtype=np.float32)[:, None], (1, 6))  # value = row index of B
    out = bring_onto(b, Grid.identity(b.shape), Grid.identity((32, 24)), order=1)
    rows = np.arange(32)
    expected = np.clip((rows + 0.5) / 4 - 0.5, 0, 7)  # B coordinate of A's pixel centres
    np.testing.assert_allclose(out[:, 3], expected, atol=1e-5)
    # and a finer B is brought down onto a coarser A (anti-aliased block average for a ramp)
    down = bring_onto(out, Grid.identity(out.shape), Grid.identity((8, 6)), order=1)
    np.testing.assert_allclose(down[1:-1, 2], np.arange(1, 7), atol=0.05)


def test_channel_axis_is_kept():
    b = np.stack([np.full((4, 5), v, np.uint8) for v in (10, 20, 30)], axis=-1)  # RGB
    out = bring_onto(b, Grid.identity((4, 5)), Grid.identity((8, 10)), channel_axis=-1)
    assert out.shape == (8, 10, 3)
    np.testing.assert_array_equal(out[3, 7], [10, 20, 30])
    bands = np.moveaxis(b, -1, 0)
    out = bring_onto(bands, Grid.identity((4, 5)), Grid.identity((16, 20)), channel_axis=0)
    assert out.shape == (3, 16, 20)


def test_georeferenced_2d_uses_affines_not_shapes():
    # B: 30 m pixels whose centres are 15 m (half a B pixel) off A's 15 m grid, like Landsat
    ga = Grid.from_scale((9, 9), 15.0, (-1000.0, 500.0), "m")
    gb = Grid.from_scale((4, 4), 30.0, (-985.0, 515.0), "m")
    b = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = bring_onto(b, gb, ga, order=1)
    # A pixel (1 + 2R, 1 + 2C) sits exactly on B pixel (R, C)
    np.testing.assert_allclose(out[1::2, 1::2], b, atol=1e-5)
    np.testing.assert_allclose(out[2, 1], (b[0, 0] + b[1, 0]) / 2, atol=1e-5)


def test_units_are_converted_and_unrelated_units_rejected():
    ga = Grid.from_scale((4, 4), 1.0, 0.0, "mm")
    gb = Grid.from_scale((2, 2), 0.002, 0.0005, "m")  # 2 mm pixels, first centre at 0.5 mm
    out = bring_onto(np.array([[1.0, 2.0], [3.0, 4.0]]), gb, ga, order=0)
    assert out[0, 0] == 1.0 and out[3, 3] == 4.0
    with pytest.raises(ValueError, match="do not relate"):
        bring_onto(np.zeros((2, 2)), Grid.from_scale((2, 2), 1.0, 0, "degree"), ga)


# --- bring_onto, 3-D -------------------------------------------------------------------------
def _grid_b_3d() -> Grid:
    aff = np.eye(4)
    aff[:3, :3] = _rot_x(90) @ np.diag([2.0, 2.0, 2.0])  # 2 mm voxels, axes 1 and 2 rotated
    aff[:3, 3] = [4.0, 30.0, 2.0]
    return Grid((8, 12, 10), aff, "mm")


def test_3d_known_voxel_lands_where_expected():
    ga = Grid.from_scale((24, 40, 30), 1.0, 0.0, "mm")
    gb = _grid_b_3d()
    b = np.zeros(gb.shape, np.int16)
    b[3, 4, 5] = 1000
    world = gb.index_to_world([3, 4, 5])
    target = ga.world_to_index(world)
    np.testing.assert_allclose(target, np.round(target))  # (10, 20, 10) by construction
    out = bring_onto(b, gb, ga, order=0)
    assert out.dtype == np.int16 and out.shape == ga.shape
    t = tuple(int(v) for v in np.round(target))
    assert t == (10, 20, 10)
    assert out[t] == 1000
    # nearest sampling of a 2 mm voxel on a 1 mm grid: a 2x2x2 block at most, nothing elsewhere
    assert 1 <= np.count_nonzero(out) <= 8
    assert np.all(np.abs(np.argwhere(out) - np.array(t)) <= 1)


def test_3d_linear_function_is_reproduced_and_outside_is_zero():
    ga = Grid.from_scale((24, 40, 30), 1.0, 0.0, "mm")
    gb = _grid_b_3d()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in gb.shape], indexing="ij"), -1)
    w = gb.index_to_world(idx)
    f = lambda p: 1.0 + p[..., 0] + 2.0 * p[..., 1] + 3.0 * p[..., 2]  # noqa: E731
    b = f(w).astype(np.float32)
    out = bring_onto(b, gb, ga, order=1)
    ia = np.stack(np.meshgrid(*[np.arange(s) for s in ga.shape], indexing="ij"), -1)
    ib = gb.world_to_index(ga.index_to_world(ia))
    inside = np.all((ib >= 0) & (ib <= np.array(gb.shape) - 1), axis=-1)
    outside = np.any((ib < -0.5 - 1e-6) | (ib > np.array(gb.shape) - 0.5 + 1e-6), axis=-1)
    assert inside.sum() > 1000 and outside.sum() > 1000
    np.testing.assert_allclose(out[inside], f(ga.index_to_world(ia))[inside], rtol=1e-5, atol=1e-3)
    assert np.all(out[outside] == 0)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3-D"):
        bring_onto(np.zeros((4, 4, 4)), Grid.identity((4, 4, 4)), Grid.identity((4, 4)))
    with pytest.raises(ValueError, match="its grid says"):
        bring_onto(np.zeros((4, 5)), Grid.identity((5, 4)), Grid.identity((5, 4)))


# --- real data -------------------------------------------------------------------------------
@needs_shared
def test_landsat_ms_onto_pan_keeps_values_on_coinciding_pixels():
    from napari_fusion.io import read_image

    root = SHARED / "remote" / "Landsat8_LC80200392015216"
    pan, ms = read_image(root / "pan.tif"), read_image(root / "ms.tif")
    out = bring_onto(ms.data, ms.grid, pan.grid, channel_axis=0)
    assert out.shape == (3, 1207, 1254) and out.dtype == np.uint16
    # pan pixel (2R+1, 2C+1) is centred on ms pixel (R, C)
    np.testing.assert_array_equal(out[:, 1:1206:2, 1:1254:2], ms.data[:, :603, :627])
    assert np.all(out[:, -1, :] > 0)  # the 1207th row is within half an ms pixel: edge value, not 0
