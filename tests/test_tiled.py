"""Huge scenes disk to disk: the tiled path gives what the in-memory path gives, and folders take it by themselves.

The tiled path (``engine.tiled.fuse_file_tiled``) reads tiles lazily and resamples B per tile, but
walks the pipeline's own functions; these tests hold it to ``napari_fusion.fuse`` of the same files,
with several tiles per scene, for the cases where an own copy diverged: B finer than A (geometry's
anti-aliasing), grids in different units, a model's own input intensity mapping, pan/MS.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_fusion import fuse
from napari_fusion.engine import batch
from napari_fusion.engine.batch import fuse_file_tiled, open_lazy
from napari_fusion.geometry import Grid
from napari_fusion.io import read_image, write_image

SAMPLES = Path(__file__).resolve().parents[1] / "src/napari_fusion/samples"


def _img(shape, seed, hi=255, dtype=np.uint8):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (1.5, 1.5) + (0,) * (len(shape) - 2))
    x = x + 0.15 * np.random.default_rng(seed + 100).random(shape)  # fine detail, which aliasing would show
    return np.round((x - x.min()) / (x.max() - x.min()) * hi).astype(dtype)


def _tiled(tmp_path, a, b, method, **kw):
    out = fuse_file_tiled(a, b, tmp_path / "tiled.zarr", method, tile=96, overlap=16, pyramid=False, **kw)
    return np.asarray(open_lazy(out)[0])


def _close(got, ref):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    d = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    assert d.max() <= 1 and np.count_nonzero(d) <= 0.001 * d.size, (d.max(), np.count_nonzero(d))


def test_tiled_pan_ms_equals_in_memory_fuse_of_the_same_files(tmp_path):
    """GeoTIFF pan + 2x coarser 3-band MS: moment match, intensities, F/I ratio as in memory."""
    like = read_image(SAMPLES / "pan_ms/Landsat8_LC80200392015216/pan.tif")
    pan = _img((300, 260), 1, 4000, np.uint16)
    ms = np.stack([_img((150, 130), 2 + i, 3000 + 500 * i, np.uint16) for i in range(3)])
    write_image(tmp_path / "pan.tif", pan, like=like, grid=Grid.from_scale(pan.shape, 15.0, (-3394485.0, 465675.0), "m"))
    write_image(tmp_path / "ms.tif", ms, like=like, grid=Grid.from_scale(ms.shape[1:], 30.0, (-3394477.5, 465682.5), "m"))
    ref = fuse(tmp_path / "pan.tif", tmp_path / "ms.tif", "average")
    _close(_tiled(tmp_path, tmp_path / "pan.tif", tmp_path / "ms.tif", "average"), ref)


def test_tiled_b_finer_than_a_is_anti_aliased_as_in_memory(tmp_path):
    """Infrared A and a 2x finer visible RGB B: B is smoothed before it is sampled, as bring_onto does."""
    import tifffile

    a, b = _img((150, 170), 1), _img((300, 340, 3), 2)
    tifffile.imwrite(tmp_path / "ir.tif", a)
    tifffile.imwrite(tmp_path / "vi.tif", b, tile=(64, 64), compression="zlib")  # read chunk by chunk
    ref = fuse(tmp_path / "ir.tif", tmp_path / "vi.tif", "average")
    assert ref.shape == (150, 170, 3)
    _close(_tiled(tmp_path, tmp_path / "ir.tif", tmp_path / "vi.tif", "average"), ref)


def test_tiled_converts_world_units_as_in_memory(tmp_path):
    """A in millimetres, B in micrometres (2 mm pixels): related, not refused."""
    import zarr

    a, b = _img((200, 180), 1, 1000, np.uint16), _img((100, 90), 2, 1000, np.uint16)
    ga = Grid.from_scale(a.shape, 1.0, 0.0, "mm")
    gb = Grid.from_scale(b.shape, 2000.0, 500.0, "um")
    for name, data, g in (("a.zarr", a, ga), ("b.zarr", b, gb)):
        z = zarr.open_array(str(tmp_path / name), mode="w", shape=data.shape, dtype=data.dtype, chunks=(64, 64))
        z[:] = data
        z.attrs["affine"], z.attrs["units"] = np.asarray(g.affine).tolist(), g.units
    ref = fuse(a, b, "average", grid_a=ga, grid_b=gb)
    _close(_tiled(tmp_path, tmp_path / "a.zarr", tmp_path / "b.zarr", "average"), ref)


def test_tiled_applies_the_models_input_intensity(tmp_path):
    """A runner that records its training intensity mapping gets it on the tiled path too."""
    import tifffile

    from napari_fusion.color import InputIntensity

    class Toy:
        name, halo = "toy", 0
        input_intensity = InputIntensity(percentiles=(10.0, 90.0))

        def fuse(self, x, y):
            return 0.5 * (x + y)

    a, b = _img((200, 230), 1, 4000, np.uint16), _img((200, 230), 2, 4000, np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    ref = fuse(tmp_path / "a.tif", tmp_path / "b.tif", Toy())
    _close(_tiled(tmp_path, tmp_path / "a.tif", tmp_path / "b.tif", Toy()), ref)


@pytest.mark.parametrize("method", ["laplacian", "average"])
def test_fuse_on_a_folder_takes_the_tiled_path_for_a_large_pair(tmp_path, monkeypatch, method):
    """`napari-fusion fuse A_DIR B_DIR` routes a pair above LARGE_PAIR_SAMPLES through fuse_file_tiled;
    the file it writes reads back as the in-memory one (pixels, dtype, georeferencing)."""
    from napari_fusion.cli import main

    like = read_image(SAMPLES / "pan_ms/Landsat8_LC80200392015216/pan.tif")
    (tmp_path / "A").mkdir(), (tmp_path / "B").mkdir()
    a, b = _img((240, 200), 1, 4000, np.uint16), _img((240, 200, 3), 2)
    grid = Grid.from_scale(a.shape, 15.0, (-3394485.0, 465675.0), "m")
    write_image(tmp_path / "A" / "scene.tif", a, like=like, grid=grid)
    write_image(tmp_path / "B" / "scene.tif", b, like=like, grid=grid, rgb=True)
    assert main(["fuse", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "mem"), "-m", method]) == 0

    calls = []
    real = batch.fuse_file_tiled
    monkeypatch.setattr(batch, "fuse_file_tiled", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(batch, "LARGE_PAIR_SAMPLES", 1000)
    assert main(["fuse", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "big"), "-m", method]) == 0
    assert len(calls) == 1
    got, ref = read_image(tmp_path / "big" / "scene.tif"), read_image(tmp_path / "mem" / "scene.tif")
    assert got.rgb and ref.rgb
    _close(got.data, ref.data)
    np.testing.assert_allclose(got.grid.affine, ref.grid.affine)
    assert got.grid.units == ref.grid.units == "m"


def test_only_large_lazily_readable_non_segmenting_pairs_take_the_tiled_path(tmp_path, monkeypatch):
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", _img((64, 64), 1))
    tifffile.imwrite(tmp_path / "b.tif", _img((64, 64), 2))
    job = batch.BatchJob("a", tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "out" / "a.tif")
    assert not batch.takes_tiled_path(job, "average")  # small
    monkeypatch.setattr(batch, "LARGE_PAIR_SAMPLES", 1000)
    assert batch.takes_tiled_path(job, "average")
    assert not batch.takes_tiled_path(job, "average", tile=0)  # "never tile"
    assert not batch.takes_tiled_path(batch.BatchJob("a", job.path_a, job.path_b, tmp_path / "out" / "a.png"), "average")

    class Seg:
        name, halo, classes = "seg", 0, ("background", "thing")

        def fuse(self, x, y):
            return x

        def segment(self, f, a=None, b=None):
            return (f > 0.5).astype(np.int32)

    assert not batch.takes_tiled_path(job, Seg())  # labels are made in memory
