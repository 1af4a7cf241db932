"""Engine: device choice, seamless tiled fusion (NumPy, memmap, dask, zarr), slice-wise volumes."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from napari_fusion.engine.device import ENV_VAR, available_devices, resolve_device
from napari_fusion.engine.tiling import (
    Progress,
    blend_ramp,
    count_tiles,
    fuse_tiled,
    fuse_tiled_steps,
    run_aligned,
    tile_cores,
)
from napari_fusion.engine.volumes import fuse_volume_steps
from napari_fusion.methods.classical import fuse_laplacian
from napari_fusion.methods.registry import get_method, list_methods


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 3)
    b = ndimage.gaussian_filter(rng.random(shape), 1.5)
    norm = lambda x: ((x - x.min()) / (x.max() - x.min())).astype(np.float32)  # noqa: E731
    return norm(a), norm(b)


# ------------------------------------------------------------------------------------- device
def test_device_cpu_and_env_override(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setenv(ENV_VAR, "cpu")
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"
    monkeypatch.setenv(ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=r"tpu.*NAPARI_FUSION_DEVICE"):
        resolve_device("auto")
    # an explicit choice wins over the environment
    assert resolve_device("cpu") == "cpu"


def test_device_auto_prefers_accelerators(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_device("auto") == available_devices()[0].split(":")[0]
    assert available_devices()[-1] == "cpu"


def test_device_unknown_and_absent_cuda(monkeypatch):
    import torch

    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="'cuda' was requested.*no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="cuda:1"):
        resolve_device("cuda:1")


# ------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("n,tile,ov", [(1000, 256, 32), (257, 256, 32), (513, 128, 64), (100, 256, 32)])
def test_tile_cores_cover_with_constant_overlap(n, tile, ov):
    cores = tile_cores(n, tile, ov)
    assert cores[0][0] == 0 and cores[-1][1] == n
    for (s0, e0), (s1, e1) in zip(cores[:-1], cores[1:]):
        assert e0 - s1 == ov  # consecutive cores overlap by exactly `overlap`
        assert e0 - s0 == tile
    assert cores[-1][1] - cores[-1][0] > (ov if len(cores) > 1 else 0)


def test_ramps_sum_to_one():
    for ov in (1, 7, 32):
        left = blend_ramp(64, 0, ov)[-ov:]  # falling end of one core
        right = blend_ramp(64, ov, 0)[:ov]  # rising start of the next
        np.testing.assert_allclose(left + right, 1.0, atol=1e-6)
        assert np.all(np.diff(right) > 0)


def test_tiled_blend_is_a_partition_of_unity():
    a, b = _pair((301, 517))
    lin = lambda x, y: 0.3 * x + 0.7 * y  # noqa: E731 - pointwise: tiled must equal it exactly
    out = fuse_tiled(lin, a, b, tile=64, overlap=16, halo=0, align=1)
    np.testing.assert_allclose(out, lin(a, b), atol=1e-6)


def test_tiles_have_no_seam_for_tile_dependent_methods():
    """A method whose output depends on the whole tile (one random level per call): the blend
    turns tile-to-tile jumps into ramps no steeper than pi / (2 * overlap) per pixel."""
    rng = np.random.default_rng(3)
    a, b = np.zeros((300, 300), np.float32), np.zeros((300, 300), np.float32)
    level = lambda x, y: np.full_like(x, rng.random())  # noqa: E731
    out = fuse_tiled(level, a, b, tile=96, overlap=32, halo=0, align=1)
    steps = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert steps <= np.pi / (2 * 32) + 1e-6
    assert out.max() - out.min() > 0.2  # the levels really differ between tiles


@pytest.mark.parametrize("shape,tile", [((333, 517), 128), ((333, 517), 256), ((512, 384), 160)])
def test_laplacian_tiled_equals_untiled_within_one_grey_level(shape, tile):
    a, b = _pair(shape)
    halo = get_method("laplacian").halo
    ref = run_aligned(fuse_laplacian, a, b)
    out = fuse_tiled(fuse_laplacian, a, b, tile=tile, overlap=32, halo=halo)
    assert np.abs(out - ref).max() * 255 <= 1.0
    assert count_tiles(shape, tile, 32) > 1


class _ConvRunner:
    """A small torch CNN (receptive radius 4) standing in for a learned runner."""

    halo = 8

    def __init__(self):
        import torch

        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(2, 8, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 1, 3, padding=1, padding_mode="reflect"), torch.nn.Sigmoid(),
        ).eval()

    def fuse(self, a, b):
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.stack([a, b])[None].astype(np.float32))
            return self.net(x)[0, 0].numpy()


@pytest.fixture
def one_thread():
    """Small tiles run faster on one torch thread (no OpenMP spinning on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_torch_runner_tiled_equals_untiled(one_thread):
    a, b = _pair((200, 330), seed=1)
    r = _ConvRunner()
    ref = run_aligned(r.fuse, a, b)
    out = fuse_tiled(r, a, b, tile=96, overlap=16)
    assert np.abs(out - ref).max() * 255 <= 1.0


def _learned_with_weights():
    out = []
    for m in list_methods():
        if m.learned and m.weights_path is not None and m.weights_path.is_file():
            out.append(m.name)
    return out


@pytest.mark.parametrize("name", _learned_with_weights() or [pytest.param("none", marks=pytest.mark.skip(reason="no learned method has weights installed yet"))])
def test_registered_learned_method_tiled_equals_untiled(name, one_thread):
    from napari_fusion.engine.pipeline import _align
    from napari_fusion.methods.registry import build_runner

    m = get_method(name)
    r = build_runner(name, device="cpu")
    a, b = _pair((88, 120), seed=2)  # small: learned runners are slow on a 2-core CPU
    ref = run_aligned(r.fuse, a, b, _align(r))
    out = fuse_tiled(r, a, b, tile=64, overlap=16, halo=m.halo, align=_align(r))
    assert count_tiles(a.shape, 64, 16) >= 4
    assert np.abs(out - ref).max() * 255 <= 1.0


# ------------------------------------------------------------------------------- array kinds
def test_tiling_reads_memmap_and_writes_memmap(tmp_path):
    a, b = _pair((300, 410))
    ma = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=a.shape)
    mb = np.lib.format.open_memmap(tmp_path / "b.npy", mode="w+", dtype=np.float32, shape=b.shape)
    ma[:], mb[:] = a, b
    ma.flush(), mb.flush()
    ra, rb = np.load(tmp_path / "a.npy", mmap_mode="r"), np.load(tmp_path / "b.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.float32, shape=a.shape)
    res = fuse_tiled(fuse_laplacian, ra, rb, tile=128, overlap=32, out=out, halo=64)
    assert res is out
    ref = fuse_tiled(fuse_laplacian, a, b, tile=128, overlap=32, halo=64)
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), ref)


