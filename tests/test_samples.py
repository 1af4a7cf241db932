"""Shipped sample data: present, small, licensed, readable, placed correctly, wired into napari.yaml."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import napari_fusion
from napari_fusion import samples
from napari_fusion.io import find_pairs, read_image

MANIFEST = Path(napari_fusion.__file__).parent / "napari.yaml"


@pytest.mark.parametrize("key", samples.SAMPLE_KEYS)
def test_sample_files_exist_and_are_named_in_sources(key):
    sources = (samples.SAMPLES_DIR / "SOURCES.md").read_text()
    for p in samples.sample_paths(key):
        assert p.is_file() and p.stat().st_size > 1000
        assert str(p.relative_to(samples.SAMPLES_DIR).parent).split("/")[0] in sources
        assert p.name in sources


def test_samples_total_size_and_no_restricted_sources():
    files = [p for p in samples.SAMPLES_DIR.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    total = sum(p.stat().st_size for p in files)
    assert total < 3_000_000, f"samples take {total} bytes"
    names = " ".join(str(p) for p in files)
    for banned in ("BraTS", "GRIP", "WV2", "IKONOS", "GeoEye"):
        assert banned not in names


def test_unknown_sample_key():
    with pytest.raises(KeyError, match="unknown sample 'foo'"):
        samples.sample_paths("foo")


def test_manifest_sample_commands_resolve_to_functions_returning_two_layers():
    yaml = pytest.importorskip("yaml")
    manifest = yaml.safe_load(MANIFEST.read_text())
    cmds = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    keys = []
    for s in manifest["contributions"]["sample_data"]:
        mod, fn = cmds[s["command"]].split(":")
        func = getattr(importlib.import_module(mod), fn)
        layers = func()
        assert len(layers) == 2 and all(kind == "image" for _, _, kind in layers)
        keys.append(s["key"])
    assert sorted(keys) == sorted(samples.SAMPLE_KEYS)


def test_ivif_and_medical_samples():
    (ir, irkw, _), (vi, vikw, _) = samples.ivif_pair()
    assert ir.shape == (301, 496) and vi.shape == (301, 496, 3) and vikw["rgb"]
    assert (irkw["name"], vikw["name"]) == ("ir", "vi")
    (mri, _, _), (ct, ctkw, _) = samples.mri_ct_pair()
    assert mri.shape == ct.shape == (256, 256) and ctkw["name"] == "CT"
    (_, _, _), (pet, petkw, _) = samples.mri_pet_pair()
    assert pet.shape == (256, 256, 3) and petkw["rgb"]


def test_pan_ms_sample_geometry():
    (pan, pkw, _), (ms, mkw, _) = samples.pan_ms_pair()
    assert pan.shape == (256, 256) and ms.shape == (3, 128, 128) and pan.dtype == np.uint16
    assert pkw["scale"] == (15.0, 15.0) and mkw["scale"] == (30.0, 30.0) and pkw["units"] == "m"
    assert mkw["colormap"] == ["blue", "green", "red"]
    pa, pb = samples.sample_paths("pan_ms")
    assert read_image(pa).meta["geotransform"] == (465667.5, 15.0, 0.0, 3394492.5, 0.0, -15.0)
    assert read_image(pb).meta["geotransform"] == (465675.0, 30.0, 0.0, 3394485.0, 0.0, -30.0)
    # the MS crop lies inside the pan crop's footprint
    np.testing.assert_allclose(np.asarray(mkw["translate"]) - np.asarray(pkw["translate"]), [15.0, 15.0])


def test_volume_sample_grids_differ_and_overlap():
    (t2, kw2, _), (t2s, kws, _) = samples.mri_volume_pair()
    assert (kw2["name"], kws["name"]) == ("T2", "T2*")
    np.testing.assert_allclose(kw2["scale"], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(kws["scale"], [7.5, 0.5, 0.5], atol=1e-5)
    g2, gs = kw2["metadata"]["grid"], kws["metadata"]["grid"]
    # the T2* centre voxel lies inside the T2 volume
    centre = gs.index_to_world((np.array(gs.shape) - 1) / 2)
    idx = g2.world_to_index(centre)
    assert np.all(idx >= 0) and np.all(idx <= np.array(g2.shape) - 1)


def test_sample_folders_are_pair_layouts():
    assert [p.name for p in find_pairs(samples.SAMPLES_DIR / "ivif")] == ["FLIR_00211"]
    assert [p.modality_b for p in find_pairs(samples.SAMPLES_DIR / "mri_pet")] == ["PET"]
    assert [p.name for p in find_pairs(samples.SAMPLES_DIR / "pan_ms")] == ["Landsat8_LC80200392015216"]


def test_every_sample_opens_in_a_napari_viewer_model_and_overlays():
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    for key in samples.SAMPLE_KEYS:
        viewer = ViewerModel()
        for data, kw, kind in getattr(samples, {"volume": "mri_volume_pair"}.get(key, f"{key}_pair"))():
            viewer._add_layer_from_data(data, kw, kind)
        assert len(viewer.layers) >= 2
    # pan/MS: one world point falls on matching pixels (MS is 2x coarser, half a pan pixel off)
    viewer = ViewerModel()
    for data, kw, kind in samples.pan_ms_pair():
        viewer._add_layer_from_data(data, kw, kind)
    pan, blue = viewer.layers["pan"], viewer.layers["ms B2 blue"]
    w = pan.data_to_world((101.0, 41.0))
    np.testing.assert_allclose(blue.world_to_data(w), (50.0, 20.0))
    vol = ViewerModel()
    for data, kw, kind in samples.mri_volume_pair():
        vol._add_layer_from_data(data, kw, kind)
    np.testing.assert_allclose(vol.layers["T2*"].scale, [7.5, 0.5, 0.5], atol=1e-5)
    assert vol.dims.ndim == 3
