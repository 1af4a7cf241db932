"""fuse-large's zarr result is an OME-Zarr (NGFF 0.4) multiscale image that napari opens as one.

A small tiled run (several tiles, three pyramid levels) on grids in millimetres: the group's
``multiscales`` metadata validates (levels halve, scale per level doubles, axes with units), the
levels read back equal the in-memory result and its 2x2 means, and the package's reader, napari's
``ViewerModel.open`` and a second tiled run place it on the right grid.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_fusion import fuse
from napari_fusion.cli import main
from napari_fusion.engine.batch import fuse_file_tiled, open_lazy
from napari_fusion.geometry import Grid
from napari_fusion.io.ome_zarr import grid_of_group, multiscale_layout, multiscales_metadata


def _img(shape, seed, hi=1000, dtype=np.uint16):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return np.round((x - x.min()) / (x.max() - x.min()) * hi).astype(dtype)


GA = Grid.from_scale((1040, 1100), (0.5, 0.25), (10.0, -20.0), "mm")


def _zarr_source(path, data, grid):
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=data.shape, dtype=data.dtype, chunks=(256, 256))
    z[:] = data
    z.attrs["affine"], z.attrs["units"] = np.asarray(grid.affine).tolist(), grid.units


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("omezarr")
    a, b = _img(GA.shape, 1), _img(GA.shape, 2)
    _zarr_source(tmp / "a.zarr", a, GA)
    _zarr_source(tmp / "b.zarr", b, GA)
    out = fuse_file_tiled(tmp / "a.zarr", tmp / "b.zarr", tmp / "fused.zarr", "average", tile=384, overlap=16)
    ref = np.asarray(fuse(a, b, "average", grid_a=GA, grid_b=GA))
    return out, ref


def _validate_ngff(attrs, shapes):
    """The parts of the NGFF 0.4 multiscales schema this writer uses."""
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4"
    axes = ms["axes"]
    assert 2 <= len(axes) <= 5 and all({"name", "type"} <= set(ax) for ax in axes)
    space = [i for i, ax in enumerate(axes) if ax["type"] == "space"]
    assert 2 <= len(space) <= 3
    assert len(ms["datasets"]) == len(shapes)
    scales = []
    for k, (ds, shape) in enumerate(zip(ms["datasets"], shapes)):
        assert ds["path"] == str(k)
        tr = ds["coordinateTransformations"]
        assert [t["type"] for t in tr] == ["scale", "translation"]
        assert len(tr[0]["scale"]) == len(tr[1]["translation"]) == len(axes) == len(shape)
        scales.append(np.asarray(tr[0]["scale"]))
    for k in range(1, len(shapes)):
        for i in space:
            assert shapes[k][i] == shapes[k - 1][i] // 2  # levels halve
            assert scales[k][i] == pytest.approx(2 * scales[k - 1][i])  # spacing doubles
    return ms


def test_fuse_large_zarr_is_an_ngff_multiscale_image(result):
    import zarr

    out, _ = result
    assert (out / ".zgroup").is_file() and (out / ".zattrs").is_file()  # zarr v2, as NGFF 0.4 is
    assert json.loads((out / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    g = zarr.open_group(str(out), mode="r")
    shapes = [g[str(k)].shape for k in range(3)]
    assert shapes == [(1040, 1100), (520, 550), (260, 275)]
    ms = _validate_ngff(g.attrs.asdict(), shapes)
    assert ms["axes"] == [{"name": "y", "type": "space", "unit": "millimeter"}, {"name": "x", "type": "space", "unit": "millimeter"}]
    t0, t1 = ms["datasets"][0]["coordinateTransformations"], ms["datasets"][1]["coordinateTransformations"]
    assert t0 == [{"type": "scale", "scale": [0.5, 0.25]}, {"type": "translation", "translation": [10.0, -20.0]}]
    assert t1[0]["scale"] == [1.0, 0.5] and t1[1]["translation"] == [10.25, -19.875]  # 2x2 block centres
    assert grid_of_group(g.attrs, shapes[0]) == GA
    assert multiscale_layout(out) == "yx"


def test_fuse_large_zarr_levels_read_back_equal_the_in_memory_result(result):
    out, ref = result
    levels = [np.asarray(lv) for lv in open_lazy(out)]
    d = np.abs(levels[0].astype(np.int64) - ref.astype(np.int64))
    assert levels[0].dtype == ref.dtype and d.max() <= 1 and np.count_nonzero(d) <= 0.001 * d.size
    for k in (1, 2):
        up = levels[k - 1].astype(np.float32)
        h, w = levels[k].shape
        mean = 0.25 * (up[0 : 2 * h : 2, 0 : 2 * w : 2] + up[1 : 2 * h : 2, 0 : 2 * w : 2] + up[0 : 2 * h : 2, 1 : 2 * w : 2]
                       + up[1 : 2 * h : 2, 1 : 2 * w : 2])
        np.testing.assert_array_equal(levels[k], np.rint(mean).astype(levels[k].dtype))


def test_reader_opens_the_result_as_a_multiscale_layer_on_its_grid(result):
    from napari_fusion.io.napari_reader import get_reader

    out, ref = result
    reader = get_reader(str(out))
    assert reader is not None
    ((data, kw, kind),) = reader(str(out))
    assert kind == "image" and kw["multiscale"] is True and [lv.shape for lv in data] == [(1040, 1100), (520, 550), (260, 275)]
    assert kw["scale"] == (0.5, 0.25) and kw["translate"] == (10.0, -20.0) and kw["units"] == "mm"
    assert kw["metadata"]["grid"] == GA and kw["name"] == "fused"
    np.testing.assert_array_equal(np.asarray(data[0][:64, :64]), np.asarray(open_lazy(out)[0][:64, :64]))


def test_napari_opens_the_result_headless(result):
    pytest.importorskip("napari")
    import npe2
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()  # as napari does at start-up
    out, _ = result
    vm = ViewerModel()
    (layer,) = vm.open(str(out), plugin="napari-fusion")
    assert layer.multiscale and len(layer.data) == 3
    np.testing.assert_allclose(layer.scale, (0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (10.0, -20.0))
    # napari's built-in reader also opens the group as a multiscale image (without the placement)
    (builtin,) = ViewerModel().open(str(out), plugin="napari")
    assert builtin.multiscale and [lv.shape for lv in builtin.data] == [(1040, 1100), (520, 550), (260, 275)]


def test_a_result_fed_back_keeps_its_grid(result, tmp_path):
    from napari_fusion.engine.lazy import open_source

    out, _ = result
    assert open_source(out, "A").grid == GA  # the group's grid, not the identity


def test_pan_ms_result_has_a_channel_axis_and_metres(tmp_path, capsys):
    import zarr

    from napari_fusion.io.napari_reader import get_reader
    from napari_fusion.samples import SAMPLES_DIR

    pair = SAMPLES_DIR / "pan_ms/Landsat8_LC80200392015216"
    rc = main(["fuse-large", str(pair / "pan.tif"), str(pair / "ms.tif"), str(tmp_path / "s.zarr"), "-m", "laplacian", "--tile", "128"])
    assert rc == 0, capsys.readouterr()
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    ms = _validate_ngff(g.attrs.asdict(), [g["0"].shape])
    assert [(ax["name"], ax["type"], ax.get("unit")) for ax in ms["axes"]] == [("c", "channel", None), ("y", "space", "meter"),
                                                                            ("x", "space", "meter")]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"][0] == 1.0
    layers = get_reader(str(tmp_path / "s.zarr"))(str(tmp_path / "s.zarr"))
    assert len(layers) == 1 and layers[0][1]["channel_axis"] == 0 and len(layers[0][1]["name"]) == 3


def test_rgb_layout_metadata_names_the_channel_last():
    ms = multiscales_metadata([(8, 10, 3), (4, 5, 3)], None, "yxc")
    assert [ax["name"] for ax in ms["axes"]] == ["y", "x", "c"] and "unit" not in ms["axes"][0]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0, 1.0]
