"""Command line and batch: pairs by name, skip/overwrite, bad pairs reported, Dask == plain, huge scenes."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_fusion.cli import main
from napari_fusion.engine.batch import (
    BatchJob,
    PairOutcome,
    fuse_file_tiled,
    fuse_folder,
    open_lazy,
    run_jobs,
)


def _img(shape, seed):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (2, 2) + (0,) * (len(shape) - 2))
    return np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


@pytest.fixture
def folders(tmp_path):
    """A/ and B/ with 3 good pairs, one size mismatch, one unreadable file, one file without partner."""
    import imageio.v3 as iio

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    for i in range(3):
        iio.imwrite(a / f"p{i}.png", _img((48, 64), i))
        iio.imwrite(b / f"p{i}.png", _img((48, 64, 3), 10 + i))
    iio.imwrite(a / "size.png", _img((48, 64), 5))
    iio.imwrite(b / "size.png", _img((30, 47), 6))
    (a / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    iio.imwrite(b / "broken.png", _img((48, 64), 7))
    iio.imwrite(a / "lonely.png", _img((48, 64), 8))
    return a, b, tmp_path / "out"


def _no_part_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".part" in p.name]


def test_fuse_folders_reports_bad_pairs_and_goes_on(folders, capsys):
    a, b, out = folders
    rc = main(["fuse", str(a), str(b), "--method", "laplacian", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert "3 fused, 0 skipped (already done), 3 failed" in text
    assert "FAILED size: source B is 30x47 but source A is 48x64; no known resolution ratio relates them" in text
    assert "FAILED broken:" in text and "broken.png" in text
    assert "FAILED lonely:" in text and "no partner" in text
    assert _no_part_files(out)
    import imageio.v3 as iio

    assert iio.imread(out / "p0.png").shape == (48, 64, 3)  # visible colour kept


def test_fuse_skips_finished_outputs_unless_overwrite(folders, capsys):
    a, b, out = folders
    main(["fuse", str(a), str(b), "-m", "average", "--out", str(out)])
    target = out / "p1.png"
    os.utime(target, (1_000_000, 1_000_000))
    capsys.readouterr()
    main(["fuse", str(a), str(b), "-m", "average", "--out", str(out)])
    assert "0 fused, 3 skipped" in capsys.readouterr().out
    assert target.stat().st_mtime == 1_000_000
    main(["fuse", str(a), str(b), "-m", "average", "--out", str(out), "--overwrite"])
    assert "3 fused, 0 skipped" in capsys.readouterr().out
    assert target.stat().st_mtime != 1_000_000
    assert _no_part_files(out)


def test_dask_cluster_writes_the_same_bytes_as_the_plain_run(folders):
    pytest.importorskip("distributed")
    a, b, out = folders
    plain = fuse_folder(a, b, out / "plain", "laplacian")
    dask = fuse_folder(a, b, out / "dask", "laplacian", workers=2, processes=False)
    assert [o.status for o in plain.outcomes] == [o.status for o in dask.outcomes]
    assert len(dask.done) == 3 and len(dask.failed) == 3
    for f in sorted((out / "plain").iterdir()):
        assert f.read_bytes() == (out / "dask" / f.name).read_bytes()
    assert {o.error for o in plain.failed} == {o.error for o in dask.failed}
    # an existing cluster, reached through its scheduler address (--scheduler)
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        remote = fuse_folder(a, b, out / "remote", "laplacian", scheduler=cluster.scheduler_address)
    assert len(remote.done) == 3
    for f in sorted((out / "plain").iterdir()):
        assert f.read_bytes() == (out / "remote" / f.name).read_bytes()


def test_transient_failures_are_retried_bad_input_is_not(tmp_path):
    tries: dict[str, int] = {}

    def flaky(job):
        tries[job.name] = tries.get(job.name, 0) + 1
        if job.name == "io" and tries[job.name] < 3:
            raise OSError("disk hiccup")
        if job.name == "bad":
            raise ValueError("source B is empty")
        return PairOutcome(job.name, "done", job.out)

    jobs = [BatchJob(n, tmp_path / "a", tmp_path / "b", tmp_path / n) for n in ("io", "bad", "ok")]
    rep = run_jobs(jobs, flaky, retries=2)
    assert [o.status for o in rep.outcomes] == ["done", "failed", "done"]
    assert tries == {"io": 3, "bad": 1, "ok": 1} and rep.outcomes[0].attempts == 3
    tries.clear()
    rep = run_jobs(jobs, flaky, retries=1)
    assert rep.outcomes[0].status == "failed" and "disk hiccup" in rep.outcomes[0].error
    assert "after 2 attempts" in rep.summary()


_DASK_TRIES: dict[str, int] = {}  # module level: the in-process Dask workers see the same dict


def _flaky_on_dask(job):
    _DASK_TRIES[job.name] = _DASK_TRIES.get(job.name, 0) + 1
    if job.name in ("io", "disk") and (job.name == "disk" or _DASK_TRIES[job.name] < 3):
        raise OSError("disk hiccup")
    if job.name == "bad":
        raise ValueError("source B is empty")
    return PairOutcome(job.name, "done", job.out)


def test_dask_retries_transient_failures_only(tmp_path):
    """On Dask the retries are Dask's own (``Client.submit(retries=)``); bad input is never retried
    and the attempt counts match the in-process run's."""
    pytest.importorskip("distributed")
    _DASK_TRIES.clear()
    jobs = [BatchJob(n, tmp_path / "a", tmp_path / "b", tmp_path / n) for n in ("io", "bad", "ok", "disk")]
    rep = run_jobs(jobs, _flaky_on_dask, workers=1, retries=2, processes=False)
    assert [o.name for o in rep.outcomes] == ["io", "bad", "ok", "disk"]
    assert [o.status for o in rep.outcomes] == ["done", "failed", "done", "failed"]
    assert _DASK_TRIES == {"io": 3, "bad": 1, "ok": 1, "disk": 3}
    assert [o.attempts for o in rep.outcomes] == [3, 1, 1, 3]
    assert rep.outcomes[1].error == "source B is empty" and "disk hiccup" in rep.outcomes[3].error
    assert "after 3 attempts" in rep.summary()


