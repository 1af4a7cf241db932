"""Time and peak memory versus scene size: in-memory fusion vs tiled disk-to-disk fusion.

Synthetic square scenes (1k, 4k, 8k pixels a side; 16k with ``--big``) are written once as
uncompressed 8-bit TIFFs (memory-mappable, like a large GeoTIFF). Each measurement runs in a fresh
Python process so that its peak memory is its own:

- ``memory``: the file read whole, ``fuse_arrays(..., tile=0)`` (the method on the whole image),
  ``write_image`` - what a plain script would do;
- ``tiled``: ``napari_fusion.engine.batch.fuse_file_tiled`` - tiles read from the memory-mapped
  inputs, fused with the method's halo and blended, written into a chunked zarr with its pyramid.

Memory columns: ``heap`` is the tracemalloc peak (every NumPy/Python allocation), ``anon`` the
peak anonymous resident memory of the process (``RssAnon``, sampled every 10 ms: heap plus
libraries, excluding the page cache of memory-mapped files), ``rss`` the peak resident set
including mapped file pages (those are cache the kernel can drop, so they grow with what was read).
Tiled fusion must keep ``heap``/``anon`` flat as the scene grows.

    python benchmarks/scale.py                       # 1k, 4k, 8k; average, max, laplacian; cpu
    python benchmarks/scale.py --big --methods laplacian --modes tiled
    python benchmarks/scale.py --device cuda --methods gifnet   # GPU when there is one

Writes ``docs/results/scale.md`` and ``.csv`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, markdown_table, print_flush, write_csv, write_text

HEADERS = ["method", "mode", "size", "megapixels", "seconds", "mpx_per_s", "heap_mb", "anon_mb", "anon_start_mb", "rss_mb", "tile", "device"]


def make_scene(path_a: Path, path_b: Path, n: int, seed: int = 0) -> None:
    """Two n x n uint8 TIFFs (edges, texture, noise), written band by band without holding them."""
    import tifffile

    rng = np.random.default_rng(seed)
    ma = tifffile.memmap(str(path_a), shape=(n, n), dtype=np.uint8)
    mb = tifffile.memmap(str(path_b), shape=(n, n), dtype=np.uint8)
    xx = np.arange(n, dtype=np.float32)[None, :]
    for r in range(0, n, 1024):
        yy = np.arange(r, min(r + 1024, n), dtype=np.float32)[:, None]
        a = 128 + 70 * np.sin(xx / 23.0) * np.cos(yy / 31.0) + rng.normal(0, 12, (yy.shape[0], n))
        b = 60 + 130 * ((((xx // 64) + (yy // 64)) % 2)) + rng.normal(0, 12, (yy.shape[0], n))
        ma[r : r + yy.shape[0]] = np.clip(a, 0, 255).astype(np.uint8)
        mb[r : r + yy.shape[0]] = np.clip(b, 0, 255).astype(np.uint8)
    ma.flush(), mb.flush()
    del ma, mb


# ----------------------------------------------------------------------------- one measurement
def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class _Sampler(threading.Thread):
    """Peak RssAnon / VmRSS of this process, polled every 10 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.anon = self.rss = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.anon = max(self.anon, _status_kb("RssAnon"))
            self.rss = max(self.rss, _status_kb("VmRSS"))
            time.sleep(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.anon = max(self.anon, _status_kb("RssAnon"))
        self.rss = max(self.rss, _status_kb("VmRSS"))


def measure_one(method: str, mode: str, path_a: str, path_b: str, out_dir: str, tile: int, device: str) -> dict:
    """Fuse one scene in this process; returns seconds and peak memory (MB)."""
    import tracemalloc

    import torch

    torch.set_num_threads(2)
    from napari_fusion.engine.batch import fuse_file_tiled
    from napari_fusion.engine.pipeline import fuse_arrays
    from napari_fusion.io import write_image
    from napari_fusion.methods.registry import build_runner

    import tifffile  # noqa: F401 - imports are not part of the measurement
    import zarr  # noqa: F401
    import scipy.ndimage  # noqa: F401

    build_runner(method, device=device if device != "auto" else "cpu")  # load weights before timing
    fuse_arrays(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8), method, device=device)  # warm-up
    sampler = _Sampler()
    base_anon = _status_kb("RssAnon")
    sampler.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "memory":
        import tifffile

        a, b = tifffile.imread(path_a), tifffile.imread(path_b)
        res = fuse_arrays(a, b, method, tile=0, device=device)
        write_image(Path(out_dir) / f"{method}-memory.tif", res.fused)
    else:
        fuse_file_tiled(path_a, path_b, Path(out_dir) / f"{method}-tiled.zarr", method, tile=tile, device=device)
    seconds = time.perf_counter() - t0
    heap = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sampler.stop()
    return {
        "seconds": seconds,
        "heap_mb": heap / 2**20,
        "anon_mb": sampler.anon / 1024,
        "anon_base_mb": base_anon / 1024,
        "rss_mb": sampler.rss / 1024,
    }


