"""GIFNet here vs the authors' released model: speed, linear cost, size, and fusion quality.

Speed: milliseconds per fused pair of our GIFNet on unit gray images (median of ``--repeats`` after a
warm-up) at 256x256, 480x640, 960x1280 and 1920x2560 on the CPU (``--threads``, default 2) and on CUDA
when there is one, two ways: ``engine`` (``engine.pipeline.fuse_unit``: what every fusion call runs,
with the automatic tiles of the runner's ``preferred_tile``) and ``one pass`` (``runner.fuse`` on the
whole image); cost per megapixel (constant when the cost is linear in pixels);
parameters and multiply-accumulates per pixel. The reference row is the authors' released model
(822,780 parameters, window attention) as measured on a 2-core CPU for issue 5: ~2.2 s per 256x256
pair and ~29 s per 480x640 pair (its weights are not part of this project, so it is not rerun here).

Quality: Qabf and VIF (plus the other fusion metrics) of ``gifnet`` next to ``average``,
``laplacian`` and ``max`` on held-out pairs only (``training.data.pair_split``: MSRS's split.csv test split;
sorted index % 5 == 0 of RoadScene,
MRI/CT and MRI/PET (the pairs GIFNet never saw in training), and the four PAN/MS scenes (the
shipped weights were trained without PAN/MS data). Pairs are
fused through the engine pipeline (``engine.pipeline.fuse_arrays``: the path of the widget, API and
CLI), metrics on 8-bit gray/Y images.

    python benchmarks/gifnet_vs_reference.py                        # everything, writes docs/results/gifnet.md
    python benchmarks/gifnet_vs_reference.py --skip-quality --sizes 256x256 480x640
    python benchmarks/gifnet_vs_reference.py --weights /tmp/gifnet.safetensors --limit 3 --out /tmp/gif
    python benchmarks/gifnet_vs_reference.py --skip-speed --reference-dir ~/gifnet_authors_outputs
        # scores the authors' fused images of the held-out pairs (DIR/<dataset>/<pair name>.png) as 'reference'
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from napari_fusion.engine.pipeline import PREFERRED_TILE_FACTOR, fuse_unit

from _common import (
    RESULTS,
    gray8,
    environment,
    fuse_gray,
    iter_pairs,
    markdown_table,
    print_flush,
    resolve_device,
    write_csv,
    write_text,
)

REFERENCE = {
    "name": "GIFNet, authors' release (AWCXV/GIFNet)",
    "parameters": 822_780,
    "cpu_ms": {"256x256": 2200.0, "480x640": 29000.0},
    "note": "measured on a 2-core CPU for issue 5; not rerun here",
}
QUALITY_DATASETS = ("roadscene", "msrs", "mri_ct", "mri_pet", "pan_ms")
BASELINES = ("average", "laplacian", "max")
METRICS = ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM", "SCD")


def parse_size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {s!r} is not HxW, e.g. 480x640") from None
    return h, w


def make_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two unit images with edges, smooth regions and noise (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    a = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 0.05, (h, w))
    b = (((xx // 32) + (yy // 32)) % 2) * 0.6 + 0.2 + rng.normal(0, 0.05, (h, w))
    return np.clip(a, 0, 1).astype(np.float32), np.clip(b, 0, 1).astype(np.float32)


def load_runner(weights: str | None, device: str):
    from napari_fusion.methods.gifnet import load_runner as load
    from napari_fusion.methods.registry import build_runner

    return load(weights, device=device) if weights else build_runner("gifnet", device=device, cache=False)


def macs_per_pixel(runner, h: int = 256, w: int = 256) -> float:
    """Multiply-accumulates per output pixel of the inference path (convolutions and linear layers)."""
    import torch

    net = runner.net
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total[0] += out.numel() * k
        elif isinstance(mod, torch.nn.Linear):
            total[0] += out.numel() * mod.in_features

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        a, b = make_pair(h, w)
        runner.fuse(a, b)
    finally:
        for hk in hooks:
            hk.remove()
    return total[0] / (h * w)


PATHS = {
    "engine": lambda runner, a, b: fuse_unit(runner, a, b),
    "one pass": lambda runner, a, b: runner.fuse(a, b),
}


def time_fuse(runner, h: int, w: int, device: str, warmup: int, repeats: int, path: str = "engine") -> list[float]:
    import torch

    a, b = make_pair(h, w)
    run = PATHS[path]
    for _ in range(warmup):
        run(runner, a, b)
    out = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        run(runner, a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def speed_rows(args) -> tuple[list[list], dict]:
    """Timings on the CPU at each of ``--speed-threads`` torch thread counts, then on CUDA if present."""
    import torch

    runs = [("cpu", t) for t in args.speed_threads]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        runs.append(("cuda", None))
    rows = []
    info = {}
    for dev, threads in runs:
        if threads:
            torch.set_num_threads(threads)
        label = f"cpu, {threads} thread{'s' if threads > 1 else ''}" if threads else dev
        runner = load_runner(args.weights, dev)
        info["parameters"] = runner.n_parameters
        info["halo"] = runner.halo
        if dev == "cpu" and "macs" not in info:
            info["macs"] = macs_per_pixel(runner)
        info["preferred_tile"] = runner.preferred_tile if dev == "cpu" else info.get("preferred_tile")
        for path in args.paths:
            for h, w in args.sizes:
                reps = args.repeats if h * w <= 640 * 480 else max(3, args.repeats // 2)
                ts = time_fuse(runner, h, w, dev, args.warmup, reps, path)
                med = statistics.median(ts)
                ref = REFERENCE["cpu_ms"].get(f"{h}x{w}") if dev == "cpu" else None
                row = [label, path, f"{h}x{w}", med, min(ts), max(ts), med / (h * w / 1e6), ref, (ref / med) if ref else None, len(ts)]
                rows.append(row)
                print_flush(f"  {label}, {path}, {h}x{w}: median {med:.1f} ms (min {min(ts):.1f}), {row[6]:.0f} ms/MP"
                            + (f", {row[8]:.1f}x faster than the reference" if ref else ""))
    torch.set_num_threads(args.threads)
    return rows, info


REFERENCE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def read_reference(ref_dir: Path, dataset: str, name: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The authors' fused image of one held-out pair, ``DIR/<dataset>/<name>.<ext>``, as 8-bit gray/Y.

    None when the folder has no file for this pair; an error when the file's size is not the pair's.
    """
    from napari_fusion.io import read_image

    for ext in REFERENCE_EXTS:
        f = ref_dir / dataset / f"{name}{ext}"
        if f.is_file():
            img = read_image(f)
            g = gray8(img.data, img.rgb, str(f))
            if g.shape != tuple(shape):
                raise ValueError(f"{f}: the reference's fused image is {g.shape[1]}x{g.shape[0]}, "
                                 f"the pair {dataset}/{name} is {shape[1]}x{shape[0]}")
            return g
    return None