def test_pair_layout_folder(tmp_path, capsys):
    import imageio.v3 as iio

    root = tmp_path / "scenes"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    for i in range(2):
        iio.imwrite(root / "ir" / f"s{i}.png", _img((40, 56), i))
        iio.imwrite(root / "vi" / f"s{i}.png", _img((40, 56, 3), 5 + i))
    rc = main(["fuse", str(root), "-m", "max", "--out", str(tmp_path / "o"), "--format", ".tif"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["s0.tif", "s1.tif"]


def test_evaluate_table_and_csv(folders, tmp_path, capsys):
    a, b, out = folders
    main(["fuse", str(a), str(b), "-m", "average", "--out", str(out)])
    capsys.readouterr()
    rc = main(["evaluate", str(a), str(b), str(out), "--csv", str(tmp_path / "m.csv")])
    text = capsys.readouterr().out
    assert rc == 1  # the three bad pairs have no fused image
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["image", "EN", "SD", "SF"]
    assert [ln.split()[0] for ln in lines[2:6]] == ["p0", "p1", "p2", "mean"]
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [r["image"] for r in rows] == ["p0", "p1", "p2", "mean"]
    en = [float(r["EN"]) for r in rows]
    assert en[3] == pytest.approx(np.mean(en[:3]), rel=1e-4)


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in ("average", "max", "laplacian"):
        assert any(line.startswith(name + " ") for line in text.splitlines())
    assert "classical" in text and "description" in text


def test_demo_writes_images_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--method", "laplacian"])
    text = capsys.readouterr().out
    assert rc == 0
    assert {"average.png", "max.png", "laplacian.png", "metrics.csv"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["method"] for r in rows] == ["laplacian", "average", "max"]
    assert all(float(r["EN"]) > 5 for r in rows)
    assert "laplacian" in text and "SSIM" in text


def test_unknown_method_is_an_error_exit(folders, capsys):
    a, b, out = folders
    assert main(["fuse", str(a), str(b), "-m", "nope", "--out", str(out)]) == 2
    assert "unknown fusion method 'nope'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:x"])
