"""Speed of every registered method: milliseconds per fused pair, and parameter counts.

For each method, size (default 256x256 and 480x640) and device (CPU, plus CUDA when available),
the runner fuses a pair of real-looking unit images ``--warmup`` times untimed, then ``--repeats``
times timed; the median is reported (with the min and max in the CSV). This times the method
itself (``runner.fuse`` on unit gray images), not file I/O or colour conversion. CPU threads are
fixed (``--threads``, default 2) so that numbers are comparable between machines' CPU runs.
Writes ``docs/results/speed.md`` and ``.csv`` atomically.

    python benchmarks/speed.py                                    # all methods, cpu (+ cuda if present)
    python benchmarks/speed.py --methods gifnet tdfusion --sizes 256x256 480x640 1024x1024 --device cuda
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, markdown_table, method_names, print_flush, read_csv, write_csv, write_text

HEADERS = ["method", "device", "size", "ms_median", "ms_min", "ms_max", "ms_per_megapixel", "parameters", "repeats", "measured",
           "environment", "command"]
DEVICE_TITLES = {"cpu": "CPU", "cuda": "GPU (CUDA)", "mps": "Apple GPU (MPS)"}


def parse_size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {s!r} is not HxW, e.g. 480x640") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size {s!r} is too small (at least 8x8)")
    return h, w


def make_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two unit float32 images with edges, smooth regions and noise (content barely matters for speed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    a = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 0.05, (h, w))
    b = (((xx // 32) + (yy // 32)) % 2) * 0.6 + 0.2 + rng.normal(0, 0.05, (h, w))
    return np.clip(a, 0, 1).astype(np.float32), np.clip(b, 0, 1).astype(np.float32)


def count_parameters(runner) -> int | None:
    """Scalar parameters of a torch runner (``runner.n_parameters`` or its nn.Modules); None otherwise."""
    n = getattr(runner, "n_parameters", None)
    if n is not None:
        return int(n() if callable(n) else n)
    try:
        import torch
    except ImportError:
        return None
    if isinstance(runner, torch.nn.Module):
        return sum(p.numel() for p in runner.parameters())
    mods = getattr(runner, "modules", None)
    if isinstance(mods, dict):
        found = [m for m in mods.values() if isinstance(m, torch.nn.Module)]
    else:
        found = [v for v in vars(runner).values() if isinstance(v, torch.nn.Module)]
    if not found:
        return None
    seen, total = set(), 0
    for m in found:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_method(name: str, device: str, sizes, warmup: int, repeats: int) -> list[dict]:
    """Rows of timings of one method on one device, one per size."""
    from napari_fusion.methods.registry import build_runner

    runner = build_runner(name, device=device)
    params = count_parameters(runner)
    rows = []
    for h, w in sizes:
        a, b = make_pair(h, w)
        out = None
        for _ in range(warmup):
            out = runner.fuse(a, b)
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = runner.fuse(a, b)  # returns a NumPy array: the device work is finished
            _sync(device)
            times.append((time.perf_counter() - t0) * 1000.0)
        if out is None or np.asarray(out).shape != (h, w):
            raise RuntimeError(f"{name} returned shape {None if out is None else np.asarray(out).shape} for a {h}x{w} pair")
        med = statistics.median(times)
        rows.append({
            "method": name, "device": device, "size": f"{h}x{w}", "ms_median": med, "ms_min": min(times),
            "ms_max": max(times), "ms_per_megapixel": med / (h * w / 1e6), "parameters": params, "repeats": repeats,
        })
    return rows


def _num(v):
    if v in (None, ""):
        return None
    if isinstance(v, (int, float)):
        return v
    try:
        return int(v)
    except ValueError:
        return float(v)


def _device_tables(rows: list[dict], device: str) -> list[str]:
    """Time table, ms/MP table and provenance lines of one device's rows."""
    rows = [r for r in rows if r["device"] == device]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lookup = {(r["method"], r["size"]): r for r in rows}
    body = []
    for m in methods:
        params = next((_num(r["parameters"]) for r in rows if r["method"] == m and r["parameters"] not in ("", None)), None)
        body.append([m, params, *[_num(lookup[(m, s)]["ms_median"]) if (m, s) in lookup else None for s in sizes]])
    per_mp = [[m, *[_num(lookup[(m, s)]["ms_per_megapixel"]) if (m, s) in lookup else None for s in sizes]] for m in methods]
    out = [f"## {DEVICE_TITLES.get(device, device)}", ""]
    runs = list(dict.fromkeys((r.get("measured") or "?", r.get("environment") or "", r.get("command") or "") for r in rows))
    for measured, env, cmd in runs:
        which = sorted({r["method"] for r in rows if (r.get("measured") or "?", r.get("environment") or "", r.get("command") or "") == (measured, env, cmd)},
                       key=methods.index)
        line = f"- Measured {measured}" + (f", {env}" if env else "") + (f"; command `{cmd}`" if cmd else "")
        out.append(line + f" ({', '.join(which)}).")
    out += [
        "",
        markdown_table(["method", "parameters", *[f"{s} (ms)" for s in sizes]], rows=body, digits=[0, 0, *([2] * len(sizes))]),
        "",
        "Cost per megapixel (median ms / MP): constant across sizes when the cost grows linearly with pixels.",
        "",
        markdown_table(["method", *sizes], per_mp, digits=[0, *([1] * len(sizes))]),
        "",
    ]
    return out