def quality_rows(args) -> tuple[list[list], list[list]]:
    from napari_fusion.metrics import fusion_metrics

    methods = list(BASELINES) + ["gifnet"]
    ref_dir = Path(args.reference_dir) if args.reference_dir else None
    if ref_dir is not None and not ref_dir.is_dir():
        raise FileNotFoundError(f"--reference-dir {ref_dir} is not a folder")
    runner = load_runner(args.weights, resolve_device(args.device)) if args.weights else "gifnet"
    per_pair: list[list] = []
    for ds in args.datasets:
        # iter_pairs gives the held-out pairs (pair_split: MSRS's split.csv, elsewhere sorted index % 5 == 0) of every pair folder and all
        # PAN/MS scenes (the shipped weights were trained on no PAN/MS data)
        held = list(iter_pairs(ds, args.limit))
        for p in held:
            n0 = len(per_pair)
            for m in methods:
                fused, _ = fuse_gray(runner if m == "gifnet" else m, p.a, p.b, device=resolve_device(args.device))
                vals = fusion_metrics(fused, p.a, p.b)
                per_pair.append([ds, p.name, m] + [vals[k] for k in METRICS])
            ref = read_reference(ref_dir, ds, p.name, p.a.shape) if ref_dir is not None else None
            if ref is not None:
                vals = fusion_metrics(ref, p.a, p.b)
                per_pair.append([ds, p.name, "reference"] + [vals[k] for k in METRICS])
            print_flush(f"  {ds} {p.name}: " + ", ".join(
                f"{r[2]} Qabf {r[3 + METRICS.index('Qabf')]:.3f}" for r in per_pair[n0:]))
    means = []
    for ds in args.datasets:
        for m in methods + ["reference"]:
            rs = [r for r in per_pair if r[0] == ds and r[2] == m]
            if rs:
                means.append([ds, m, len(rs)] + [float(np.mean([r[3 + i] for r in rs])) for i in range(len(METRICS))])
    return means, per_pair