def test_unknown_device_is_bad_usage_before_any_work(folders, capsys, device):
    a, b, out = folders
    assert main(["fuse", str(a), str(b), "-m", "average", "--out", str(out), "--device", device]) == 2
    assert f"unknown device {device!r}" in capsys.readouterr().err
    assert not out.exists()  # nothing was started


def test_segment_fused_folder(tmp_path, monkeypatch, capsys):
    import imageio.v3 as iio

    from napari_fusion.methods.registry import ClassInfo

    class Seg:
        name = "toy"
        halo = 0
        classes = (ClassInfo(0, "dark", "#000000"), ClassInfo(1, "bright", "#ffffff"))

        def fuse(self, a, b):
            return a

        def segment(self, f, a=None, b=None):
            return (f > 0.5).astype(np.int32)

    from napari_fusion.engine import pipeline

    real = pipeline.resolve_runner
    monkeypatch.setattr(pipeline, "resolve_runner", lambda m, d="auto": (Seg(), "toy", None) if m == "toy" else real(m, d))
    from napari_fusion import api

    monkeypatch.setattr(api, "resolve_runner", pipeline.resolve_runner)
    src = tmp_path / "fused"
    src.mkdir()
    img = _img((40, 50), 1)
    iio.imwrite(src / "f.png", img)
    rc = main(["segment", str(src), "--out", str(tmp_path / "lab"), "-m", "toy"])
    assert rc == 0, capsys.readouterr()
    lab = iio.imread(tmp_path / "lab" / "f.png")
    np.testing.assert_array_equal(lab, (img / 255.0 > 0.5).astype(np.uint8))


# ----------------------------------------------------------------------------- huge scenes
def test_fuse_file_tiled_matches_in_memory_and_keeps_georeferencing(tmp_path):
    import tifffile

    from napari_fusion.engine.pipeline import fuse_arrays
    from napari_fusion.geometry import Grid
    from napari_fusion.io import read_image, write_image

    a = _img((700, 610), 1)
    ms = np.stack([_img((350, 305), 2 + i) for i in range(3)]).astype(np.uint16) * 10
    ga = Grid.from_scale(a.shape, 15.0, (-3394485.0, 465675.0), "m")
    gb = Grid.from_scale(ms.shape[1:], 30.0, (-3394477.5, 465682.5), "m")
    like = read_image(Path(__file__).resolve().parents[1] / "src/napari_fusion/samples/pan_ms/Landsat8_LC80200392015216/pan.tif")
    write_image(tmp_path / "pan.tif", a, like=like, grid=ga)
    write_image(tmp_path / "ms.tif", ms, like=like, grid=gb)
    prog = []
    out = fuse_file_tiled(tmp_path / "pan.tif", tmp_path / "ms.tif", tmp_path / "fused.tif", "laplacian", tile=256, progress=prog.append)
    got = read_image(out)
    ref = fuse_arrays(a, ms, "laplacian", grid_a=ga, grid_b=gb, channel_axis_b=0, tile=0).fused
    assert got.data.shape == ref.shape == (3, 700, 610) and got.data.dtype == np.uint16
    assert np.abs(got.data.astype(int) - ref.astype(int)).max() <= 1
    np.testing.assert_allclose(got.grid.affine, ga.affine)  # GeoTIFF keeps PAN's georeferencing
    assert got.grid.units == "m"
    assert any(p.stage == "tiles" for p in prog)
    levels = open_lazy(out)
    assert [tuple(lv.shape) for lv in levels] == [(3, 700, 610), (3, 350, 305)]
    with tifffile.TiffFile(out) as tf:
        assert tf.pages[0].is_tiled
    assert _no_part_files(tmp_path)


