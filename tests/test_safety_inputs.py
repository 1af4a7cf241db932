"""Issue 17, bad inputs: model files and readers fail loudly, name the file and the problem, and
never run code from a file; geometry refuses pairs that do not overlap and accepts exact decimations.

Every test crafts its small bad file in ``tmp_path`` (safetensors, NIfTI, GeoTIFF) and reproduces one
case of the corpus.
"""
from __future__ import annotations

import io
import json
import pickle
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_fusion.methods import registry
from napari_fusion.methods.store import ModelFileError, read_metadata, save_bundle

WEIGHTS = registry.WEIGHTS_DIR
GIFNET_FILE = WEIGHTS / "gifnet.safetensors"


# ------------------------------------------------------------------------------------------------
# model files
# ------------------------------------------------------------------------------------------------
def _gifnet_bundle():
    """Tensors and metadata of a small freshly built GIFNet (the shipped architecture)."""
    from napari_fusion.methods.gifnet import GIFNet, GIFNetRunner

    torch.manual_seed(0)
    runner = GIFNetRunner(GIFNet(), device="cpu")
    return runner.to_bundle()


def _write_raw(path: Path, tensors: dict, meta_text: str) -> Path:
    """A safetensors file whose napari-fusion metadata is ``meta_text`` verbatim."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"napari_fusion": meta_text})
    return path


def _meta_json(meta: dict, **changes) -> str:
    full = {"format": "napari-fusion-model", "format_version": 1, **meta}
    full.update(changes)
    return json.dumps(full)


def test_nan_weights_are_refused(tmp_path):
    tensors, meta = _gifnet_bundle()
    key = "net.up.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][0, :3] = float("nan")
    tensors["net.up.bias"] = tensors["net.up.bias"].clone()
    tensors["net.up.bias"][1] = float("inf")
    path = save_bundle(tmp_path / "nan.safetensors", tensors, meta)
    with pytest.raises(ModelFileError) as err:
        registry.runner_from_file(path)
    msg = str(err.value)
    assert "nan.safetensors" in msg and "non-finite" in msg and "net.up.weight (3)" in msg and "net.up.bias (1)" in msg
    # the family loader (what `gifnet` with weights=PATH uses) refuses it too
    from napari_fusion.methods.gifnet import load_runner

    with pytest.raises(ModelFileError, match="non-finite"):
        load_runner(path)
    # and the same tensors, finite, load
    tensors[key][0, :3] = 0.0
    tensors["net.up.bias"][1] = 0.0
    ok = save_bundle(tmp_path / "ok.safetensors", tensors, meta)
    assert type(registry.runner_from_file(ok)).__name__ == "GIFNetRunner"


def test_unknown_config_key_is_a_model_file_error(tmp_path):
    tensors, meta = _gifnet_bundle()
    path = _write_raw(tmp_path / "extra.safetensors", tensors, _meta_json(meta, config={**meta["config"], "colour": 3}))
    with pytest.raises(ModelFileError) as err:
        registry.runner_from_file(path)
    msg = str(err.value)
    assert "extra.safetensors" in msg and "'colour'" in msg and "GIFNet" in msg


def test_string_for_int_is_a_model_file_error(tmp_path):
    tensors, meta = _gifnet_bundle()
    path = _write_raw(tmp_path / "text.safetensors", tensors, _meta_json(meta, config={**meta["config"], "up_dim": "12"}))
    with pytest.raises(ModelFileError) as err:
        registry.runner_from_file(path)
    msg = str(err.value)
    assert "text.safetensors" in msg and "config.up_dim" in msg and "number is expected" in msg


def test_string_in_nested_config_names_the_key(tmp_path):
    from napari_fusion.methods.multitask import MultiTaskNet, MultiTaskRunner

    tensors, meta = MultiTaskRunner(MultiTaskNet(n_classes=2, widths=(4, 4, 4, 4), stem=2)).to_bundle()
    cfg = {"net": {**meta["config"]["net"], "widths": [4, "4", 4, 4]}}
    path = _write_raw(tmp_path / "mt.safetensors", tensors, _meta_json(meta, config=cfg))
    with pytest.raises(ModelFileError, match=r"mt\.safetensors.*config\.net\.widths\[1\] is the text '4'"):
        registry.runner_from_file(path)


@pytest.mark.parametrize("text, problem", [("[1, 2, 3]", "JSON list"), ('"napari"', "JSON str"), ("3", "JSON int")])
def test_metadata_that_is_not_an_object(tmp_path, text, problem):
    tensors, _ = _gifnet_bundle()
    path = _write_raw(tmp_path / "list.safetensors", tensors, text)
    for load in (registry.runner_from_file, read_metadata):
        with pytest.raises(ModelFileError) as err:
            load(path)
        assert "list.safetensors" in str(err.value) and problem in str(err.value)


@pytest.mark.parametrize("version", ["one", "1", None, [1], True, 0, 1.5])
def test_non_numeric_format_version(tmp_path, version):
    tensors, meta = _gifnet_bundle()
    path = _write_raw(tmp_path / "ver.safetensors", tensors, _meta_json(meta, format_version=version))
    with pytest.raises(ModelFileError) as err:
        registry.runner_from_file(path)
    assert "ver.safetensors" in str(err.value) and "format_version" in str(err.value)


def test_newer_format_version_asks_to_upgrade(tmp_path):
    tensors, meta = _gifnet_bundle()
    path = _write_raw(tmp_path / "new.safetensors", tensors, _meta_json(meta, format_version=7))
    with pytest.raises(ModelFileError, match=r"new\.safetensors.*newer napari-fusion \(format 7\)"):
        registry.runner_from_file(path)


def test_config_that_is_a_list_or_family_not_a_name(tmp_path):
    tensors, meta = _gifnet_bundle()
    p1 = _write_raw(tmp_path / "c.safetensors", tensors, _meta_json(meta, config=[1, 2]))
    with pytest.raises(ModelFileError, match=r"c\.safetensors.*config: a JSON list"):
        registry.runner_from_file(p1)
    p2 = _write_raw(tmp_path / "f.safetensors", tensors, _meta_json(meta, family=["GIFNet"]))
    with pytest.raises(ModelFileError, match=r"f\.safetensors.*'family'"):
        registry.runner_from_file(p2)


def test_random_bytes_starting_with_0x80_are_not_called_pickle(tmp_path):
    rng = np.random.default_rng(0)
    body = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    for second in (b"\x02", b"\x04", b"\xff"):
        path = tmp_path / "noise.safetensors"
        data = b"\x80" + second + body
        path.write_bytes(data if data[-1:] != b"." else data + b"x")
        with pytest.raises(ModelFileError) as err:
            registry.runner_from_file(path)
        msg = str(err.value)
        assert "noise.safetensors" in msg and "not a safetensors model file" in msg
        assert "pickle" not in msg and "torch.save" not in msg


def test_real_pickles_and_torch_files_are_named_and_never_unpickled(tmp_path, monkeypatch):
    # unpickling anything would call this; it must never happen
    def boom(*a, **k):  # pragma: no cover - must not run
        raise AssertionError("a model file was unpickled")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    cases = {}
    cases["proto4.safetensors"] = (pickle.dumps({"w": [1.0, 2.0]}, protocol=4), "Python pickle file (protocol 4)")
    cases["proto2.safetensors"] = (pickle.dumps([1, 2], protocol=2), "Python pickle file (protocol 2)")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    cases["zip.safetensors"] = (buf.getvalue(), "torch.save file (a zip archive holding a pickle)")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf, _use_new_zipfile_serialization=False)
    cases["legacy.safetensors"] = (buf.getvalue(), "legacy torch.save file")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    cases["plainzip.safetensors"] = (zbuf.getvalue(), "a zip archive, not a safetensors model file")
    for name, (data, says) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelFileError) as err:
            registry.runner_from_file(path)
        assert name in str(err.value) and says in str(err.value), str(err.value)
        if "pickle" in says:
            assert "arbitrary code" in str(err.value)


def test_huge_layer_is_refused_before_anything_is_built(tmp_path):
    tensors, meta = _gifnet_bundle()
    path = _write_raw(tmp_path / "huge.safetensors", tensors, _meta_json(meta, config={**meta["config"], "up_dim": 5_000_000}))
    assert path.stat().st_size < 300_000
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError) as err:
        registry.runner_from_file(path)
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "huge.safetensors" in msg and "config.up_dim = 5000000" in msg and "sane range" in msg


@pytest.mark.parametrize(
    "change, says",
    [
        ({"enc_layers": 100000}, "config.enc_layers = 100000"),
        ({"kernel": 999}, "config.kernel = 999"),
        ({"dilations": [1] * 500}, "config.dilations lists 500 values"),
        ({"expansion": float("inf")}, "config.expansion"),
        ({"dim": -4}, "config.dim = -4"),
    ],
)
def test_config_numbers_are_bounded(tmp_path, change, says):
    tensors, meta = _gifnet_bundle()
    text = _meta_json(meta, config={**meta["config"], **change}).replace("Infinity", "1e999")
    path = _write_raw(tmp_path / "b.safetensors", tensors, text)
    with pytest.raises(ModelFileError) as err:
        registry.runner_from_file(path)
    assert "b.safetensors" in str(err.value) and says in str(err.value)


def test_config_that_disagrees_with_tensor_shapes_is_refused_without_allocating(tmp_path, monkeypatch):
    """A config within bounds but not what the tensors hold: found on the meta device, no real build."""
    from napari_fusion.methods import gifnet

    tensors, meta = _gifnet_bundle()
    path = _write_raw(tmp_path / "shape.safetensors", tensors, _meta_json(meta, config={**meta["config"], "up_dim": 1000}))
    devices = []
    real = registry._FAMILIES["GIFNet"]

    def spy(t, m, device):
        devices.append(str(device))
        return real(t, m, device)

    monkeypatch.setitem(registry._FAMILIES, "GIFNet", spy)
    with pytest.raises(ModelFileError) as err:
        registry.runner_from_file(path)
    msg = str(err.value)
    assert "shape.safetensors" in msg and "does not match the GIFNet architecture" in msg and "up.weight" in msg
    assert devices == ["meta"]  # only the shape-only dry run was attempted
    with pytest.raises(ModelFileError, match="does not match the GIFNet architecture"):
        gifnet.load_runner(path)


def test_malformed_classes_are_a_model_file_error(tmp_path):
    from napari_fusion.methods.multitask import MultiTaskNet, MultiTaskRunner

    tensors, meta = MultiTaskRunner(MultiTaskNet(n_classes=2, widths=(4, 4, 4, 4), stem=2)).to_bundle()
    for classes, says in ((["a", "b"], "MultiTaskVIF"), ([[0, "bg", "#000000"], [7, "x", "#ffffff"]], "outside"), ({"0": "bg"}, "'classes'")):
        path = _write_raw(tmp_path / "cls.safetensors", tensors, _meta_json(meta, classes=classes))
        with pytest.raises(ModelFileError) as err:
            registry.runner_from_file(path)
        assert "cls.safetensors" in str(err.value) and says in str(err.value), str(err.value)


def test_truncated_and_tiny_files(tmp_path):
    tensors, meta = _gifnet_bundle()
    good = save_bundle(tmp_path / "g.safetensors", tensors, meta)
    data = good.read_bytes()
    for n, says in ((0, "is empty"), (5, "truncated"), (200, "not a safetensors model file"), (len(data) - 100, "corrupt or truncated")):
        path = tmp_path / f"cut{n}.safetensors"
        path.write_bytes(data[:n])
        with pytest.raises(ModelFileError) as err:
            registry.runner_from_file(path)
        assert path.name in str(err.value) and says in str(err.value), (n, str(err.value))


def test_shipped_models_still_load():
    for name in ("gifnet", "tdfusion_ivif", "tdfusion_brats", "multitaskvif_brats"):
        path = WEIGHTS / f"{name}.safetensors"
        if path.is_file():
            assert registry.runner_from_file(path) is not None


# ------------------------------------------------------------------------------------------------
# readers: NIfTI
# ------------------------------------------------------------------------------------------------
def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _singular_sform(path: Path, data: np.ndarray, qform_code: int = 0) -> Path:
    """A NIfTI whose sform has a zero row (nibabel refuses to write one directly, so patch the header)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    hdr = img.header
    hdr["srow_z"] = [0.0, 0.0, 0.0, 0.0]
    hdr["sform_code"] = 1
    hdr["qform_code"] = qform_code
    nib.save(nib.Nifti1Image(data, None, header=hdr), str(path))
    return path


