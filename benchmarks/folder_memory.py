"""Peak memory of `napari-fusion fuse A_DIR B_DIR --out DIR` on a folder that holds one very large pair.

A folder pair of square 8-bit gray scenes is written as tiled TIFFs (512-pixel tiles, so they can be
read chunk by chunk, as a large GeoTIFF usually is). Each command runs in its own process, started
from here; its peak resident memory is the kernel's own count for that process (``VmHWM``, read by
the process when it is done), not a sample. Rows:

- ``fuse``: the folder command (in-process); a pair above ``engine.batch.LARGE_PAIR_SAMPLES``
  (32 Mi samples) takes the tiled disk-to-disk path, smaller ones the in-memory path;
- ``fuse-large``: the one-scene disk-to-disk command on the same pair, for comparison;
- with ``--before SRC``: ``fuse`` run on another checkout's ``src`` (e.g. the commit before folders
  took the tiled path), the number the change is measured against.

``same as first``: the output file's pixels equal those of the first row of the same size.

    python benchmarks/folder_memory.py                                   # 16k: fuse, fuse-large
    git archive 0da4fcd src | tar -x -C /tmp/before       # the code before folders took the tiled path
    python benchmarks/folder_memory.py --sizes 5792 16384 --before /tmp/before/src --before-label 0da4fcd

Writes ``docs/results/folder_memory.md`` and ``.csv`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, markdown_table, print_flush, write_csv, write_text

HEADERS = ["code", "command", "size", "megapixels", "path", "seconds", "peak_rss_mb", "same_as_first", "exit_code"]
TILE = 512


def make_pair(path_a: Path, path_b: Path, n: int, seed: int = 0) -> None:
    """Two n x n uint8 tiled TIFFs (texture, edges, noise), written strip by strip without holding them."""
    import tifffile

    rng = np.random.default_rng(seed)
    xx = np.arange(n, dtype=np.float32)[None, :]

    def tiles(which: int):
        for r in range(0, n, TILE):
            yy = np.arange(r, min(r + TILE, n), dtype=np.float32)[:, None]
            if which == 0:
                strip = 128 + 70 * np.sin(xx / 23.0) * np.cos(yy / 31.0) + rng.normal(0, 12, (yy.shape[0], n))
            else:
                strip = 60 + 130 * (((xx // 64) + (yy // 64)) % 2) + rng.normal(0, 12, (yy.shape[0], n))
            strip = np.clip(strip, 0, 255).astype(np.uint8)
            for c in range(0, n, TILE):
                t = np.zeros((TILE, TILE), np.uint8)
                blk = strip[:, c : c + TILE]
                t[: blk.shape[0], : blk.shape[1]] = blk
                yield t

    for which, path in enumerate((path_a, path_b)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(str(path), tiles(which), shape=(n, n), dtype=np.uint8, tile=(TILE, TILE))


# The command runs in a fresh interpreter that reports its own peak resident memory (VmHWM of
# /proc/self/status) when it is done. Not the parent's ru_maxrss of the child: Linux carries the
# parent's high-water mark into a child started with vfork/exec, so that would count this script.
_WRAP = """
import sys
from napari_fusion.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as fh:
    hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
sys.stderr.write("\\nVmHWM_KB " + hwm + "\\n")
sys.exit(rc)
"""


def run_measured(args: list[str], src: str | None) -> tuple[float, float, int, str]:
    """``napari-fusion ARGS`` in a fresh process; (seconds, its peak RSS in MB, exit code, stderr tail)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    seconds = time.perf_counter() - t0
    kb = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM_KB ")]
    return seconds, (int(kb[-1]) / 1024 if kb else float("nan")), proc.returncode, proc.stderr[-1500:]