def test_fuse_file_tiled_runs_gifnet_in_its_preferred_tiles(tmp_path, monkeypatch):
    """Disk-to-disk GIFNet: each I/O tile goes through the runner's own CPU tiles; equal to in-memory."""
    import tifffile

    from napari_fusion.engine.pipeline import fuse_arrays
    from napari_fusion.methods.registry import build_runner

    runner = build_runner("gifnet", device="cpu", cache=False)
    monkeypatch.setattr(runner, "cpu_tile", 64)
    calls = []
    real = runner.fuse
    monkeypatch.setattr(runner, "fuse", lambda x, y: calls.append(x.shape) or real(x, y))
    a, b = _img((200, 230), 1), _img((200, 230), 2)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    out = fuse_file_tiled(tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "o.zarr", runner, tile=128, pyramid=False)
    assert max(s[0] for s in calls) <= 64 + 2 * 32 + 32 and len(calls) > 4  # inner tiles, not 128-pixel ones
    got = np.asarray(open_lazy(out)[0])
    ref = fuse_arrays(a, b, runner, tile=0).fused
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_fuse_large_cli_to_zarr(tmp_path, capsys):
    import tifffile

    a, b = _img((300, 260), 1), _img((300, 260), 2)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b, tile=(64, 64), compression="zlib")
    rc = main(["fuse-large", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / "o.zarr"), "-m", "max", "--tile", "128"])
    assert rc == 0
    lv = open_lazy(tmp_path / "o.zarr")
    np.testing.assert_array_equal(np.asarray(lv[0]), np.maximum(a, b))


# ------------------------------------------------------------------------- real / shipped files
def test_fuse_pan_ms_sample_keeps_bands_and_georeferencing(tmp_path, capsys):
    from napari_fusion.io import read_image
    from napari_fusion.samples import SAMPLES_DIR

    rc = main(["fuse", str(SAMPLES_DIR / "pan_ms"), "-m", "laplacian", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr()
    out = read_image(tmp_path / "Landsat8_LC80200392015216.tif")
    pan = read_image(SAMPLES_DIR / "pan_ms/Landsat8_LC80200392015216/pan.tif")
    assert out.data.shape == (3, 256, 256) and out.data.dtype == np.uint16 and out.channel_axis == 0
    np.testing.assert_allclose(out.grid.affine, pan.grid.affine)
    assert out.meta.get("raster_type") == pan.meta.get("raster_type")


def test_fuse_two_volume_files_writes_nifti_on_a_grid(tmp_path, capsys):
    from napari_fusion.io import read_image
    from napari_fusion.samples import sample_paths

    pa, pb = sample_paths("volume")
    rc = main(["fuse", str(pa), str(pb), "-m", "average", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr()
    out = read_image(tmp_path / "t2.nii.gz")
    a = read_image(pa)
    assert out.data.shape == a.data.shape
    np.testing.assert_allclose(out.grid.affine, a.grid.affine, atol=1e-4)


needs_shared = pytest.mark.skipif(
    __import__("napari_fusion.training.data", fromlist=["shared_data_dir"]).shared_data_dir() is None,
    reason="needs ../shared/data",
)


@needs_shared
def test_real_mri_ct_folder_and_evaluate(tmp_path, capsys):
    from napari_fusion.training.data import shared_data_dir

    root = shared_data_dir() / "medical" / "MRI_CT"
    assert main(["fuse", str(root), "-m", "max", "--out", str(tmp_path / "f")]) == 0
    files = sorted((tmp_path / "f").iterdir())
    assert len(files) == len(list((root / "MRI").iterdir()))
    capsys.readouterr()
    assert main(["evaluate", str(root / "MRI"), str(root / "CT"), str(tmp_path / "f"), "--csv", str(tmp_path / "m.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert rows[-1]["image"] == "mean" and float(rows[-1]["SD"]) > 30