def test_nifti_singular_sform_names_file_and_problem(tmp_path):
    from napari_fusion.io import ImageReadError, read_image

    path = _singular_sform(tmp_path / "sing.nii.gz", np.random.default_rng(0).random((6, 7, 8), dtype=np.float32))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = str(err.value)
    assert "sing.nii.gz" in msg and "sform affine is singular" in msg and "start_ornt" not in msg


def test_nifti_singular_sform_falls_back_to_a_valid_qform(tmp_path):
    from napari_fusion.io import read_image

    data = np.random.default_rng(0).random((6, 7, 8), dtype=np.float32)
    path = _singular_sform(tmp_path / "q.nii.gz", data, qform_code=1)
    with pytest.warns(UserWarning, match=r"q\.nii\.gz: its sform affine is singular.*using its qform"):
        img = read_image(path)
    assert img.data.shape == (8, 7, 6)
    np.testing.assert_allclose(sorted(img.grid.scale), [2.0, 2.0, 3.0])


def test_nifti_single_slice_without_thickness_is_read(tmp_path):
    import nibabel as nib

    from napari_fusion.io import read_image

    data = np.random.default_rng(0).random((6, 7, 1), dtype=np.float32)
    img = nib.Nifti1Image(data, np.eye(4))
    hdr = img.header
    hdr["srow_z"] = [0.0, 0.0, 0.0, 0.0]  # zero thickness along the one-slice axis
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    path = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(data, None, header=hdr), str(path))
    back = read_image(path)
    assert back.grid.shape == (1, 7, 6) and np.all(np.isfinite(back.grid.affine))


