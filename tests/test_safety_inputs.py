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
