"""MultiTaskVIF (one network, one pass) vs TDFusion's cascade (fusion net + separate segmenter) on BraTS.

On the held-out BraTS test cases, through the public API as a user opens them (the NIfTI volumes
given to ``napari_fusion.fuse(..., full=True)``; FLAIR = A, T1c = B; see ``benchmarks/_brats.py``), for ``multitaskvif`` and ``tdfusion-brats`` (both from the registry, or model
files given with ``--multitask`` / ``--cascade``):

- segmentation: per-class IoU and Dice pooled over every test slice (``metrics.segmentation_metrics``),
  the mean Dice over the four tumour classes, and the BraTS regions whole tumour (labels 1-4), tumour
  core (1, 3, 4) and enhancing tumour (4);
- fusion quality: ``metrics.fusion_metrics`` (EN, SD, SF, AG, MI, VIF, Qabf, SSIM, SCD on 0..255) averaged
  over every ``--metric-every``-th test slice, with the classical ``max`` and ``average`` for reference;
- fine-tuning MultiTaskVIF from scripted strokes (~1 % of the pixels): on one BraTS test slice, Dice
  on the other test slices before and after; on an MSRS infrared/visible test pair, accuracy on a
  held-out fifth of the strokes before and after (seconds on the CPU stated);
- cost: parameters used at inference (and in training: TDFusion also trains a loss generation
  module), multiply-accumulates of one pass (``torch.utils.flop_counter``), and milliseconds per
  pass (fused image + labels) at 240x240 and 480x640: median of ``--repeats`` interleaved runs after a
  warm-up, CPU with ``--threads`` threads, and CUDA when available.

Writes ``docs/results/multitask.md`` and ``.csv`` atomically::

    python benchmarks/multitask_vs_cascade.py                        # CPU (+ CUDA when present)
    python benchmarks/multitask_vs_cascade.py --device cuda --repeats 50
    python benchmarks/multitask_vs_cascade.py --limit 40 --out /tmp/mt   # a quick look
    python benchmarks/multitask_vs_cascade.py --gpu-section-only           # refresh only the GPU table

The GPU table ("Measured earlier on an NVIDIA H200") is read from ``benchmarks/speed.py`` CSV files
(``--gpu-speed``, default ``docs/results/h200/speed_cuda_*.csv``): timings of ``runner.fuse`` taken in a
GPU session lent to the project, kept as files because this machine has no GPU.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, markdown_table, print_flush, write_csv, write_text

SIZES = ((240, 240), (480, 640))
REGIONS = {"whole tumour": (1, 2, 3, 4), "tumour core": (1, 3, 4), "enhancing tumour": (4,)}
FUSION_METRICS = ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM", "SCD")


def _runner(name: str, path: str | None, device: str):
    from napari_fusion.methods.registry import build_runner, runner_from_file

    return runner_from_file(path, device=device) if path else build_runner(name, device=device, cache=False)


def _region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    out = {}
    for name, cls in REGIONS.items():
        p, t = np.isin(pred, cls), np.isin(truth, cls)
        denom = p.sum() + t.sum()
        out[name] = float(2 * np.logical_and(p, t).sum() / denom) if denom else float("nan")
    return out


def _cascade_parameters(runner) -> tuple[int, int]:
    """(inference, training) parameters of a TDFusion runner: fusion + segmenter, + loss module."""
    from napari_fusion.methods.torch_runner import count_parameters

    inference = count_parameters([runner.fusion, runner.segmenter])
    return inference, count_parameters(runner.modules.values())


def _macs(fn, h: int, w: int) -> float:
    """Multiply-accumulates of one call of ``fn(a, b)`` on (1,1,h,w) CPU tensors (FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    a = torch.rand(1, 1, h, w)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn(a, a)
    return fc.get_total_flops() / 2.0


def _pass_fns(mt, td):
    """torch-level one-pass functions (padding included as the runners do it)."""
    import torch.nn.functional as F

    def mt_pass(a, b):
        ph, pw = (-a.shape[-2]) % 8, (-a.shape[-1]) % 8
        a, b = F.pad(a, (0, pw, 0, ph)), F.pad(b, (0, pw, 0, ph))
        return mt.net(a, b)

    def td_pass(a, b):
        f = td.fusion(a, b)
        ph, pw = (-a.shape[-2]) % 8, (-a.shape[-1]) % 8
        return f, td.segmenter(F.pad(f, (0, pw, 0, ph)))

    return mt_pass, td_pass


def _time(runners: dict, size: tuple[int, int], repeats: int, warmup: int, sync) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    a = np.clip(0.5 + 0.3 * np.sin(xx / 9) * np.cos(yy / 13) + rng.normal(0, 0.05, (h, w)), 0, 1).astype(np.float32)
    b = np.clip((((xx // 32) + (yy // 32)) % 2) * 0.6 + 0.2 + rng.normal(0, 0.05, (h, w)), 0, 1).astype(np.float32)
    from napari_fusion import fuse

    dev = str(next(iter(runners.values())).device)
    for r in runners.values():
        for _ in range(warmup):
            fuse(a, b, r, full=True, device=dev)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):  # interleaved, so a load change on a shared machine hits both alike
        for k, r in runners.items():
            sync()
            t0 = time.perf_counter()
            fuse(a, b, r, full=True, device=dev)
            sync()
            times[k].append(1000 * (time.perf_counter() - t0))
    return times


def _strokes(truth: np.ndarray, rng: np.random.Generator, classes, per_class: int, length: int, bg_value: int) -> np.ndarray:
    """Scripted 'user' strokes: short horizontal runs inside each class region (0 = unpainted)."""
    out = np.zeros(truth.shape, np.int64)
    for c in classes:
        ys, xs = np.nonzero(truth == c)
        if len(ys) == 0:
            continue
        for _ in range(per_class):
            j = rng.integers(len(ys))
            seg = slice(max(0, xs[j] - length // 2), xs[j] + length // 2)
            inside = truth[ys[j], seg] == c
            out[ys[j], seg][inside] = c if c > 0 else bg_value
    return out


def _finetune(runner, a, b, strokes, steps: int, lr: float, **kw):
    """``napari_fusion.finetune`` (the public API) on one pair; (tuned runner, seconds)."""
    from napari_fusion import finetune

    t0 = time.perf_counter()
    tuned = finetune(runner, a, b, strokes, steps=steps, lr=lr, device="cpu", **kw)
    return tuned, time.perf_counter() - t0


def _labels(runner, a, b) -> np.ndarray:
    """Labels of one 2-D pair through ``napari_fusion.fuse(..., full=True)``."""
    from napari_fusion import fuse

    return fuse(a, b, runner, full=True, device="cpu").labels


def _finetune_brats(mt, a, b, truth, case, steps: int, lr: float) -> tuple[list, list, str]:
    """Strokes (~1 % of pixels) on the test slice with the most tumour -> Dice on the other test slices."""
    from napari_fusion.metrics import segmentation_metrics
    from napari_fusion.methods.classes import BRATS_CLASSES

    names = [c[1] for c in BRATS_CLASSES]
    k = int(np.argmax((truth > 0).reshape(len(truth), -1).sum(1)))
    rng = np.random.default_rng(0)
    strokes = _strokes(truth[k], rng, range(5), per_class=5, length=24, bg_value=5)
    painted = float((strokes > 0).mean())
    rest = np.array([i for i in range(len(a)) if i != k])
    rows, csv_rows = [], []
    tuned, secs = _finetune(mt, a[k], b[k], strokes, steps, lr, background_value=5)
    for label, r in (("before (shipped)", mt), (f"after {steps} steps", tuned)):
        pred = np.stack([_labels(r, a[i], b[i]) for i in rest])
        m = segmentation_metrics(pred, truth[rest], n_classes=5, class_names=names)
        reg = _region_dice(pred, truth[rest])
        tumour = [m[f"Dice/{n}"] for n in names[1:] if math.isfinite(m[f"Dice/{n}"])]
        rows.append([label] + [m[f"Dice/{n}"] for n in names[1:]] + [float(np.mean(tumour)), reg["whole tumour"]])
        csv_rows += [["finetune brats", label, f"Dice/{n}", m[f"Dice/{n}"]] for n in names] + [
            ["finetune brats", label, "Dice/mean tumour classes", float(np.mean(tumour))]
        ]
    note = (f"strokes on test slice {k} (case {int(case[k])}): {int((strokes > 0).sum())} pixels "
            f"({100 * painted:.2f} %), classes {sorted(set(np.unique(strokes).tolist()) - {0})} (5 = background); "
            f"{steps} steps, lr {lr:g}, {secs:.1f} s on the CPU; Dice pooled over the other {len(rest)} test slices")
    return rows, csv_rows, note


def _finetune_ivif(mt, steps: int, lr: float) -> tuple[list, list, str]:
    """Strokes on an MSRS test pair (hot objects = 1, cool background = 2), a fifth held out -> accuracy."""
    from _common import iter_pairs

    pair = next(iter_pairs("msrs", limit=1))
    a, b = pair.a, pair.b  # uint8 gray, given to the API as they are
    hot = a >= np.percentile(a, 97)
    cool = a <= np.percentile(a, 50)
    region = np.where(hot, 1, np.where(cool, 2, 0))
    rng = np.random.default_rng(0)
    strokes = np.zeros(a.shape, np.int64)
    stroke_id = np.zeros(a.shape, np.int64)
    sid = 0
    while (strokes > 0).mean() < 0.01:  # ~1 % of pixels, strokes of up to 30 pixels
        c = 1 + int(rng.integers(2))
        ys, xs = np.nonzero(region == c)
        j = rng.integers(len(ys))
        seg = slice(max(0, xs[j] - 15), xs[j] + 15)
        inside = (region[ys[j], seg] == c) & (strokes[ys[j], seg] == 0)
        sid += 1
        strokes[ys[j], seg][inside] = c
        stroke_id[ys[j], seg][inside] = sid
    held = np.isin(stroke_id, rng.choice(np.arange(1, sid + 1), size=max(1, sid // 5), replace=False))
    train = np.where(held, 0, strokes)
    tuned, secs = _finetune(mt, a, b, train, steps, lr, class_names={1: "hot object", 2: "cool background"})
    rows, csv_rows = [], []
    for label, r in (("before (shipped)", mt), (f"after {steps} steps", tuned)):
        pred = _labels(r, a, b)
        acc = float((pred[held] == strokes[held]).mean())
        acc_train = float((pred[train > 0] == train[train > 0]).mean())
        rows.append([label, acc_train, acc])
        csv_rows += [["finetune msrs", label, "accuracy painted", acc_train], ["finetune msrs", label, "accuracy held out", acc]]
    note = (f"MSRS test pair {pair.name} ({a.shape[0]}x{a.shape[1]}), {sid} strokes, {int((strokes > 0).sum())} pixels "
            f"({100 * (strokes > 0).mean():.2f} %); {int(held.sum())} pixels of {max(1, sid // 5)} whole strokes held out; "
            f"{steps} steps, lr {lr:g}, {secs:.1f} s on the CPU")
    return rows, csv_rows, note


GPU_SECTION = "## Measured earlier on an NVIDIA H200"
GPU_SPEED_DEFAULT = ("h200/speed_cuda_multitaskvif.csv", "h200/speed_cuda_tdfusion.csv")


def _gpu_section(paths) -> str:
    """Markdown section from ``benchmarks/speed.py`` CSVs: rows of multitaskvif and tdfusion-brats."""
    import csv

    rows, sources = [], []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        with path.open(newline="") as fh:
            got = [r for r in csv.DictReader(fh) if r["method"] in ("multitaskvif", "tdfusion-brats", "tdfusion")]
        if got:
            sources.append(f"`{path.relative_to(RESULTS.parent.parent) if path.is_relative_to(RESULTS.parent.parent) else path}` "
                           f"(measured {got[0]['measured']})")
        rows += got
    if not rows:
        return ""
    sizes = sorted({r["size"] for r in rows}, key=lambda s: [int(x) for x in s.split("x")])
    table = []
    for m in ("multitaskvif", "tdfusion-brats", "tdfusion"):
        mine = {r["size"]: r for r in rows if r["method"] == m}
        if mine:
            any_r = next(iter(mine.values()))
            table.append([m, any_r["device"], int(any_r["parameters"])] + [float(mine[s]["ms_median"]) if s in mine else float("nan") for s in sizes])
    return f"""
{GPU_SECTION}

**Not measured by this run** and not on this machine: `benchmarks/speed.py` on an NVIDIA H200 (torch
2.11.0+cu130, 2 CPU threads) in a GPU session lent to the project; median of 5 `runner.fuse(a, b)` calls
after warm-up. Sources: {"; ".join(sources)}. `runner.fuse` gives the fused image only: for
`multitaskvif` it runs the shared encoder and the fusion path (the segmentation path is skipped), for
`tdfusion-brats` the fusion net only (its segmenter is not run), so these are **fusion-only** times,
not the full one-pass (image + labels) cost of the CPU table above. `parameters` is what `speed.py`
counted then: every module of the model file (for `tdfusion-brats` fusion net + loss module + segmenter,
for `tdfusion` fusion net + loss module), with the code of that time; later commits added stem biases
and a segmenter input layer (a few hundred parameters, the same cost). `tdfusion` (the
infrared/visible model, same fusion net) is listed for reference.

{markdown_table(["method", "device", "parameters"] + [f"ms {s}" for s in sizes], table, digits=[0, 0, 0] + [2] * len(sizes))}
"""


def _replace_gpu_section(text: str, section: str) -> str:
    i = text.find(GPU_SECTION)
    if i >= 0:
        j = text.find("\n## ", i + len(GPU_SECTION))
        text = text[:i].rstrip("\n") + "\n" + (text[j:] if j >= 0 else "")
    return text.rstrip("\n") + "\n" + section


def _training_note(runner) -> str:
    t = runner.meta.get("training") or {}
    if not t:
        return "no training record"
    return f"{t.get('steps', '?')} steps, {t.get('seconds', '?')} s on {t.get('device', '?')} (batch {t.get('batch', '?')}, crop {t.get('crop', '?')})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--multitask", default=None, help="MultiTaskVIF model file (default: the registered multitaskvif)")
    ap.add_argument("--cascade", default=None, help="TDFusion model file with a segmenter (default: tdfusion-brats)")
    ap.add_argument("--device", default="auto", help="timings on the CPU always, and on this device when it is a GPU")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--limit", type=int, default=0, help="use only this many test slices, evenly spaced (0: all)")
    ap.add_argument("--metric-every", type=int, default=4, help="fusion metrics on every k-th test slice")
    ap.add_argument("--no-single-slice", action="store_true", help="skip the row of MultiTaskVIF given one slice at a time")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--finetune-steps", type=int, default=60, help="fine-tuning steps from strokes (0: skip that section)")
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--out", default=str(RESULTS / "multitask"), help="output stem (.md and .csv are written)")
    ap.add_argument("--gpu-speed", nargs="*", default=[str(RESULTS / p) for p in GPU_SPEED_DEFAULT],
                    help="benchmarks/speed.py CSVs measured on a GPU elsewhere, shown in their own section")
    ap.add_argument("--gpu-section-only", action="store_true",
                    help="only (re)write the GPU section of an existing OUT.md; nothing is measured")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.gpu_section_only:
        md = out.with_suffix(".md")
        write_text(md, _replace_gpu_section(md.read_text(encoding="utf-8"), _gpu_section(args.gpu_speed)))
        print_flush(f"rewrote the GPU section of {md}")
        return 0

    import torch

    from _brats import case_index, run_split, test_cases
    from napari_fusion.methods.classical import fuse_average, fuse_max
    from napari_fusion.metrics import fusion_metrics, segmentation_metrics
    from napari_fusion.methods.classes import BRATS_CLASSES

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    n_cases = len(test_cases())
    mt = _runner("multitaskvif", args.multitask, "cpu")
    td = _runner("tdfusion-brats", args.cascade, "cpu")
    if not getattr(td, "has_segmenter", False):
        raise SystemExit("the cascade model has no segmenter; pass a tdfusion-brats model file with --cascade")
    names = {"MultiTaskVIF": mt, "TDFusion cascade": td}

    # ---------------------------------------------------------------- segmentation + fusion quality
    # through the public API: napari_fusion.fuse(flair.nii.gz, t1c.nii.gz, model, full=True), whole volumes
    class_names = [c[1] for c in BRATS_CLASSES]
    seg_rows, fus_rows, csv_rows = [], [], []
    fused_by: dict[str, np.ndarray] = {}
    results = {}
    for label, r in names.items():
        t0 = time.perf_counter()
        results[label] = run_split(r, "cpu")
        print_flush(f"{label}: {n_cases} test volumes fused + segmented through the API in {time.perf_counter() - t0:.1f} s")
    if not args.no_single_slice:
        t0 = time.perf_counter()
        results["MultiTaskVIF, each slice alone"] = run_split(mt, "cpu", single_slice=True)
        print_flush(f"MultiTaskVIF slice by slice through the API in {time.perf_counter() - t0:.1f} s")
    first = results["MultiTaskVIF"]
    idx = np.arange(len(first.z))
    if args.limit:
        idx = np.linspace(0, len(idx) - 1, min(args.limit, len(idx))).round().astype(int)
    a, b, truth = first.a[idx], first.b[idx], first.truth[idx]
    raw_a, raw_b = first.raw_a[idx], first.raw_b[idx]
    for label, res in results.items():
        pred = res.labels[idx]
        if label in names:
            fused_by[label] = res.fused[idx]
        m = segmentation_metrics(pred, truth, n_classes=5, class_names=class_names)
        reg = _region_dice(pred, truth)
        tumour = [m[f"Dice/{n}"] for n in class_names[1:] if math.isfinite(m[f"Dice/{n}"])]
        seg_rows.append(
            [label] + [m[f"Dice/{n}"] for n in class_names] + [float(np.mean(tumour))] + [reg[k] for k in REGIONS]
            + [m[f"IoU/{n}"] for n in class_names[1:]] + [m["mIoU"]]
        )
        for k, v in list(m.items()) + [(f"Dice/{k}", v) for k, v in reg.items()] + [("Dice/mean tumour classes", float(np.mean(tumour)))]:
            csv_rows.append(["segmentation", label, k, v])
    fused_by["max (classical)"] = np.stack([fuse_max(x, y) for x, y in zip(a, b)])
    fused_by["average (classical)"] = np.stack([fuse_average(x, y) for x, y in zip(a, b)])
    pick = np.arange(0, len(a), max(1, args.metric_every))
    u8 = lambda x: np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)  # noqa: E731
    for label, fused in fused_by.items():
        vals = {k: [] for k in FUSION_METRICS}
        for i in pick:
            for k, v in fusion_metrics(u8(fused[i]), u8(a[i]), u8(b[i])).items():
                vals[k].append(v)
        means = [float(np.nanmean(vals[k])) for k in FUSION_METRICS]
        fus_rows.append([label] + means)
        csv_rows += [["fusion", label, k, v] for k, v in zip(FUSION_METRICS, means)]
        print_flush(f"fusion metrics {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in zip(FUSION_METRICS, means)))

    # ---------------------------------------------------------------- cost
    mt_pass, td_pass = _pass_fns(mt, td)
    td_inf, td_train = _cascade_parameters(td)
    mt_params = mt.n_parameters
    macs = {label: [_macs(fn, h, w) for h, w in SIZES] for label, fn in (("MultiTaskVIF", mt_pass), ("TDFusion cascade", td_pass))}
    devices = ["cpu"]
    want = args.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and torch.cuda.is_available():
        devices.append(want)
    cost_rows = []
    ms: dict[tuple[str, str, tuple[int, int]], float] = {}
    for dev in devices:
        for r in names.values():
            r.to(dev)
        sync = (lambda: torch.cuda.synchronize()) if dev.startswith("cuda") else (lambda: None)
        for size in SIZES:
            times = _time(names, size, args.repeats, args.warmup, sync)
            for label, t in times.items():
                ms[(label, dev, size)] = statistics.median(t)
                csv_rows.append(["ms", label, f"{dev} {size[0]}x{size[1]} median", statistics.median(t)])
                csv_rows.append(["ms", label, f"{dev} {size[0]}x{size[1]} min", min(t)])
            print_flush(f"{dev} {size}: " + ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in times.items()))
    for label, (inf, train) in (("MultiTaskVIF", (mt_params, mt_params)), ("TDFusion cascade", (td_inf, td_train))):
        row = [label, inf, train] + [macs[label][i] / 1e9 for i in range(len(SIZES))]
        for dev in devices:
            row += [ms[(label, dev, s)] for s in SIZES]
        cost_rows.append(row)
        csv_rows += [["cost", label, "parameters (inference)", inf], ["cost", label, "parameters (training)", train]]
        csv_rows += [["cost", label, f"GMAC {h}x{w}", macs[label][i] / 1e9] for i, (h, w) in enumerate(SIZES)]

    # ---------------------------------------------------------------- fine-tuning from strokes (CPU)
    ft_text = ""
    if args.finetune_steps:
        for r in names.values():
            r.to("cpu")
        brows, bcsv, bnote = _finetune_brats(mt, raw_a, raw_b, truth, case_index()[idx], args.finetune_steps, args.finetune_lr)
        print_flush("fine-tuning on BraTS strokes: " + bnote)
        irows, icsv, inote = _finetune_ivif(mt, args.finetune_steps, args.finetune_lr)
        print_flush("fine-tuning on MSRS strokes: " + inote)
        csv_rows += bcsv + icsv
        ft_text = f"""
## Fine-tuning MultiTaskVIF from painted strokes (joint loss on painted pixels)

BraTS: {bnote}.

{markdown_table(["MultiTaskVIF"] + [f"Dice {n}" for n in class_names[1:]] + ["mean Dice tumour classes", "Dice whole tumour"], brows, digits=3)}

Infrared/visible (no ground truth exists; the BraTS model's classes 1 and 2 are re-taught as "hot
object" and "cool background"): {inote}.

{markdown_table(["MultiTaskVIF", "accuracy on the painted pixels", "accuracy on held-out stroke pixels"], irows, digits=3)}
"""

    # ---------------------------------------------------------------- write
    write_csv(out.with_suffix(".csv"), ["section", "model", "quantity", "value"], csv_rows)
    seg_headers = (["model"] + [f"Dice {n}" for n in class_names] + ["mean Dice tumour classes"]
                   + [f"Dice {k}" for k in REGIONS] + [f"IoU {n}" for n in class_names[1:]] + ["mIoU"])
    cost_headers = ["model", "parameters (inference)", "parameters (training)"] + [f"GMAC {h}x{w}" for h, w in SIZES]
    for dev in devices:
        cost_headers += [f"ms {dev} {h}x{w}" for h, w in SIZES]
    mt_seg, td_seg = seg_rows[0], seg_rows[1]
    k_mean = 1 + len(class_names)
    verdict = []
    verdict.append(
        f"- parameters at inference: MultiTaskVIF {mt_params:,} vs cascade {td_inf:,} "
        f"({mt_params / td_inf:.2f}x); compute per 240x240 pass {macs['MultiTaskVIF'][0] / 1e9:.2f} vs "
        f"{macs['TDFusion cascade'][0] / 1e9:.2f} GMAC ({macs['MultiTaskVIF'][0] / macs['TDFusion cascade'][0]:.2f}x)"
    )
    for dev in devices:
        verdict.append(
            f"- time per pass on {dev}: " + ", ".join(
                f"{h}x{w} {ms[('MultiTaskVIF', dev, (h, w))]:.1f} vs {ms[('TDFusion cascade', dev, (h, w))]:.1f} ms"
                for h, w in SIZES
            )
        )
    better = mt_seg[k_mean] >= td_seg[k_mean]
    verdict.append(
        f"- segmentation: mean Dice over the tumour classes {mt_seg[k_mean]:.3f} (MultiTaskVIF) vs "
        f"{td_seg[k_mean]:.3f} (cascade): {'equal or better' if better else 'worse'}; whole tumour "
        f"{mt_seg[k_mean + 1]:.3f} vs {td_seg[k_mean + 1]:.3f}"
    )
    holds = better and mt_params < td_inf and macs["MultiTaskVIF"][0] < macs["TDFusion cascade"][0]
    text = f"""# MultiTaskVIF vs TDFusion's cascade on the BraTS test cases

Written by `python benchmarks/multitask_vs_cascade.py {" ".join(sys.argv[1:] if argv is None else argv)}`
({environment(devices[-1])}). Rerun it rather than editing this file.

Data: the {n_cases} held-out BraTS 2015 test cases (`labeled/BraTS2015_deepmedic/test`) **through the
public API**, as a user opens them: `napari_fusion.fuse("flair.nii.gz", "t1c.nii.gz", model, full=True)`
on the whole volumes (FLAIR = A, T1c = B; each model maps intensities as recorded in its file),
scored on the {len(a)} axial slices with at least 8 % brain. The row "each slice alone" gives the
API one 2-D slice at a time (intensities mapped from that slice only, as for an exported slice).
Fusion metrics: on the sources and fused images as the models saw them (unit, then 0..255).
Models: `multitaskvif` ({_training_note(mt)}) and `tdfusion-brats` ({_training_note(td)}).

**The paper's claim** (fewer parameters and less compute than a fusion net + separate segmenter, at
equal or better segmentation) **{'holds' if holds else 'does not fully hold'} for these weights:**

{chr(10).join(verdict)}

## Segmentation (pooled over all test slices)

{markdown_table(seg_headers, seg_rows, digits=3, bold_max=range(1, len(seg_headers)))}

## Fusion quality (mean over every {args.metric_every}th test slice, {len(pick)} slices; 0..255)

{markdown_table(["fused by"] + list(FUSION_METRICS), fus_rows, digits=3, bold_max=range(1, 1 + len(FUSION_METRICS)))}

## Cost of one pass (fused image + labels)

{markdown_table(cost_headers, cost_rows, digits=[0, 0, 0] + [2] * len(SIZES) + [1] * (len(cost_headers) - 3 - len(SIZES)))}

Parameters (training) counts what is optimised: TDFusion's loss generation module is trained but
not run at inference. GMAC: multiply-accumulates counted by `torch.utils.flop_counter` (convolutions
and matrix products; norms and activations excluded), independent of the machine. Milliseconds:
median of {args.repeats} interleaved runs after {args.warmup} warm-up runs of
`napari_fusion.fuse(a, b, model, full=True)` (the public API: intensity mapping, padding, labels
included), {args.threads} CPU threads. Best value per column in bold (higher is
better for every metric here); on a shared, loaded machine the
absolute numbers vary between runs, their ratio much less.
{ft_text}"""
    text = _replace_gpu_section(text, _gpu_section(args.gpu_speed))
    write_text(out.with_suffix(".md"), text)
    print_flush(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