def test_nifti_nan_affine_names_file(tmp_path):
    import nibabel as nib

    from napari_fusion.io import ImageReadError, read_image

    data = np.zeros((4, 5, 6), np.float32)
    img = nib.Nifti1Image(data, np.eye(4))
    hdr = img.header
    hdr["srow_x"] = [np.nan, 0.0, 0.0, 0.0]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, None, header=hdr), str(path))
    with pytest.raises(ImageReadError, match=r"nan\.nii: its sform affine is not finite"):
        read_image(path)


def test_3d_and_4d_nifti_pair_names_the_problem(tmp_path):
    from napari_fusion import api

    rng = np.random.default_rng(0)
    a = _nifti(tmp_path / "vol3.nii.gz", rng.random((8, 9, 10), dtype=np.float32))
    b = _nifti(tmp_path / "series4.nii.gz", rng.random((8, 9, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError) as err:
        api.fuse(a, b, "average")
    msg = str(err.value)
    assert "broadcast" not in msg and "series4" in msg and "4-D" in msg


# ------------------------------------------------------------------------------------------------
# readers: GeoTIFF
# ------------------------------------------------------------------------------------------------
_GEOKEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32616, 3076, 0, 1, 9001)


def _geotiff(path: Path, data: np.ndarray, px: tuple[float, float], tie: tuple[float, float]) -> Path:
    import tifffile

    tags = [
        (33550, 12, 3, (px[0], px[1], 0.0), True),
        (33922, 12, 6, (0.0, 0.0, 0.0, tie[0], tie[1], 0.0), True),
        (34735, 3, len(_GEOKEYS), _GEOKEYS, True),
    ]
    tifffile.imwrite(path, data, extratags=tags, photometric="minisblack", metadata=None)
    return path


def test_geotiff_negative_pixel_scale_is_kept_as_a_flip(tmp_path):
    from napari_fusion.io import read_image

    rng = np.random.default_rng(3)
    north_up = rng.integers(0, 60000, (40, 50), dtype=np.uint16)
    x0, y_top, step = 465_000.0, 3_400_000.0, 30.0
    a = read_image(_geotiff(tmp_path / "north_up.tif", north_up, (step, step), (x0, y_top)))
    # the same place stored south-up: rows run north, raster (0, 0) is the south-west corner
    y_bottom = y_top - 40 * step
    b = read_image(_geotiff(tmp_path / "south_up.tif", north_up[::-1].copy(), (step, -step), (x0, y_bottom)))
    assert "geotiff_tags" in b.meta and b.grid.units == "m" and not b.grid.is_identity
    assert b.grid.affine[0, 0] == -step  # rows go north: world[0] = -northing decreases
    # centre of B's pixel (0, 0) is 15 m north of the bottom edge, 15 m east of the west edge
    np.testing.assert_allclose(b.grid.index_to_world([0, 0]), [-(y_bottom + 15.0), x0 + 15.0])
    gt = b.meta["geotransform"]
    assert gt[0] == x0 and gt[1] == step and gt[3] == y_bottom and gt[5] == step  # GDAL: south-up, dy > 0
    # brought onto A's grid, B is A again pixel for pixel
    np.testing.assert_array_equal(bring_onto_checked(b, a), north_up)
    # a negative X scale (columns run west) too
    c = read_image(_geotiff(tmp_path / "east_west.tif", north_up[:, ::-1].copy(), (-step, step), (x0 + 50 * step, y_top)))
    np.testing.assert_array_equal(bring_onto_checked(c, a), north_up)


def bring_onto_checked(b, a):
    from napari_fusion.geometry import bring_onto

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return bring_onto(b.data, b.grid, a.grid, order=1)


def test_geotiff_flipped_grid_tags_round_trip(tmp_path):
    from napari_fusion.io import read_image
    from napari_fusion.io.geotiff import geotags_from_grid, grid_from_geotags

    b = read_image(_geotiff(tmp_path / "s.tif", np.ones((10, 12), np.float32), (20.0, -20.0), (1000.0, 5000.0)))
    tags = {code: (dt, count, value) for code, dt, count, value, _ in geotags_from_grid(b.grid, b.meta["geotiff_tags"])}
    again = grid_from_geotags(tags, (10, 12))
    np.testing.assert_allclose(again.affine, b.grid.affine)


def test_geotiff_zero_pixel_scale_names_file(tmp_path):
    from napari_fusion.io import ImageReadError, read_image

    path = _geotiff(tmp_path / "zero.tif", np.ones((10, 12), np.float32), (0.0, 20.0), (1000.0, 5000.0))
    with pytest.raises(ImageReadError, match=r"zero\.tif.*ModelPixelScale \(0, 20\) has a zero"):
        read_image(path)


# ------------------------------------------------------------------------------------------------
# geometry: pairs that do not overlap, exact decimations
# ------------------------------------------------------------------------------------------------
def test_nifti_pair_without_overlap_is_refused(tmp_path):
    from napari_fusion import api
    from napari_fusion.geometry import bring_onto
    from napari_fusion.io import read_image

    rng = np.random.default_rng(0)
    aff_b = np.eye(4)
    aff_b[:3, 3] = [500.0, 0.0, 0.0]  # 500 mm to the left of A
    pa = _nifti(tmp_path / "t1.nii.gz", rng.random((10, 12, 14), dtype=np.float32))
    pb = _nifti(tmp_path / "far.nii.gz", rng.random((10, 12, 14), dtype=np.float32), aff_b)
    a, b = read_image(pa), read_image(pb)
    with pytest.raises(ValueError) as err:
        bring_onto(b.data, b.grid, a.grid, names=(str(pa), str(pb)))
    msg = str(err.value)
    assert str(pa) in msg and str(pb) in msg and "does not overlap" in msg and "covers none" in msg
    # through the API (which names the sources "source A/B" until the pipeline passes file names)
    with pytest.raises(ValueError, match="does not overlap"):
        api.fuse(pa, pb, "average")


def test_nifti_pair_with_little_overlap_warns(tmp_path):
    from napari_fusion.geometry import CoverageWarning, bring_onto, coverage
    from napari_fusion.io import read_image

    rng = np.random.default_rng(0)
    pa = _nifti(tmp_path / "a.nii.gz", rng.random((20, 12, 14), dtype=np.float32))
    a = read_image(pa)
    for shift, expected in ((19.0, 0.05), (18.0, 0.10)):
        aff_b = np.eye(4)
        aff_b[:3, 3] = [shift, 0.0, 0.0]  # B starts `shift` mm to the left: it covers 1 or 2 of A's 20 x-columns
        pb = _nifti(tmp_path / f"b{int(shift)}.nii.gz", rng.random((20, 12, 14), dtype=np.float32), aff_b)
        b = read_image(pb)
        assert coverage(b.grid, a.grid) == pytest.approx(expected)
        if expected < 0.1:
            with pytest.warns(CoverageWarning, match=r"b19\.nii\.gz covers only 5\.0% of .*a\.nii\.gz's grid"):
                out = bring_onto(b.data, b.grid, a.grid, names=(str(pa), str(pb)))
        else:  # 10 % and more: no warning
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                out = bring_onto(b.data, b.grid, a.grid, names=(str(pa), str(pb)))
        assert out.shape == a.data.shape
        assert np.count_nonzero(out) == pytest.approx(expected * out.size, rel=0.01)


def test_coverage_is_exact_for_oblique_grids():
    from napari_fusion.geometry import Grid, coverage

    ga = Grid.from_scale((40, 50), 1.0, 0.0, "mm")
    th = np.deg2rad(30)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    gb = Grid((30, 30), rot @ np.diag([1.0, 1.0, 1.0]), "mm")
    frac = coverage(gb, ga)
    # brute force: every A centre mapped into B
    idx = np.stack(np.meshgrid(np.arange(40), np.arange(50), indexing="ij"), -1).reshape(-1, 2)
    bi = gb.world_to_index(ga.index_to_world(idx))
    inside = np.all((bi >= -0.5 - 1e-6) & (bi <= np.array([29.5, 29.5]) + 1e-6), axis=1)
    assert frac == pytest.approx(inside.mean()) and 0 < frac < 1
    far = Grid(gb.shape, np.array([[1, 0, 1000.0], [0, 1, 0], [0, 0, 1]]) @ gb.affine, "mm")
    assert coverage(far, ga) == 0.0


def test_exact_2x_decimation_is_accepted():
    from napari_fusion.geometry import bring_onto, resolution_ratio

    rng = np.random.default_rng(0)
    for shape in ((480, 640), (481, 641), (7, 9)):
        a = rng.random(shape, dtype=np.float32)
        b = a[::2, ::2]  # 481x641 -> 241x321 (ceil)
        assert resolution_ratio(b.shape, a.shape) == 2.0, shape
        assert resolution_ratio(a.shape, b.shape) == 0.5, shape
        from napari_fusion.geometry import Grid

        out = bring_onto(b, Grid.identity(b.shape), Grid.identity(a.shape))
        assert out.shape == a.shape and np.all(np.isfinite(out))
    # 4x and 3x decimations with odd sizes
    assert resolution_ratio((121, 161), (481, 641)) == 4.0
    assert resolution_ratio((161, 214), (481, 641)) == 3.0
    # still refused when no integer ratio explains both sizes
    assert resolution_ratio((240, 300), (480, 640)) is None
    assert resolution_ratio((200, 320), (480, 640)) is None


def test_exact_2x_decimated_layer_fuses_through_the_api():
    from napari_fusion import api

    rng = np.random.default_rng(1)
    a = rng.random((121, 161), dtype=np.float32)
    fused = api.fuse(a, a[::2, ::2].copy(), "average")
    assert fused.shape == a.shape