NOTES = """
## How to read this

- **Speed.** Our model is fully convolutional with a finite receptive field (the halo above) and
  runs its two task branches at half resolution with depthwise-separable blocks
  (`napari_fusion/methods/gifnet.py`); tiles with the halo give the untiled result exactly
  (`tests/test_gifnet.py`). Whether its cost is linear in pixels is read off the ms/MP column (and
  the line under the table): equal ms/MP across sizes = linear. A fixed per-call overhead raises
  ms/MP at small sizes. In `one pass`, ms/MP rises at large sizes although the work per pixel is
  the same: once the feature maps outgrow the CPU's cache every layer streams them from memory.
  That is why the engine splits a CPU plane into the runner's preferred tiles (`preferred_tile`,
  `engine/pipeline.py`): each tile's maps stay in cache, which outweighs the halo recomputed around
  each tile, and the number of tiles - hence the cost - grows linearly with the pixel count.
- **CPU timings on a shared machine** vary with the load of other processes. With more torch threads
  than free cores, threads wait for each other: on a loaded 2-core machine 2 threads can be slower
  than 1. The minimum is the best estimate of the method's own cost, the median what a user on a busy
  machine sees. The reference numbers were measured on a 2-core CPU elsewhere and are not rerun here.
- **Quality.** We cannot run the authors' model here (its weights are not part of this project), so
  its Qabf/VIF are not in the tables unless its fused images of these held-out pairs are given with
  `--reference-dir DIR` (`DIR/<dataset>/<pair name>.png`); otherwise the comparison is with
  baselines run on the same pairs. `max`
  is the per-pixel maximum (a strong baseline for Qabf/VIF on IR/visible and PET, poor in
  appearance: it copies noise and halos); `laplacian` a pyramid fusion; `average` the mean. GIFNet
  was trained on the other pairs of the same datasets (the train split of `pair_split`; see
  `napari_fusion/training/pack.py`) and on no PAN/MS scene.
"""


def training_section(weights: str | None) -> list[str]:
    """How the measured model was trained (from its file's metadata)."""
    from napari_fusion.methods.registry import WEIGHTS_DIR
    from napari_fusion.methods.store import read_metadata

    path = Path(weights) if weights else WEIGHTS_DIR / "gifnet.safetensors"
    try:
        t = read_metadata(path).get("training", {})
    except Exception as err:  # noqa: BLE001 - a report still gets written
        return ["## Model", "", f"Could not read {path}: {err}", ""]
    fl = t.get("final_losses", {})
    return [
        "## The measured model",
        "",
        f"`{path.name}`: {t.get('steps', '?')} steps, {t.get('seconds', '?')} s on `{t.get('device', '?')}`, seed {t.get('seed', '?')};",
        f"data: {t.get('data', '?')}.",
        f"Command: `{t.get('command', '?')}`.",
        "Final training losses (moving averages): " + ", ".join(f"{k} {v:.4f}" for k, v in fl.items() if k in ("fusion", "focus", "exposure", "rec")) + ".",
        "",
    ]


TITLES = {
    "roadscene": "RoadScene (IR / visible), held-out: sorted index % 5 == 0",
    "msrs": "MSRS test (IR / visible), the test split of split.csv",
    "mri_ct": "MRI / CT, held-out: sorted index % 5 == 0",
    "mri_pet": "MRI / PET (Y), held-out: sorted index % 5 == 0",
    "pan_ms": "PAN / MS intensity, all four scenes (no PAN/MS data in the shipped weights' training)",
}


