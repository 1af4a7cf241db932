"""Readers, writers, pair folders and the napari reader/writer contributions."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_fusion.geometry import Grid, bring_onto
from napari_fusion.io import ImageReadError, LoadedImage, find_pairs, read_image, read_pair, write_image
from napari_fusion.io import common as io_common
from napari_fusion.io.napari_reader import get_reader
from napari_fusion.io.napari_writer import write_image as napari_write
from napari_fusion.samples import sample_paths
from napari_fusion.training.data import shared_data_dir

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="needs ../shared/data")
LANDSAT = (SHARED / "remote" / "Landsat8_LC80200392015216") if SHARED else None
SCT = (SHARED / "volumes" / "SCT-errsm30") if SHARED else None

# GeoKeys: projected, raster type (1 area / 2 point), EPSG 32616, metres
def _geokeys(raster_type: int) -> tuple:
    return (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, raster_type, 3072, 0, 1, 32616, 3076, 0, 1, 9001)


def _write_geotiff(path: Path, data: np.ndarray, raster_type: int, tie=(1000.0, 5000.0), px=(10.0, 10.0)) -> Path:
    tags = [
        (33550, 12, 3, (px[0], px[1], 0.0), True),
        (33922, 12, 6, (0.0, 0.0, 0.0, tie[0], tie[1], 0.0), True),
        (34735, 3, 20, _geokeys(raster_type), True),
    ]
    tifffile.imwrite(path, data, extratags=tags, photometric="minisblack", metadata=None)
    return path


# --- pixel types and channel layouts ---------------------------------------------------------
def test_16bit_tiff_and_png_stay_16bit(tmp_path):
    x = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) * 20).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", x)
    img = read_image(tmp_path / "a.tif")
    assert img.data.dtype == np.uint16 and not img.rgb and img.channel_axis is None
    np.testing.assert_array_equal(img.data, x)
    write_image(tmp_path / "a.png", x)
    back = read_image(tmp_path / "a.png")
    assert back.data.dtype == np.uint16
    np.testing.assert_array_equal(back.data, x)


def test_rgb_gray_and_rgba_detection(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    write_image(tmp_path / "g3.png", np.stack([gray] * 3, -1))  # gray stored as RGB
    img = read_image(tmp_path / "g3.png")
    assert img.data.shape == (20, 30) and not img.rgb
    np.testing.assert_array_equal(img.data, gray)
    rgba = rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    write_image(tmp_path / "c4.png", rgba)
    img = read_image(tmp_path / "c4.png")
    assert img.rgb and img.data.shape == (20, 30, 3)
    np.testing.assert_array_equal(img.data, rgba[..., :3])
    tifffile.imwrite(tmp_path / "rgb.tif", rgba[..., :3], photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").rgb


def test_shipped_pairs_gray_stored_as_rgb_and_colour():
    ir, vi = sample_paths("ivif")
    assert read_image(ir).data.ndim == 2
    v = read_image(vi)
    assert v.rgb and v.data.shape == (301, 496, 3)
    mri, ct = sample_paths("mri_ct")
    from imageio.v3 import imread

    assert imread(ct).shape == (256, 256, 3)  # stored as RGB with R == G == B ...
    assert read_image(ct).data.shape == (256, 256)  # ... read as gray
    assert read_image(mri).data.shape == (256, 256)
    _, pet = sample_paths("mri_pet")
    assert read_image(pet).rgb


def test_multiband_tiff_is_bands_first(tmp_path):
    x = np.arange(5 * 8 * 9, dtype=np.uint16).reshape(5, 8, 9)
    tifffile.imwrite(tmp_path / "b.tif", x, photometric="minisblack", planarconfig="separate")
    img = read_image(tmp_path / "b.tif")
    assert img.channel_axis == 0 and img.data.shape == (5, 8, 9) and img.grid.shape == (8, 9)
    tifffile.imwrite(tmp_path / "p.tif", x, photometric="minisblack")  # 5 pages
    assert read_image(tmp_path / "p.tif").channel_axis == 0


# --- errors ----------------------------------------------------------------------------------
def test_empty_file_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"this is not an image at all" * 20)
    with pytest.raises(ImageReadError, match="junk.tif: unrecognised or corrupt"):
        read_image(tmp_path / "junk.tif")
    ir, _ = sample_paths("ivif")
    write_image(tmp_path / "ok.png", read_image(ir).data)
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageReadError, match="cut.png: cannot decode PNG"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")


def test_nan_error_counts_values(tmp_path):
    x = np.ones((10, 10), np.float32)
    x[2, 3] = np.nan
    x[4, 4] = np.inf
    x[5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", x)
    with pytest.raises(ImageReadError, match=r"nan\.tif: contains 3 NaN/inf value\(s\)"):
        read_image(tmp_path / "nan.tif")


def test_unsupported_dtype_and_channel_count(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.ones((6, 7), np.complex64))
    with pytest.raises(ImageReadError, match="c.tif: unsupported pixel type complex64"):
        read_image(tmp_path / "c.tif")
    tifffile.imwrite(tmp_path / "two.tif", np.ones((6, 7, 2), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(ImageReadError, match="two.tif: has 2 channels"):
        read_image(tmp_path / "two.tif")


# --- GeoTIFF ---------------------------------------------------------------------------------
def test_pixel_is_area_vs_point(tmp_path):
    x = np.zeros((4, 6), np.uint16)
    area = read_image(_write_geotiff(tmp_path / "area.tif", x, 1))
    point = read_image(_write_geotiff(tmp_path / "point.tif", x, 2))
    # area: the tiepoint is pixel (0,0)'s corner, its centre is half a pixel inside
    np.testing.assert_allclose(area.grid.index_to_world([0, 0]), [-(5000 - 5), 1000 + 5])
    np.testing.assert_allclose(point.grid.index_to_world([0, 0]), [-5000, 1000])
    assert area.meta["geotransform"][0] == 1000 and area.meta["geotransform"][3] == 5000
    assert point.meta["geotransform"][0] == 995 and point.meta["geotransform"][3] == 5005
    assert area.grid.units == "m" and point.meta["raster_type"] == "PixelIsPoint"


@needs_shared
def test_landsat_pan_and_ms_pixel_size_and_origin():
    pan, ms = read_image(LANDSAT / "pan.tif"), read_image(LANDSAT / "ms.tif")
    np.testing.assert_allclose(pan.grid.scale, [15, 15])
    np.testing.assert_allclose(ms.grid.scale, [30, 30])
    # documented GDAL corner origins (SOURCE.md): pan (452467.5, 3408652.5), ms (452475, 3408645)
    assert pan.meta["geotransform"] == (452467.5, 15.0, 0.0, 3408652.5, 0.0, -15.0)
    assert ms.meta["geotransform"] == (452475.0, 30.0, 0.0, 3408645.0, 0.0, -30.0)
    assert pan.meta["raster_type"] == "PixelIsPoint"
    assert pan.data.dtype == np.uint16 and ms.data.shape == (3, 603, 627) and ms.channel_axis == 0


@needs_shared
def test_landsat_ms_layer_overlays_pan():
    layers = get_reader(str(LANDSAT))(str(LANDSAT))
    (pan, pkw, _), (ms, mkw, _) = layers
    assert pkw["name"] == "pan" and mkw["channel_axis"] == 0
    world = np.array([-3400000.0, 460000.0])  # (-northing, easting) in metres
    to_index = lambda kw, w: (w - np.asarray(kw["translate"])) / np.asarray(kw["scale"])  # noqa: E731
    ip, im = to_index(pkw, world), to_index(mkw, world)
    np.testing.assert_allclose(im, (ip - 1) / 2)  # half a pan pixel offset, 2x coarser
    # and the pixels there hold the same place: ms sampled on the pan grid equals ms at that index
    r, c = np.round(im).astype(int)
    on_pan = bring_onto(ms, Grid.from_scale(ms.shape[1:], mkw["scale"], mkw["translate"], "m"),
                        Grid.from_scale(pan.shape, pkw["scale"], pkw["translate"], "m"), channel_axis=0)
    np.testing.assert_array_equal(on_pan[:, 2 * r + 1, 2 * c + 1], ms[:, r, c])


def test_geotiff_write_read_round_trip_keeps_georeferencing(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 4000, (40, 60), dtype=np.uint16)
    src = read_image(_write_geotiff(tmp_path / "pan.tif", x, 2, tie=(452475.0, 3408645.0), px=(15.0, 15.0)))
    fused = (x // 2).astype(np.uint16)
    write_image(tmp_path / "fused.tif", fused, like=src)
    back = read_image(tmp_path / "fused.tif")
    assert back.grid == src.grid
    assert back.meta["geotransform"] == src.meta["geotransform"]
    assert back.meta["raster_type"] == "PixelIsPoint"
    with tifffile.TiffFile(tmp_path / "fused.tif") as tf:
        assert int(tf.geotiff_metadata["ProjectedCSTypeGeoKey"]) == 32616
    np.testing.assert_array_equal(back.data, fused)
    # a crop keeps its own origin
    write_image(tmp_path / "crop.tif", fused[10:20, 5:25], like=src, grid=src.grid.crop((10, 5), (10, 20)))
    crop = read_image(tmp_path / "crop.tif")
    np.testing.assert_allclose(crop.grid.index_to_world([0, 0]), src.grid.index_to_world([10, 5]))


def test_multiband_geotiff_round_trip_with_band_names(tmp_path):
    x = np.arange(3 * 10 * 12, dtype=np.uint16).reshape(3, 10, 12)
    g = Grid.from_scale((10, 12), 30.0, (-3408630.0, 452490.0), "m")
    write_image(tmp_path / "ms.tif", x, grid=g, band_names=["blue", "green", "red"])
    back = read_image(tmp_path / "ms.tif")
    assert back.channel_axis == 0 and back.meta["band_names"] == ["blue", "green", "red"]
    assert back.grid == g
    np.testing.assert_array_equal(back.data, x)


# --- NIfTI -----------------------------------------------------------------------------------
@needs_shared
def test_nifti_spacing_and_affine_of_sct_volumes():
    import nibabel as nib

    t2, t2s = read_image(SCT / "t2.nii.gz"), read_image(SCT / "t2s.nii.gz")
    assert t2.data.shape == (55, 60, 52) and t2.grid.units == "mm"  # stored P,S,R -> (S, P, L)
    np.testing.assert_allclose(t2.grid.scale, [1, 1, 1], atol=1e-6)
    assert t2s.data.shape == (9, 54, 49)
    np.testing.assert_allclose(t2s.grid.scale, [7.5, 0.5, 0.5], atol=1e-5)
    # every voxel keeps its world position: compare through nibabel's own affine
    for path, img in ((SCT / "t2.nii.gz", t2), (SCT / "t2s.nii.gz", t2s)):
        nii = nib.load(path)
        raw = np.asarray(nii.dataobj)
        rng = np.random.default_rng(3)
        for _ in range(20):
            ijk = np.array([rng.integers(s) for s in raw.shape[:3]])
            ras = nii.affine @ np.r_[ijk, 1.0]
            world = np.array([ras[2], -ras[1], -ras[0]])  # (S, P, L)
            idx = np.round(img.grid.world_to_index(world)).astype(int)
            assert img.data[tuple(idx)] == raw[tuple(ijk)]


def test_nifti_write_keeps_affine_header_and_voxel_order(tmp_path):
    import nibabel as nib

    _, src_path = sample_paths("volume")  # t2s, oblique 0.5x0.5x7.5 mm
    src = read_image(src_path)
    write_image(tmp_path / "fused.nii.gz", src.data * 2, like=src)
    a, b = nib.load(src_path), nib.load(tmp_path / "fused.nii.gz")
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)
    assert b.shape == a.shape
    np.testing.assert_allclose(np.asarray(b.dataobj), np.asarray(a.dataobj) * 2)
    assert b.header["descrip"] == a.header["descrip"]
    # without `like`, the grid alone gives the same geometry back
    write_image(tmp_path / "plain.nii", src.data, grid=src.grid)
    back = read_image(tmp_path / "plain.nii")
    assert back.grid == Grid(src.grid.shape, src.grid.affine, "mm")
    np.testing.assert_array_equal(back.data, src.data)


def test_nifti_4d_series_has_leading_axis(tmp_path):
    import nibabel as nib

    vol = np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(4, 5, 6, 3)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "s.nii.gz")
    img = read_image(tmp_path / "s.nii.gz")
    assert img.channel_axis == 0 and img.data.shape == (3, 6, 5, 4)
    np.testing.assert_allclose(img.grid.scale, [3, 2, 2])
    (data, kw, kind) = get_reader(str(tmp_path / "s.nii.gz"))(str(tmp_path / "s.nii.gz"))[0]
    assert kind == "image" and len(kw["scale"]) == 4


# --- pair folders ----------------------------------------------------------------------------
def _touch_png(path: Path, value: int = 0, shape=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full(shape, value, np.uint8))


def test_find_pairs_layouts_and_missing_partner(tmp_path):
    for n in ("a", "b", "c"):
        _touch_png(tmp_path / "ivif" / "ir" / f"{n}.png")
    for n in ("a", "b"):
        _touch_png(tmp_path / "ivif" / "vi" / f"{n}.png")
    with pytest.warns(UserWarning, match=r"c\.png has no partner"):
        pairs = find_pairs(tmp_path / "ivif")
    assert [(p.name, p.modality_a, p.modality_b) for p in pairs] == [("a", "ir", "vi"), ("b", "ir", "vi")]
    with pytest.raises(FileNotFoundError, match=r"c\.png has no partner"):
        find_pairs(tmp_path / "ivif", missing="raise")

    for mod in ("MRI", "CT", "PET"):
        _touch_png(tmp_path / "med" / mod / "11.png")
    pairs = find_pairs(tmp_path / "med")
    assert {(p.name, p.modality_b) for p in pairs} == {("11_CT", "CT"), ("11_PET", "PET")}

    for scene in ("S1", "S2"):
        _touch_png(tmp_path / "remote" / scene / "pan.png", shape=(16, 16))
        _touch_png(tmp_path / "remote" / scene / "ms.png", shape=(4, 4))
    _touch_png(tmp_path / "remote" / "S3" / "pan.png")
    with pytest.warns(UserWarning, match="no partner"):
        pairs = find_pairs(tmp_path / "remote")
    assert [p.name for p in pairs] == ["S1", "S2"]
    assert [p.name for p in find_pairs(tmp_path / "remote" / "S1")] == ["S1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_pairs(tmp_path / "remote" / "S1" / "..", missing="ignore")[0].modality_a == "pan"


def test_read_pair_names_layers_by_modality_and_sets_ratio_grid(tmp_path):
    _touch_png(tmp_path / "S1" / "pan.png", shape=(32, 32))
    _touch_png(tmp_path / "S1" / "ms.png", shape=(8, 8))
    a, b = read_pair(tmp_path / "S1")
    assert (a.name, b.name) == ("pan", "ms")
    np.testing.assert_allclose(b.grid.scale, [4, 4])
    np.testing.assert_allclose(b.grid.translate, [1.5, 1.5])
    with pytest.raises(FileNotFoundError, match="no pair named 'S9'"):
        read_pair(tmp_path, name="S9")
    _touch_png(tmp_path / "S2" / "pan.png")
    with pytest.raises(FileNotFoundError, match="has no partner"):
        read_pair(tmp_path, name="S2")


@needs_shared
def test_find_pairs_on_real_folders():
    assert len(find_pairs(SHARED / "ivif" / "RoadScene")) == 50
    assert len(find_pairs(SHARED / "medical" / "MRI_PET")) == 42
    remote = find_pairs(SHARED / "remote")
    assert {p.name for p in remote} >= {"Landsat8_LC80200392015216", "WV2_GRIP"}
    pan, ms = read_pair(SHARED / "remote" / "WV2_GRIP")
    np.testing.assert_allclose(ms.grid.scale, [4, 4])  # non-georeferenced, ratio 4


# --- big files -------------------------------------------------------------------------------
def test_large_tiffs_are_not_read_whole(tmp_path, monkeypatch):
    x = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    tifffile.imwrite(tmp_path / "raw.tif", x)
    tifffile.imwrite(tmp_path / "zip.tif", x, compression="zlib", tile=(32, 32))
    monkeypatch.setattr(io_common, "LAZY_BYTES", 1000)
    raw = read_image(tmp_path / "raw.tif")
    assert isinstance(raw.data, np.memmap) and raw.meta["lazy"]
    z = read_image(tmp_path / "zip.tif")
    assert type(z.data).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(z.data), x)
    np.testing.assert_array_equal(np.asarray(raw.data), x)


# --- writers ---------------------------------------------------------------------------------
def test_png_jpeg_writers_and_their_limits(tmp_path):
    u = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
    write_image(tmp_path / "u.png", u)
    np.testing.assert_array_equal(read_image(tmp_path / "u.png").data, np.rint(u * 255).astype(np.uint8))
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[..., 0] = 200
    write_image(tmp_path / "c.jpg", rgb)
    back = read_image(tmp_path / "c.jpg")
    assert back.rgb and abs(int(back.data[..., 0].mean()) - 200) <= 2
    with pytest.raises(ValueError, match="int16 values cannot go into PNG"):
        write_image(tmp_path / "bad.png", np.zeros((4, 4), np.int16))
    with pytest.raises(ValueError, match="unknown output format .bmp"):
        write_image(tmp_path / "x.bmp", rgb)
    assert not list(tmp_path.glob(".*part*"))  # failed writes leave nothing behind


# --- napari contributions --------------------------------------------------------------------
def test_napari_reader_returns_none_for_unknown_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without a pair layout
    assert get_reader(str(tmp_path / "nothing.tif")) is None
    assert get_reader([str(tmp_path / "notes.txt")]) is None


def test_napari_reader_nifti_scale_and_world_placement():
    _, t2s = sample_paths("volume")
    layers = get_reader(str(t2s))(str(t2s))
    assert len(layers) == 1
    data, kw, kind = layers[0]
    assert kind == "image" and data.shape == (9, 54, 49)
    np.testing.assert_allclose(kw["scale"], [7.5, 0.5, 0.5], atol=1e-5)
    assert kw["units"] == "mm" and kw["colormap"] == "gray"
    # oblique: napari's affine @ diag(scale) is the grid affine
    g = kw["metadata"]["grid"]
    np.testing.assert_allclose(kw["affine"] @ np.diag([*kw["scale"], 1.0]), g.affine, atol=1e-9)


def test_napari_reader_pair_folder_and_file_list():
    ir, vi = sample_paths("ivif")
    folder = ir.parent.parent
    layers = get_reader(str(folder))(str(folder))
    assert [kw["name"] for _, kw, _ in layers] == ["ir", "vi"]
    assert layers[1][1]["rgb"] is True
    both = get_reader([str(ir), str(vi)])([str(ir), str(vi)])
    assert [kw["name"] for _, kw, _ in both] == ["FLIR_00211", "FLIR_00211"]


def test_napari_writer_keeps_geometry_from_layer(tmp_path):
    pan, _ = sample_paths("pan_ms")
    data, kw, _ = get_reader(str(pan))(str(pan))[0]
    attrs = {k: v for k, v in kw.items() if k != "contrast_limits"}
    out = napari_write(str(tmp_path / "saved.tif"), data, attrs)
    back = read_image(out[0])
    assert back.grid == read_image(pan).grid and back.meta["raster_type"] == "PixelIsPoint"
    # without the reader's metadata the layer's scale/translate still georeference the file
    plain = {"name": "x", "scale": (15.0, 15.0), "translate": (-3000.0, 500.0), "units": "m", "metadata": {}}
    out = napari_write(str(tmp_path / "plain.tif"), data, plain)
    np.testing.assert_allclose(read_image(out[0]).meta["geotransform"][:4], (492.5, 15.0, 0.0, 3007.5))


def test_loaded_image_fields():
    img = read_image(sample_paths("mri_ct")[0])
    assert isinstance(img, LoadedImage) and img.name == "19" and img.meta["path"].endswith("19.png")
    assert img.spatial_shape == (256, 256) and img.path.name == "19.png"


def test_huge_lazy_scene_gets_a_multiscale_layer(tmp_path, monkeypatch):
    from napari_fusion.io import napari_reader

    x = np.arange(2048 * 2048, dtype=np.uint16).reshape(2048, 2048) % 4000
    tifffile.imwrite(tmp_path / "big.tif", x, compression="zlib", tile=(256, 256))
    monkeypatch.setattr(io_common, "LAZY_BYTES", 1000)
    monkeypatch.setattr(napari_reader, "_PYRAMID_MIN", 1024)
    data, kw, _ = get_reader(str(tmp_path / "big.tif"))(str(tmp_path / "big.tif"))[0]
    assert kw["multiscale"] is True and [d.shape for d in data] == [(2048, 2048), (1024, 1024)]
    lo, hi = kw["contrast_limits"]
    assert 0 <= lo < hi <= 4000


def test_lazy_arrays_are_written_tile_by_tile(tmp_path):
    da = pytest.importorskip("dask.array")
    x = (np.arange(600 * 520, dtype=np.uint32).reshape(600, 520) % 65521).astype(np.uint16)
    lazy = da.from_array(x, chunks=(128, 128))
    g = Grid.from_scale((600, 520), 15.0, (-3408645.0, 452475.0), "m")
    write_image(tmp_path / "big.tif", lazy, grid=g)
    back = read_image(tmp_path / "big.tif")
    np.testing.assert_array_equal(back.data, x)
    assert back.grid == g
    with tifffile.TiffFile(tmp_path / "big.tif") as tf:
        assert tf.pages[0].is_tiled
    bands = da.from_array(np.stack([x, x // 2, x // 3]), chunks=(1, 256, 256))
    write_image(tmp_path / "bands.tif", bands, grid=g)
    np.testing.assert_array_equal(read_image(tmp_path / "bands.tif").data[2], x // 3)