def render_markdown(rows: list[dict], env: str, failures: list[str]) -> str:
    devices = list(dict.fromkeys(r["device"] for r in rows))
    out = [
        "# Speed: milliseconds per fused pair",
        "",
        "Written by `python benchmarks/speed.py` (see `benchmarks/README.md`); do not edit by hand.",
        f"Last run: {env}. Rows from earlier runs are kept (CSV columns `measured`, `environment`, `command`);",
        "each device has its own table with the runs its rows come from.",
        "",
        "Median of repeated `runner.fuse(a, b)` calls on one pair of gray unit images after warm-up: the",
        "method itself, without file I/O, colour conversion or tiling. `—`: not measured (no such device",
        "or the method failed). Parameters: scalar weights of the torch modules (classical methods have none).",
        "",
    ]
    for d in devices:
        out += _device_tables(rows, d)
    if failures:
        out += ["## Not measured in the last run", ""] + [f"- {f}" for f in failures] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME", help="registered methods (default: all)")
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 256), (480, 640)], metavar="HxW",
                    help="pair sizes (default 256x256 480x640)")
    ap.add_argument("--device", default="auto",
                    help="auto (CPU, plus CUDA when available) | cpu | cuda | mps | a comma list, e.g. cpu,cuda")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", type=Path, default=RESULTS / "speed",
                    help="output path without suffix; .md and .csv are written (default docs/results/speed)")
    ap.add_argument("--fresh", action="store_true", help="drop rows of earlier runs instead of merging")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be at least 1 and --warmup at least 0")

    devices = ["cpu"]
    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
        if args.device == "auto":
            if torch.cuda.is_available():
                devices.append("cuda")
        else:
            devices = [d.strip() for d in args.device.split(",") if d.strip()]
    except ImportError:
        if args.device not in ("auto", "cpu"):
            ap.error("torch is not installed; only --device cpu is possible")
    known = method_names()
    methods = args.methods or known
    unknown = [m for m in methods if m not in known]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; registered methods: {', '.join(known)}")
    env = environment(",".join(devices))
    stamp = ", ".join(env.split(", ")[:2])
    machine = ", ".join(env.split(", ")[2:]) + f", {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at the start)"
    command = " ".join(["python benchmarks/speed.py", *(sys.argv[1:] if argv is None else argv)])
    print_flush(f"# speed: {env}")

    new_rows, failures = [], []
    for dev in devices:
        for m in methods:
            try:
                rows = time_method(m, dev, args.sizes, args.warmup, args.repeats)
            except Exception as err:  # a method without weights or a device it cannot use
                failures.append(f"{m} on {dev}: {type(err).__name__}: {err}")
                print_flush(f"{m} on {dev}: FAILED {type(err).__name__}: {err}")
                continue
            for r in rows:
                r["measured"], r["environment"], r["command"] = stamp, machine, command
                print_flush(f"{m:>16} {dev:>5} {r['size']:>9}: {r['ms_median']:9.1f} ms  (params {r['parameters']})")
            new_rows += rows

    key = lambda r: (r["method"], r["device"], r["size"])  # noqa: E731
    old = [] if args.fresh else read_csv(args.out.with_suffix(".csv"))
    fresh = {key(r) for r in new_rows}
    rows = [r for r in old if key(r) not in fresh] + new_rows
    order = {m: i for i, m in enumerate(known)}
    rows.sort(key=lambda r: (order.get(r["method"], 99), r["method"], r["device"] != "cpu", r["device"],
                             int(r["size"].split("x")[0]) * int(r["size"].split("x")[1])))
    write_csv(args.out.with_suffix(".csv"), HEADERS, [[r.get(h) for h in HEADERS] for r in rows])
    text = render_markdown(rows, env, failures)
    write_text(args.out.with_suffix(".md"), text)
    print_flush("\n" + text.split("\n\n", 3)[-1])
    print_flush(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.csv')}")
    return 1 if failures and not new_rows else 0


if __name__ == "__main__":
    sys.exit(main())