def read_pixels(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(str(path), level=0) if path.suffix != ".zarr" else np.asarray(__import__("zarr").open(str(path))["0"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384])
    ap.add_argument("--method", default="average")
    ap.add_argument("--commands", nargs="+", default=["fuse", "fuse-large"], choices=["fuse", "fuse-large"])
    ap.add_argument("--before", default=None, metavar="SRC", help="also run `fuse` with this checkout's src/ first on PYTHONPATH")
    ap.add_argument("--before-label", default="before", help="what the --before rows are called (e.g. the commit they hold)")
    ap.add_argument("--workdir", default=None, help="where the scenes go (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULTS / "folder_memory"), help="results stem (.md and .csv are written)")
    args = ap.parse_args(argv)

    from napari_fusion.engine.batch import LARGE_PAIR_SAMPLES

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            pa, pb = tmp / "A" / "scene.tif", tmp / "B" / "scene.tif"
            t0 = time.perf_counter()
            make_pair(pa, pb, n)
            print_flush(f"pair {n}x{n}: written in {time.perf_counter() - t0:.1f} s")
            runs = [("this", c) for c in args.commands] + ([(args.before_label, "fuse")] if args.before else [])
            first = None
            for code, command in runs:
                out = tmp / f"out-{code}-{command}"
                if command == "fuse":
                    cmd = ["fuse", str(pa.parent), str(pb.parent), "--out", str(out), "-m", args.method]
                    result = out / "scene.tif"
                    path = "tiled" if code == "this" and n * n > LARGE_PAIR_SAMPLES else "in memory"
                else:
                    out.mkdir()
                    result = out / "scene.tif"
                    cmd = ["fuse-large", str(pa), str(pb), str(result), "-m", args.method]
                    path = "tiled"
                if code != "this":
                    path = "in memory"
                seconds, rss, rc, err = run_measured(cmd, args.before if code != "this" else None)
                same = None
                if rc == 0 and result.exists():
                    pix = read_pixels(result)
                    if first is None:
                        first = pix
                    else:
                        same = bool(np.array_equal(pix, first))
                    del pix
                else:
                    print_flush(f"  {code} {command}: exit {rc}\n{err}")
                mp = n * n / 1e6
                rows.append([code, command, n, round(mp, 1), path, seconds, rss, same, rc])
                print_flush(f"  {code:6s} {command:10s} {n:6d} ({path}): {seconds:7.1f} s  peak RSS {rss:8.1f} MB  same as first: {same}")
                shutil.rmtree(out, ignore_errors=True)
            first = None
            shutil.rmtree(pa.parent), shutil.rmtree(pb.parent)
    write_csv(args.out + ".csv", HEADERS, rows)
    table = markdown_table(
        ["code", "command", "size", "Mpx", "path", "seconds", "peak RSS MB", "same as first", "exit"],
        [[r[0], r[1], f"{r[2]}x{r[2]}", r[3], r[4], r[5], r[6], "-" if r[7] is None else ("yes" if r[7] else "no"), r[8]] for r in rows],
        digits=[0, 0, 0, 1, 0, 1, 0, 0, 0],
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = f"""# Folder batch: peak memory with a very large pair

Written by `python benchmarks/folder_memory.py {' '.join(argv or sys.argv[1:])}`; do not edit by hand.
Load average when it finished (1/5/15 min): {load} (a shared machine).
Measured: {environment('cpu')}.

One pair of square 8-bit gray scenes in `A/` and `B/`, tiled TIFFs (512-pixel tiles); method
`{args.method}`. `fuse` = `napari-fusion fuse A B --out OUT` (in-process), `fuse-large` = the
one-scene command on the same files. Peak RSS = the process's peak resident memory as the kernel
counts it (`VmHWM`), Python start and imports (~0.27 GB) included; each row ran in a fresh process.
`this` = this checkout: a pair whose larger file holds more than `LARGE_PAIR_SAMPLES`
({LARGE_PAIR_SAMPLES / 2**20:.0f} Mi samples) takes the tiled disk-to-disk path by itself.
{"`" + args.before_label + "` = the same command on that earlier code, before folders took the tiled path (`--before`). " if args.before else ""}"same as
first" compares the output's pixels with the first row of the same size.

{table}
"""
    write_text(args.out + ".md", text)
    print_flush(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
