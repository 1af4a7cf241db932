"""Issue 17, data loss and leftovers: outputs never overwrite sources, bad counts and unreachable
schedulers fail fast, unwritable outputs are named, atomic writes clean up after a kill and honour the
umask, one name with two files is reported, and fuse-large refuses NaN tiles and broken TIFFs."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_fusion.cli import main
from napari_fusion.engine.batch import BatchJob, PairOutcome, fuse_file_tiled, run_jobs
from napari_fusion.io import find_pairs, write_image
from napari_fusion.io.atomic import STALE_SECONDS, _host_tag, atomic_path, remove_stale_parts


def _img(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def two_folders(tmp_path):
    import imageio.v3 as iio

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    for i in range(2):
        iio.imwrite(a / f"p{i}.png", _img((48, 64), i))
        iio.imwrite(b / f"p{i}.png", _img((48, 64), 10 + i))
    return a, b


@pytest.fixture
def pair_layout(tmp_path):
    import imageio.v3 as iio

    root = tmp_path / "pl"
    (root / "ir").mkdir(parents=True), (root / "vi").mkdir()
    for i in range(2):
        iio.imwrite(root / "ir" / f"s{i}.png", _img((48, 64), i))
        iio.imwrite(root / "vi" / f"s{i}.png", _img((48, 64, 3), 20 + i))
    return root


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ outputs never over sources
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_fuse_into_a_source_folder_is_refused_and_sources_stay(two_folders, capsys, overwrite):
    a, b = two_folders
    before = _snapshot(a.parent)
    rc = main(["fuse", str(a), str(b), "--out", str(a), "-m", "average", *overwrite])
    out, err = capsys.readouterr()
    assert rc != 0
    assert "skipped" not in out + err
    assert f"output folder {a}" in err and str(a / "p0.png") in err
    assert _snapshot(a.parent) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_fuse_pair_layout_into_its_ir_folder_is_refused(pair_layout, capsys, overwrite):
    before = _snapshot(pair_layout)
    rc = main(["fuse", str(pair_layout), "--out", str(pair_layout / "ir"), "-m", "average", *overwrite])
    out, err = capsys.readouterr()
    assert rc != 0 and "skipped" not in out + err
    assert str(pair_layout / "ir") in err and "source images" in err
    assert _snapshot(pair_layout) == before


def test_fuse_two_files_into_their_own_folder_is_refused(two_folders, capsys):
    a, b = two_folders
    before = _snapshot(a.parent)
    rc = main(["fuse", str(a / "p0.png"), str(b / "p0.png"), "--out", str(b), "-m", "average", "--overwrite"])
    assert rc != 0 and str(b / "p0.png") in capsys.readouterr().err
    assert _snapshot(a.parent) == before


@pytest.mark.parametrize("command", ["enhance", "segment"])
def test_enhance_or_segment_into_its_input_folder_is_refused(two_folders, capsys, command):
    a, _ = two_folders
    before = _snapshot(a)
    rc = main([command, str(a), "--out", str(a), "--overwrite"])
    assert rc != 0 and "source images" in capsys.readouterr().err
    assert _snapshot(a) == before


def test_an_output_folder_inside_a_source_folder_is_fine(two_folders, capsys):
    a, b = two_folders
    rc = main(["fuse", str(a), str(b), "--out", str(a / "fused"), "-m", "average"])
    assert rc == 0, capsys.readouterr()
    assert sorted(p.name for p in (a / "fused").iterdir()) == ["p0.png", "p1.png"]


def test_run_jobs_refuses_outputs_over_sources(two_folders):
    a, b = two_folders
    job = BatchJob("p0", a / "p0.png", b / "p0.png", a / "p0.png")
    with pytest.raises(ValueError, match="holds the source images"):
        run_jobs([job], lambda j: PairOutcome(j.name, "done", j.out))


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_fuse_large_over_a_source_is_refused(tmp_path, capsys, overwrite):
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", _img((64, 64), 1))
    tifffile.imwrite(tmp_path / "b.tif", _img((64, 64), 2))
    before = _snapshot(tmp_path)
    for out in ("a.tif", "b.tif"):
        rc = main(["fuse-large", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / out), "-m", "max", *overwrite])
        got = capsys.readouterr()
        assert rc != 0 and "skipped" not in got.out + got.err
        assert "would replace source" in got.err and str(tmp_path / out) in got.err
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------ counts and schedulers
@pytest.mark.parametrize("flag", [["--workers", "0"], ["--workers", "-1"], ["--workers", "two"], ["--retries", "-1"]])
def test_non_positive_counts_are_refused_at_parsing(two_folders, tmp_path, capsys, flag):
    a, b = two_folders
    with pytest.raises(SystemExit) as exc:
        main(["fuse", str(a), str(b), "--out", str(tmp_path / "o"), "-m", "average", *flag])
    assert exc.value.code == 2
    assert f"argument {flag[0]}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_jobs_refuses_negative_workers(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        run_jobs([], lambda j: j, workers=-1)


def test_unreachable_scheduler_fails_fast_naming_it(two_folders, tmp_path, capsys):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    a, b = two_folders
    t0 = time.perf_counter()
    rc = main(["fuse", str(a), str(b), "--out", str(tmp_path / "o"), "-m", "average", "--scheduler", address])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc != 0 and took < 20
    assert f"could not reach the Dask scheduler at {address}" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ unwritable outputs
@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_demo_into_proc_fails_naming_the_folder(capsys):
    rc = main(["demo", "--out", "/proc/x"])
    err = capsys.readouterr().err
    assert rc != 0 and "/proc/x" in err


def test_demo_into_a_path_under_a_file_fails(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    rc = main(["demo", "--out", str(tmp_path / "file.txt" / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and str(tmp_path / "file.txt" / "out") in err
    assert (tmp_path / "file.txt").read_text() == "not a folder"


def test_demo_fails_when_no_image_can_be_written(tmp_path, capsys, monkeypatch):
    import napari_fusion.io as nio

    def refuse(path, *a, **k):
        raise PermissionError(13, f"cannot write {path}: Permission denied")

    monkeypatch.setattr(nio, "write_image", refuse)
    rc = main(["demo", "--out", str(tmp_path / "d"), "-m", "average"])
    err = capsys.readouterr().err
    assert rc != 0 and str(tmp_path / "d" / "average.png") in err
    assert not (tmp_path / "d" / "metrics.csv").exists()


def test_unwritable_output_names_the_path_given_not_a_temp_file(tmp_path, two_folders, capsys):
    (tmp_path / "file.txt").write_text("x")
    dest = tmp_path / "file.txt" / "fused.png"
    with pytest.raises(OSError) as exc:
        write_image(dest, _img((8, 8), 0))
    assert str(dest) in str(exc.value) and ".part" not in str(exc.value)
    a, b = two_folders
    rc = main(["fuse", str(a), str(b), "--out", str(tmp_path / "file.txt" / "o"), "-m", "average"])
    out = capsys.readouterr().out
    assert rc != 0 and str(tmp_path / "file.txt" / "o" / "p0.png") in out and ".part" not in out
    rc = main(["evaluate", str(a), str(b), str(a), "--csv", str(tmp_path / "file.txt" / "m.csv")])
    err = capsys.readouterr().err
    assert rc != 0 and str(tmp_path / "file.txt" / "m.csv") in err and ".part" not in err


def test_an_error_inside_a_write_names_the_target(tmp_path):
    dest = tmp_path / "x.tif"
    with pytest.raises(OSError) as exc:
        with atomic_path(dest) as tmp:
            open(tmp.parent / "missing" / "x", "wb")  # a writer failing on its temporary path
    assert str(dest) in str(exc.value) and ".part" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ atomic writes: names, leftovers, modes
def test_temporaries_carry_a_recognisable_name_and_go_with_their_helpers(tmp_path):
    dest = tmp_path / "fused.tif"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            assert tmp.name == "fused.tif"
            assert re.fullmatch(rf"\.fused\.tif\.nf-{_host_tag()}-{os.getpid()}-[0-9a-f]+\.part", tmp.parent.name)
            tmp.write_bytes(b"half")
            (tmp.parent / ".tmpAbC123").write_bytes(b"a library's own temporary (safetensors)")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_later_run_removes_what_a_killed_write_left(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    code = (
        "import sys, time\n"
        "from napari_fusion.io.atomic import atomic_path\n"
        f"with atomic_path({str(folder / 'big.tif')!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 100000)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        left = [p.name for p in folder.iterdir()]
        assert len(left) == 1 and left[0].startswith(".big.tif.nf-") and left[0].endswith(".part")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in folder.iterdir()] == left  # the kill left it behind
    write_image(folder / "other.png", _img((8, 8), 0))  # a later run writing into the folder
    assert [p.name for p in folder.iterdir()] == ["other.png"]
    assert not (folder / "big.tif").exists()


def test_stale_rule_keeps_live_and_foreign_fresh_work(tmp_path):
    host, old = _host_tag(), time.time() - STALE_SECONDS - 60
    dead = tmp_path / f".a.tif.nf-{host}-{_dead_pid()}-0123abcd.part"
    live = tmp_path / f".b.tif.nf-{host}-{os.getpid()}-0123abcd.part"
    foreign_fresh = tmp_path / ".c.tif.nf-abcdef-12-0123abcd.part"
    foreign_old = tmp_path / ".d.tif.nf-abcdef-12-0123abcd.part"
    legacy_old = tmp_path / ".e.png.k2j3h4g5.part.png"  # mkstemp name of earlier versions
    legacy_fresh = tmp_path / ".f.png.k2j3h4g5.part.png"
    legacy_zarr_old = tmp_path / ".g.zarr.0a1b2c3d.part.zarr"
    users = [tmp_path / ".hidden.part.notes", tmp_path / "x.part", tmp_path / ".tmpAbC123"]
    for d in (dead, live, foreign_fresh, foreign_old, legacy_zarr_old):
        d.mkdir()
        (d / "0").write_bytes(b"chunk")
    for f in (legacy_old, legacy_fresh, *users):
        f.write_bytes(b"data")
    if host == "abcdef":  # pragma: no cover - a host hashing to the foreign tag
        pytest.skip("host tag collides with the test's foreign tag")
    for p in (foreign_old, foreign_old / "0", legacy_old, legacy_zarr_old, legacy_zarr_old / "0", *users):
        os.utime(p, (old, old))
    removed = set(remove_stale_parts(tmp_path))
    assert removed == {dead, foreign_old, legacy_old, legacy_zarr_old}
    assert all(p.exists() for p in (live, foreign_fresh, legacy_fresh, *users))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_csv_and_models_honour_the_umask(tmp_path, two_folders, capsys, umask):
    import tifffile
    import torch

    from napari_fusion.methods.store import save_bundle

    want = 0o666 & ~umask
    old = os.umask(umask)
    try:
        a, b = two_folders
        assert main(["fuse", str(a), str(b), "--out", str(tmp_path / "o"), "-m", "average", "--format", ".tif"]) == 0
        assert main(["evaluate", str(a), str(b), str(tmp_path / "o"), "--csv", str(tmp_path / "m.csv")]) == 0
        write_image(tmp_path / "g.png", _img((8, 8), 0))
        save_bundle(tmp_path / "model.safetensors", {"w": torch.zeros(3)}, {"family": "test"})
        tifffile.imwrite(tmp_path / "sa.tif", _img((64, 64), 1))
        tifffile.imwrite(tmp_path / "sb.tif", _img((64, 64), 2))
        fuse_file_tiled(tmp_path / "sa.tif", tmp_path / "sb.tif", tmp_path / "big.tif", "max", tile=32, overlap=4)
        fuse_file_tiled(tmp_path / "sa.tif", tmp_path / "sb.tif", tmp_path / "big.zarr", "max", tile=32, overlap=4)
    finally:
        os.umask(old)
    files = [tmp_path / "o" / "p0.tif", tmp_path / "m.csv", tmp_path / "g.png", tmp_path / "model.safetensors", tmp_path / "big.tif"]
    for f in files:
        assert oct(f.stat().st_mode & 0o777) == oct(want), f
    assert oct((tmp_path / "big.zarr").stat().st_mode & 0o777) == oct(0o777 & ~umask)


def test_overwriting_a_zarr_output_replaces_it_whole(tmp_path):
    import tifffile

    from napari_fusion.engine.batch import open_lazy

    tifffile.imwrite(tmp_path / "sa.tif", _img((64, 64), 1))
    tifffile.imwrite(tmp_path / "sb.tif", _img((64, 64), 2))
    (tmp_path / "o.zarr").mkdir()
    (tmp_path / "o.zarr" / "stale").write_text("old")
    fuse_file_tiled(tmp_path / "sa.tif", tmp_path / "sb.tif", tmp_path / "o.zarr", "max", tile=32, overlap=4)
    assert not (tmp_path / "o.zarr" / "stale").exists()
    assert np.asarray(open_lazy(tmp_path / "o.zarr")[0]).shape == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr", "sa.tif", "sb.tif"]


# ------------------------------------------------------------------ one name, two files
def test_two_files_with_one_name_are_reported_not_guessed(two_folders, tmp_path, capsys):
    import tifffile

    a, b = two_folders
    tifffile.imwrite(a / "p0.tif", _img((48, 64), 5))
    rc = main(["fuse", str(a), str(b), "--out", str(tmp_path / "o"), "-m", "average"])
    out = capsys.readouterr().out
    assert rc == 1
    assert str(a / "p0.png") in out and "p0.tif" in out and "share the name 'p0'" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["p1.png"]


def test_find_pairs_reports_two_files_with_one_name(pair_layout):
    import tifffile

    tifffile.imwrite(pair_layout / "vi" / "s1.tif", _img((48, 64, 3), 9))
    with pytest.warns(UserWarning, match=r"s1\.png and s1\.tif share the name 's1'"):
        pairs = find_pairs(pair_layout)
    assert [p.name for p in pairs] == ["s0"]
    with pytest.raises(ValueError, match="share the name 's1'"):
        find_pairs(pair_layout, missing="raise")


def test_pair_layout_fuse_reports_two_files_with_one_name(pair_layout, tmp_path, capsys):
    import tifffile

    tifffile.imwrite(pair_layout / "ir" / "s0.tif", _img((48, 64), 9))
    rc = main(["fuse", str(pair_layout), "--out", str(tmp_path / "o"), "-m", "average"])
    out = capsys.readouterr().out
    assert rc == 1 and "s0.png and s0.tif share the name 's0'" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["s1.png"]


# ------------------------------------------------------------------ fuse-large: every tile checked
def test_fuse_large_nan_block_between_sampled_patches_fails_naming_file_and_tile(tmp_path, capsys):
    import tifffile

    h, w = 2100, 2000  # above 4 Mpx: intensities come from 24 x 24 sampled 64-px patches
    a = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
    ys = np.linspace(0, h - 64, 24).astype(int)
    xs = np.linspace(0, w - 64, 24).astype(int)
    y0, x0 = ys[12] + 66, xs[12] + 66  # between patches, in the second tile row and column
    assert y0 + 10 < ys[13] and x0 + 10 < xs[13]
    a[y0 : y0 + 10, x0 : x0 + 10] = np.nan
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", np.full((h, w), 0.5, np.float32))
    rc = main(["fuse-large", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / "o.tif"), "-m", "average", "--tile", "1024", "--no-pyramid"])
    err = capsys.readouterr().err
    assert rc != 0
    assert str(tmp_path / "a.tif") in err and "NaN or infinite" in err
    m = re.search(r"rows (\d+)-(\d+), columns (\d+)-(\d+)", err)
    assert m and int(m[1]) <= y0 <= int(m[2]) and int(m[3]) <= x0 <= int(m[4]) and int(m[1]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def test_fuse_large_inf_in_b_is_named(tmp_path):
    b = np.full((64, 80), 0.5, np.float32)
    b[40, 70] = np.inf
    np.save(tmp_path / "a.npy", np.full((64, 80), 0.25, np.float32))
    np.save(tmp_path / "b.npy", b)
    with pytest.raises(ValueError, match=r"source B: .*b\.npy has NaN or infinite values in rows 0-63, columns 0-79"):
        fuse_file_tiled(tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "o.zarr", "average", tile=32, overlap=4)
    assert not (tmp_path / "o.zarr").exists()


def _truncated(path: Path, **kw) -> Path:
    import tifffile

    tifffile.imwrite(path, np.random.default_rng(0).random((300, 260)).astype(np.float32), **kw)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: (p.write_bytes(b""), p)[1], "is empty"),
        (lambda p: (p.write_bytes(b"II*\x00" + b"\x00" * 60), p)[1], "holds no image"),
        (lambda p: _truncated(p), "is truncated"),
        (lambda p: _truncated(p, tile=(64, 64), compression="zlib"), "is truncated"),
    ],
    ids=["empty", "header-only", "truncated", "truncated-tiled-zlib"],
)
def test_fuse_large_broken_tiff_names_the_file_and_the_problem(tmp_path, capsys, make, problem):
    import tifffile

    tifffile.imwrite(tmp_path / "good.tif", _img((300, 260), 1))
    bad = make(tmp_path / "bad.tif")
    with pytest.raises(ValueError, match=rf"source B: .*bad\.tif.*{problem}"):
        fuse_file_tiled(tmp_path / "good.tif", bad, tmp_path / "o.zarr", "max", tile=128)
    rc = main(["fuse-large", str(bad), str(tmp_path / "good.tif"), str(tmp_path / "o.tif"), "-m", "max"])
    err = capsys.readouterr().err
    assert rc != 0 and str(bad) in err and problem in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", "good.tif"]


def test_evaluate_reports_two_fused_files_with_one_name(two_folders, tmp_path, capsys):
    import imageio.v3 as iio
    import tifffile

    a, b = two_folders
    fused = tmp_path / "fused"
    fused.mkdir()
    iio.imwrite(fused / "p0.png", _img((48, 64), 3))
    tifffile.imwrite(fused / "p0.tif", _img((48, 64), 4))
    iio.imwrite(fused / "p1.png", _img((48, 64), 5))
    rc = main(["evaluate", str(a), str(b), str(fused)])
    got = capsys.readouterr()
    assert rc == 1 and "p0.png and p0.tif share the name 'p0'" in got.err
    assert "p1" in got.out and "no fused image named p0" not in got.err