def write_report(args, speed: list[list], info: dict, means: list[list], dev_line: str) -> None:
    out = Path(args.out)
    lines = [
        "# GIFNet: speed, linear cost and quality next to the authors' model",
        "",
        "Written by `python benchmarks/gifnet_vs_reference.py` (see its docstring); do not edit by hand.",
        f"Command: `{' '.join(['python benchmarks/gifnet_vs_reference.py', *args.argv])}`.",
        f"Measured: {dev_line}.",
        f"Machine: {os.cpu_count()} CPU cores, shared with other jobs; load average (1 min) {args.load[0]:.1f} at the start,"
        f" {os.getloadavg()[0]:.1f} at the end.",
        "",
    ]
    if speed:
        lines += [
            "## Speed (ms per fused pair)",
            "",
            "Unit gray images, median after a warm-up, without file I/O or colour conversion. `engine`:",
            "`engine.pipeline.fuse_unit` (what every fusion call of the widget, API and CLI runs: on the CPU,",
            f"planes larger than {PREFERRED_TILE_FACTOR:g} x {info.get('preferred_tile')}x{info.get('preferred_tile')} pixels go through"
            " exact halo'd tiles of that side); `one pass`: `runner.fuse` on the whole",
            "image. ms/MP: cost per megapixel (constant = linear in pixels).",
            f"Our model: {info.get('parameters', 0):,} parameters, {info.get('macs', float('nan')) / 1e3:.1f} k multiply-accumulates per pixel,",
            f"receptive radius (tiling halo) {info.get('halo')} px. Reference: {REFERENCE['name']},",
            f"{REFERENCE['parameters']:,} parameters, window attention; {REFERENCE['note']}.",
            "",
        ]
        rows = [[f"ours ({r[0]})", r[1], r[2], r[3], r[4], r[6], r[7], r[8]] for r in speed]
        rows += [["reference (cpu)", "one pass", k, v, None, v / (int(k.split('x')[0]) * int(k.split('x')[1]) / 1e6), v, 1.0]
                 for k, v in REFERENCE["cpu_ms"].items()]
        lines.append(markdown_table(
            ["model", "path", "size", "ms median", "ms min", "ms / MP", "reference ms", "speed-up"], rows,
            digits=[0, 0, 0, 1, 1, 0, 0, 1]))
        lines.append("")
        lines.append("Speed-up: reference ms / our median ms. Linearity (ms/MP of the median, smallest to largest size):")
        for key in dict.fromkeys((r[0], r[1]) for r in speed):
            rs = [r for r in speed if (r[0], r[1]) == key]
            lines.append(f"- ours ({key[0]}, {key[1]}): " + " -> ".join(f"{r[6]:.0f} ({r[2]})" for r in rs)
                         + (f"; largest / smallest size {rs[-1][6] / rs[0][6]:.2f}x" if len(rs) > 1 else ""))
        lines.append("")
    if means:
        lines += [
            "## Quality on held-out pairs",
            "",
            "Means over the held-out pairs of each dataset (never used in training); metrics on 8-bit gray/Y,",
            "conventions of `napari_fusion/metrics/fusion.py` (MI, VIF, SSIM, SCD sum both source terms).",
            "Pairs are fused through `engine.pipeline.fuse_arrays` (intensity scaling, colour via Y).",
            "",
        ]
        for ds in args.datasets:
            rows = [[r[1], r[2]] + r[3:] for r in means if r[0] == ds]
            if not rows:
                continue
            lines += [f"### {TITLES.get(ds, ds)}", "", markdown_table(["method", "pairs", *METRICS], rows, digits=[0, 0] + [3] * len(METRICS), bold_max=range(2, 2 + len(METRICS))), ""]
        qa = {(r[0], r[1]): (r[3 + METRICS.index("Qabf")], r[3 + METRICS.index("VIF")]) for r in means}
        ref_rows = []
        for ds in args.datasets:
            if (ds, "reference") in qa and (ds, "gifnet") in qa:
                (qg, vg), (qr, vr) = qa[(ds, "gifnet")], qa[(ds, "reference")]
                n = next(r[2] for r in means if r[0] == ds and r[1] == "reference")
                ref_rows.append([ds, n, qg, qr, vg, vr, "yes" if qg >= qr and vg >= vr else "no"])
        if ref_rows:
            lines += ["### gifnet vs the authors' model (their fused images from `--reference-dir`)", "",
                      "On the held-out pairs for which a reference image was given (the gifnet means in this",
                      "table are over all held-out pairs of the dataset; give every pair for a like-for-like mean).", "",
                      markdown_table(["dataset", "reference pairs", "Qabf gifnet", "Qabf reference", "VIF gifnet",
                                      "VIF reference", "gifnet equal or better on both"], ref_rows), ""]
        summary = []
        for ds in args.datasets:
            if (ds, "gifnet") not in qa:
                continue
            g = qa[(ds, "gifnet")]
            base = [qa.get((ds, m), (None, None)) for m in ("average", "laplacian", "max")]
            summary.append([ds, g[0], *[b[0] for b in base], g[1], *[b[1] for b in base]])
        lines += ["### Summary: Qabf and VIF of gifnet vs the baselines", "",
                  markdown_table(["dataset", "Qabf gifnet", "Qabf average", "Qabf laplacian", "Qabf max",
                                  "VIF gifnet", "VIF average", "VIF laplacian", "VIF max"], summary), ""]
        verdict = []
        for ds, qg, qav, qlap, qmax, vg, vav, vlap, vmax in summary:
            beaten = [m for m, q, v in (("average", qav, vav), ("laplacian", qlap, vlap), ("max", qmax, vmax))
                      if q is not None and qg >= q and vg >= v]
            verdict.append(f"- {ds}: gifnet has equal or better Qabf *and* VIF than "
                           + (", ".join(beaten) if beaten else "none of the baselines") + ".")
        lines += verdict + [""]
    lines += training_section(args.weights)
    lines += [NOTES.strip(), ""]
    write_text(out.with_suffix(".md"), "\n".join(lines))
    if speed:
        write_csv(out.parent / (out.name + "_speed.csv"),
                  ["device", "path", "size", "ms_median", "ms_min", "ms_max", "ms_per_megapixel", "reference_ms", "speedup", "repeats"], speed)
    if means:
        write_csv(out.parent / (out.name + "_quality.csv"), ["dataset", "method", "pairs", *METRICS], means)
    print_flush(f"wrote {out.with_suffix('.md')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="a GIFNet model file (default: the shipped weights)")
    ap.add_argument("--device", default="auto", help="auto (CPU, plus CUDA when present) | cpu | cuda")
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 256), (480, 640), (960, 1280), (1920, 2560)])
    ap.add_argument("--paths", nargs="+", choices=tuple(PATHS), default=list(PATHS),
                    help="engine: fuse_unit with automatic tiles; one pass: runner.fuse on the whole image")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (quality, and speed unless --speed-threads)")
    ap.add_argument("--speed-threads", type=int, nargs="+", default=None, metavar="N",
                    help="torch CPU thread counts to time the CPU at, one table row set each (default: --threads)")
    ap.add_argument("--datasets", nargs="+", default=list(QUALITY_DATASETS), choices=QUALITY_DATASETS)
    ap.add_argument("--limit", type=int, default=None, help="held-out pairs per dataset (default: all)")
    ap.add_argument("--reference-dir", default=None, metavar="DIR",
                    help="the authors' fused images of the held-out pairs, DIR/<dataset>/<pair name>.png (or .tif/.jpg), "
                         "scored next to ours as method 'reference'")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "gifnet"), help="output stem: STEM.md, STEM_speed.csv, STEM_quality.csv")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.load = os.getloadavg()

    import torch

    args.speed_threads = args.speed_threads or [args.threads]
    torch.set_num_threads(args.threads)
    dev_line = environment(resolve_device(args.device)).replace(
        f"{args.threads} CPU threads",
        f"{args.threads} CPU thread{'s' if args.threads > 1 else ''} for quality, "
        f"{' and '.join(map(str, args.speed_threads))} for speed")
    print_flush(dev_line)
    speed, info = ([], {}) if args.skip_speed else speed_rows(args)
    means: list[list] = []
    if not args.skip_quality:
        means, _ = quality_rows(args)
    write_report(args, speed, info, means, dev_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