def test_tiling_reads_dask_and_writes_zarr():
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    a, b = _pair((260, 390))
    la, lb = da.from_array(a, chunks=(100, 100)), da.from_array(b, chunks=(64, 128))
    z = zarr.create_array(store={}, shape=a.shape, chunks=(100, 100), dtype="float32")
    fuse_tiled(fuse_laplacian, la, lb, tile=128, overlap=32, out=z, halo=64)
    ref = fuse_tiled(fuse_laplacian, a, b, tile=128, overlap=32, halo=64)
    np.testing.assert_array_equal(z[:], ref)


def test_tiled_labels_come_from_nearest_tile():
    a, b = _pair((250, 310))
    lab = np.zeros(a.shape, np.int32)
    fn = lambda x, y: (x, (x > 0.5).astype(np.int32) + 1)  # noqa: E731
    fuse_tiled(fn, a, b, tile=96, overlap=32, halo=0, labels_out=lab)
    np.testing.assert_array_equal(lab, (a > 0.5).astype(np.int32) + 1)


def test_progress_per_tile_and_cancel():
    a, b = _pair((200, 200))
    gen = fuse_tiled_steps(lambda x, y: x, a, b, tile=64, overlap=16, halo=0)
    seen = list(p for p in _until_done(gen))
    n = count_tiles(a.shape, 64, 16)
    assert [p.done for p in seen] == list(range(1, n + 1)) and all(p.total == n for p in seen)
    calls = []
    gen = fuse_tiled_steps(lambda x, y: calls.append(1) or x, a, b, tile=64, overlap=16, halo=0)
    next(gen), next(gen)
    gen.close()  # cancelling between tiles runs no further tile
    assert len(calls) == 2


