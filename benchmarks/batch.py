"""Throughput of the batch CLI: pairs per second in-process and on a local Dask cluster of 1 and 2 workers.

The pairs are the first ``--pairs`` MSRS infrared/visible pairs (640x480, ir gray + vi RGB) from
``../shared/data`` when it is there, else synthetic pairs of that size. Each configuration runs
``napari-fusion fuse A_DIR B_DIR --out OUT -m METHOD [--workers N]`` as a fresh command into an
empty folder; reported are the wall time of the whole command (Python start, imports, Dask
cluster start) and the batch's own time (the summary line), as pairs per second, and whether the
files written are byte-identical to the in-process run.

    python benchmarks/batch.py                          # 24 pairs, laplacian, in-process / 1 / 2 workers
    python benchmarks/batch.py --pairs 60 --method average --workers 0 2 4

Writes ``docs/results/batch.md`` and ``.csv`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import filecmp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, markdown_table, print_flush, write_csv, write_text

HEADERS = ["method", "workers", "pairs", "fused", "failed", "wall_s", "batch_s", "cluster_start_s", "pairs_per_s_wall", "pairs_per_s_jobs", "identical"]


def make_folders(root: Path, n: int) -> str:
    """``root/A`` and ``root/B`` with n pairs; returns where they came from."""
    from napari_fusion.training.data import shared_data_dir

    a, b = root / "A", root / "B"
    a.mkdir(), b.mkdir()
    data = shared_data_dir()
    msrs = data / "ivif" / "MSRS" if data else None
    if msrs is not None and (msrs / "ir").is_dir():
        names = sorted(p.name for p in (msrs / "ir").iterdir())[:n]
        for name in names:
            os.symlink(msrs / "ir" / name, a / name)
            os.symlink(msrs / "vi" / name, b / name)
        return f"MSRS ({len(names)} pairs, 640x480, ir gray + vi RGB)"
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for i in range(n):
        iio.imwrite(a / f"s{i:03d}.png", rng.integers(0, 256, (480, 640), dtype=np.uint8))
        iio.imwrite(b / f"s{i:03d}.png", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    return f"synthetic ({n} pairs, 640x480 gray + RGB noise)"


def run_cli(a: Path, b: Path, out: Path, method: str, workers: int) -> tuple[float, float | None, float, str]:
    cmd = [sys.executable, "-m", "napari_fusion.cli", "fuse", str(a), str(b), "--out", str(out), "-m", method, "--device", "cpu"]
    if workers:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAPARI_FUSION_DEVICE": "cpu"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"(\d+) fused, (\d+) skipped.*?, (\d+) failed in ([0-9.]+) s", proc.stdout)
    st = re.search(r"cluster start ([0-9.]+) s", proc.stdout)
    return wall, float(m.group(4)) if m else None, float(st.group(1)) if st else 0.0, proc.stdout + proc.stderr[-2000:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--method", default="laplacian")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="0 = in-process")
    ap.add_argument("--out", default=str(RESULTS / "batch"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = make_folders(tmp, args.pairs)
        print_flush(f"pairs: {source}")
        ref_dir = None
        for w in args.workers:
            out = tmp / f"out{w}"
            wall, batch_s, start_s, log = run_cli(tmp / "A", tmp / "B", out, args.method, w)
            files = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            m = re.search(r"(\d+) fused, (\d+) skipped.*?, (\d+) failed", log)
            fused, failed = (int(m.group(1)), int(m.group(3))) if m else (0, args.pairs)
            if ref_dir is None:
                ref_dir, identical = out, "reference"
            else:
                same = all(filecmp.cmp(ref_dir / f, out / f, shallow=False) for f in files) and files == sorted(p.name for p in ref_dir.iterdir())
                identical = "yes" if same else "NO"
            label = "in-process" if w == 0 else f"{w} (Dask local)"
            jobs_s = (batch_s - start_s) if batch_s else None
            rows.append([args.method, label, args.pairs, fused, failed, wall, batch_s, start_s, args.pairs / wall,
                         (args.pairs / jobs_s) if jobs_s else None, identical])
            print_flush(f"  workers {label:15s}: wall {wall:6.1f} s, batch {batch_s or float('nan'):6.1f} s "
                        f"(cluster start {start_s:.1f} s), {args.pairs / wall:5.2f} pairs/s (wall), identical: {identical}")
            if not m:
                print_flush(log)
    write_csv(args.out + ".csv", HEADERS, rows)
    table = markdown_table(
        ["method", "workers", "pairs", "fused", "failed", "wall s", "batch s", "cluster start s", "pairs/s (wall)", "pairs/s (jobs)", "same files as in-process"],
        rows, digits=[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 0],
    )
    text = f"""# Batch: pairs per second of `napari-fusion fuse`

Written by `python benchmarks/batch.py {' '.join(argv or sys.argv[1:])}`; do not edit by hand.
Measured: {environment('cpu')}; CPU cores here: {os.cpu_count()}.
Pairs: {source}. Each row is one fresh `napari-fusion fuse A B --out OUT -m {args.method} [--workers N]`
into an empty folder. wall = the whole command (Python start, imports, cluster start); batch = the
time in its summary line; cluster start = the part of it spent starting the Dask cluster and
loading the registry on its workers; pairs/s (jobs) = pairs / (batch - cluster start): reading,
fusing and writing. Workers are Dask local processes with one thread each; the output files are
compared byte for byte with the in-process run.

{table}
"""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = text.replace("\nMeasured: ", f"\nLoad average when it finished (1/5/15 min): {load} (a shared machine).\nMeasured: ", 1)
    write_text(args.out + ".md", text)
    print_flush(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