# --------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--big", action="store_true", help="add 16384 (tiled only unless --memory-big)")
    ap.add_argument("--memory-big", action="store_true", help="also run the in-memory mode at 16k")
    ap.add_argument("--methods", nargs="+", default=["average", "max", "laplacian"])
    ap.add_argument("--modes", nargs="+", default=["memory", "tiled"], choices=["memory", "tiled"])
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None, help="where the scenes go (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULTS / "scale"), help="results stem (.md and .csv are written)")
    ap.add_argument("--one", nargs=6, metavar=("METHOD", "MODE", "A", "B", "OUT", "TILE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        m, mode, a, b, out, tile = args.one
        print(json.dumps(measure_one(m, mode, a, b, out, int(tile), args.device)))
        return 0

    sizes = list(args.sizes) + ([16384] if args.big else [])
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        for n in sizes:
            pa, pb = tmp / f"a{n}.tif", tmp / f"b{n}.tif"
            t0 = time.perf_counter()
            make_scene(pa, pb, n)
            print_flush(f"scene {n}x{n}: written in {time.perf_counter() - t0:.1f} s")
            for method in args.methods:
                for mode in args.modes:
                    if mode == "memory" and n >= 16384 and not args.memory_big:
                        continue
                    out = tmp / f"out{n}"
                    out.mkdir(exist_ok=True)
                    cmd = [sys.executable, __file__, "--device", args.device, "--one", method, mode, str(pa), str(pb), str(out), str(args.tile)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
                    if proc.returncode != 0:
                        print_flush(f"  {method} {mode} {n}: FAILED\n{proc.stderr[-2000:]}")
                        continue
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    mp = n * n / 1e6
                    row = [method, mode, n, round(mp, 2), r["seconds"], mp / r["seconds"], r["heap_mb"], r["anon_mb"], r["anon_base_mb"], r["rss_mb"],
                           args.tile if mode == "tiled" else None, args.device]
                    rows.append(row)
                    print_flush(f"  {method:10s} {mode:6s} {n:6d}: {r['seconds']:7.2f} s  heap {r['heap_mb']:8.1f} MB  "
                                f"anon {r['anon_mb']:8.1f} MB  rss {r['rss_mb']:8.1f} MB")
                    for f in out.iterdir():  # free the disk between runs
                        if f.is_dir():
                            import shutil

                            shutil.rmtree(f)
                        else:
                            f.unlink()
            pa.unlink(), pb.unlink()
    write_csv(args.out + ".csv", HEADERS, rows)
    table = markdown_table(
        ["method", "mode", "size", "Mpx", "seconds", "Mpx/s", "heap MB", "anon MB", "anon at start MB", "rss MB"],
        [[r[0], r[1], f"{r[2]}x{r[2]}", r[3], r[4], r[5], r[6], r[7], r[8], r[9]] for r in rows],
        digits=[0, 0, 0, 1, 2, 2, 1, 1, 1, 1],
    )
    text = f"""# Scale: time and peak memory versus scene size

Written by `python benchmarks/scale.py {' '.join(argv or sys.argv[1:])}`; do not edit by hand.
Measured: {environment(args.device)}.

Synthetic square 8-bit scenes read from uncompressed TIFFs on disk. `memory`: read whole, fused
untiled (`fuse_arrays(tile=0)`), written as TIFF. `tiled`: `engine.batch.fuse_file_tiled` with
{args.tile}-pixel tiles (a method with a preferred CPU tile, e.g. GIFNet's 512, runs each in its
own tiles), memory-mapped input, zarr output with a 2x pyramid. heap = tracemalloc
peak; anon = peak anonymous resident memory (RssAnon; "anon at start" is what the process held
before the fusion began: Python, NumPy, SciPy, torch, the loaded method); rss = peak resident set
including memory-mapped file pages (page cache the kernel can drop). Each row ran in a fresh process.

{table}
"""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = text.replace("\nMeasured: ", f"\nLoad average when it finished (1/5/15 min): {load} (a shared machine).\nMeasured: ", 1)
    write_text(args.out + ".md", text)
    print_flush(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