def _until_done(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def test_bad_tiling_arguments():
    a, b = _pair((64, 64))
    with pytest.raises(ValueError, match="more than half the tile"):
        fuse_tiled(lambda x, y: x, a, b, tile=32, overlap=20)
    with pytest.raises(ValueError, match="at least 8"):
        fuse_tiled(lambda x, y: x, a, b, tile=4, overlap=0)
    with pytest.raises(ValueError, match="one grid"):
        fuse_tiled(lambda x, y: x, a, b[:30], tile=32, overlap=8)


def _peak_bytes(tmp_path, n: int) -> int:
    path = tmp_path / f"s{n}.npy"
    m = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    for r in range(0, n, 256):
        m[r : r + 256] = np.linspace(0, 1, n, dtype=np.float32)[None, :]
    m.flush()
    del m
    src = np.load(path, mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / f"o{n}.npy", mode="w+", dtype=np.float32, shape=(n, n))
    tracemalloc.start()
    fuse_tiled(lambda x, y: 0.5 * (x + y), src, src, tile=256, overlap=32, out=out, halo=16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(out[::97, ::89], np.load(path, mmap_mode="r")[::97, ::89], atol=1e-6)
    return peak


def test_peak_memory_does_not_grow_with_scene_size(tmp_path):
    small, big = _peak_bytes(tmp_path, 1024), _peak_bytes(tmp_path, 3072)
    assert big < 1.5 * small  # 9x the pixels, (nearly) the same peak
    assert big < 3072 * 3072 * 4 / 8  # far below one float copy of the scene


# ------------------------------------------------------------------------------------ volumes
def test_volume_slices_with_progress_and_empty_slices_skipped():
    rng = np.random.default_rng(0)
    a = rng.random((6, 40, 50)).astype(np.float32)
    b = rng.random((6, 40, 50)).astype(np.float32)
    a[0] = b[0] = 0
    a[5] = b[5] = 0
    calls = []

    def fn(x, y):
        calls.append(1)
        return np.maximum(x, y)

    gen = fuse_volume_steps(fn, a, b)
    prog = []
    while True:
        try:
            prog.append(next(gen))
        except StopIteration as stop:
            fused, lab = stop.value
            break
    assert [p.done for p in prog] == [1, 2, 3, 4, 5, 6] and {p.stage for p in prog} == {"slices"}
    assert len(calls) == 4 and lab is None
    np.testing.assert_allclose(fused, np.maximum(a, b), atol=1e-7)


def test_volume_tiled_slices_with_labels():
    a, b = _pair((3 * 100, 130))
    a, b = a.reshape(3, 100, 130), b.reshape(3, 100, 130)
    fn = lambda x, y: (x, (y > 0.5).astype(np.int32))  # noqa: E731
    gen = fuse_volume_steps(fn, a, b, labels=True, tile=64, overlap=16, halo=0)
    for _ in range(3):
        assert isinstance(next(gen), Progress)
    with pytest.raises(StopIteration) as stop:
        next(gen)
    fused, lab = stop.value.value
    np.testing.assert_allclose(fused, a, atol=1e-6)
    np.testing.assert_array_equal(lab, (b > 0.5).astype(np.int32))
