"""Does the task-driven fused image segment best? BraTS test cases, Dice/IoU per tumour class.

For a fair comparison the SAME segmenter architecture (methods/segmenter.py) is trained with the SAME
budget (steps, crops, batch, seed, class weights) on each input:

- ``tdfusion``: slices fused by the shipped ``tdfusion-brats`` model through ``napari_fusion.fuse``
  on the cases' NIfTI files (``_brats.run_split``: whole volumes, the model's input mapping),
- ``flair`` alone, ``t1c`` alone (as that call mapped them),
- ``average``: the mean of FLAIR and T1c,

on the BraTS train + validation cases, and measured on the 2 test cases (pooled confusion over all
kept test slices). The shipped model's own labels from the same ``fuse`` call are reported too. Also: ms per 480x640 pair for the fusion net on this machine.

    python benchmarks/tdfusion_brats.py --steps 300 --device cpu
    python benchmarks/tdfusion_brats.py --threads 1 --steps 400 --stride 3 --train-stride 2 \
        --fused-cache /tmp/tdfusion_brats_fused.npz     # a 2-core CPU, < 20 min
writes docs/results/tdfusion_brats.md (and prints the table). ``--fused-cache`` keeps the fused slices
(keyed by the model file's hash and the strides), so a rerun with another segmenter budget skips the
slow part (the fusion net takes ~1.5 s per 240x240 slice on one loaded CPU thread).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_fusion.methods import registry
from napari_fusion.methods.torch_runner import resolve_torch_device
from napari_fusion.methods.segmenter import Segmenter
from napari_fusion.metrics import confusion_matrix, per_class_scores
from napari_fusion.methods.classes import BRATS_CLASSES
from napari_fusion.training.losses import class_weights_from_counts
from napari_fusion.training.samplers import BratsSampler
from napari_fusion.training.tdfusion import segmenter_step

ROOT = Path(__file__).resolve().parents[1]
NAMES = [c[1] for c in BRATS_CLASSES]


def train_segmenter(images: np.ndarray, labels: np.ndarray, steps: int, crop: int, batch: int, seed: int, device) -> Segmenter:
    """The benchmark's segmenter: fixed architecture, budget and seed; only the input differs."""
    torch.manual_seed(seed)
    seg = Segmenter(len(BRATS_CLASSES)).to(device)
    opt = torch.optim.Adam(seg.parameters(), lr=1e-3)
    sampler = BratsSampler(images, images, labels, crop, seed=seed)  # same crops for every input
    cw = class_weights_from_counts(sampler.class_counts(5)).to(device)
    ident = torch.nn.Identity()
    for _ in range(steps):
        x, _, lab = sampler.batch(batch)
        x, lab = x.to(device), lab.to(device)
        segmenter_step(ident, seg, x, x, lab, opt, class_weights=cw, fused=x)
    return seg.eval()


@torch.no_grad()
def predict(seg: Segmenter, images: np.ndarray, device, chunk: int = 8) -> np.ndarray:
    out = np.empty(images.shape, np.int32)
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i : i + chunk, None]).to(device)
        out[i : i + chunk] = seg(x).argmax(1).cpu().numpy()
    return out


def _file_sha(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path and Path(path).is_file() else "none"


def api_slices(method, weights_path, strides, device: str, cache: str | None) -> tuple[dict, dict]:
    """Train (train + validation cases) and test slices through the public API: each case's NIfTI
    volumes fused whole by ``napari_fusion.fuse(flair, t1c, method, full=True)`` (``_brats.run_split``),
    FLAIR/T1c/fused as the method saw them (unit, its input mapping), ground truth, the model's own
    labels; every ``strides[0]``-th training slice and ``strides[1]``-th test slice. Cached in ``cache``
    (keyed by the model file's hash and the strides)."""
    from _brats import run_split

    key = f"api-{_file_sha(weights_path)}-{strides[0]}-{strides[1]}"
    if cache and Path(cache).is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                print(f"fused slices from {cache}", flush=True)
                return ({k[3:]: z[k] for k in z.files if k.startswith("tr_")}, {k[3:]: z[k] for k in z.files if k.startswith("te_")})
    t = time.time()
    parts = [run_split(method, device, split=sp) for sp in ("train", "validation")]
    keys = {"a": "a", "b": "b", "fused": "fused", "truth": "labels", "labels": "model_labels"}  # CaseResult -> ours
    tr = {ours: np.concatenate([getattr(p, k) for p in parts])[:: strides[0]] for k, ours in keys.items()}
    res = run_split(method, device, split="test")
    te = {ours: getattr(res, k)[:: strides[1]] for k, ours in keys.items()}
    print(f"fused {len(tr['a']) + len(te['a'])} kept slices through napari_fusion.fuse in {time.time() - t:.0f} s", flush=True)
    if cache:
        np.savez(cache, key=np.array(key), **{f"tr_{k}": v for k, v in tr.items()}, **{f"te_{k}": v for k, v in te.items()})
    return tr, te


def verdict(rows: dict[str, dict[str, float]]) -> list[str]:
    """Plain-language reading: which input segments best, by the tumour-class mean and by whole tumour."""
    same = {k: v for k, v in rows.items() if "segmenter trained" in k}
    short = {k: k.split(" (")[0] for k in same}
    out = []
    for metric in ("mean Dice (tumour classes)", "Dice/whole tumour"):
        order = sorted(same, key=lambda k: -np.nan_to_num(same[k][metric], nan=-1))
        best = order[0]
        td = next(k for k in same if k.startswith("tdfusion"))
        ranking = ", ".join(f"{short[k]} {same[k][metric]:.3f}" for k in order)
        if best == td:
            gap = same[td][metric] - same[order[1]][metric]
            out.append(f"- {metric}: TDFusion's fused image is best ({ranking}; +{gap:.3f} over the next).")
        else:
            gap = same[best][metric] - same[td][metric]
            out.append(
                f"- {metric}: TDFusion's fused image is **not** best: {short[best]} is "
                f"({ranking}; TDFusion {gap:.3f} behind, rank {order.index(td) + 1} of {len(order)})."
            )
    return out


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    cm = confusion_matrix(pred.ravel(), truth.ravel(), n_classes=5)
    iou, dice = per_class_scores(cm)
    out = {f"Dice/{NAMES[c]}": float(dice[c]) for c in range(1, 5)}
    out |= {f"IoU/{NAMES[c]}": float(iou[c]) for c in range(1, 5)}
    out["mean Dice (tumour classes)"] = float(np.nanmean(dice[1:]))
    out["mean IoU (tumour classes)"] = float(np.nanmean(iou[1:]))
    wt_p, wt_t = pred > 0, truth > 0
    out["Dice/whole tumour"] = float(2 * (wt_p & wt_t).sum() / max(wt_p.sum() + wt_t.sum(), 1))
    return out


def fusion_ms(runner, device, repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.random((480, 640), dtype=np.float32), rng.random((480, 640), dtype=np.float32)
    runner.to(device)
    runner.fuse(a, b)
    t = time.perf_counter()
    for _ in range(repeats):
        runner.fuse(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats * 1000


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="segmenter training steps per input")
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (e.g. 0,1,2): each input's segmenter is "
                    "trained once per seed and the table gives the mean, with a per-seed table (default: --seed)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stride", type=int, default=2, help="use every k-th test slice")
    ap.add_argument("--train-stride", type=int, default=1, help="train the segmenters on every k-th training slice")
    ap.add_argument("--fused-cache", default=None, help="npz file that keeps the fused slices between runs")
    ap.add_argument("--weights", default=None, help="tdfusion-brats model file (default: shipped)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "tdfusion_brats.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_torch_device(args.device)
    t_all = time.time()

    runner = registry.build_runner("tdfusion-brats", device="cpu", weights=args.weights, cache=False)
    from napari_fusion.methods.registry import get_method

    weights_path = args.weights or get_method("tdfusion-brats").weights_path
    method = runner if args.weights else "tdfusion-brats"
    train, test = api_slices(method, weights_path, (args.train_stride, args.stride), "cpu", args.fused_cache)
    train["labels"], test["labels"] = train["labels"].astype(np.int64), test["labels"].astype(np.int64)
    fused_train, fused_test = train["fused"], test["fused"]
    print(f"train slices {len(train['a'])} (every {args.train_stride}th), test slices {len(test['a'])} (every {args.stride}th)", flush=True)
    inputs = {
        "tdfusion": (fused_train, fused_test),
        "flair": (train["a"], test["a"]),
        "t1c": (train["b"], test["b"]),
        "average": (0.5 * (train["a"] + train["b"]), 0.5 * (test["a"] + test["b"])),
    }
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    rows: dict[str, dict[str, float]] = {}
    per_seed: dict[str, list[dict[str, float]]] = {}
    for name, (xtr, xte) in inputs.items():
        per_seed[name] = []
        for seed in seeds:
            t = time.time()
            seg = train_segmenter(xtr.astype(np.float32), train["labels"], args.steps, args.crop, args.batch, seed, device)
            per_seed[name].append(scores(predict(seg, xte.astype(np.float32), device), test["labels"]))
            print(f"{name} seed {seed}: {time.time() - t:.0f} s, {json.dumps({k: round(v, 3) for k, v in per_seed[name][-1].items()})}", flush=True)
        rows[f"{name} (segmenter trained {args.steps} steps)"] = {
            k: float(np.nanmean([r[k] for r in per_seed[name]])) for k in per_seed[name][0]
        }
    runner.to(device)
    rows["tdfusion-brats shipped, through napari_fusion.fuse"] = scores(test["model_labels"], test["labels"])
    ms_cpu = fusion_ms(runner, torch.device("cpu"))
    ms_dev = fusion_ms(runner, device) if device.type != "cpu" else None

    cols = ["Dice/whole tumour"] + [f"Dice/{n}" for n in NAMES[1:]] + ["mean Dice (tumour classes)"] + [f"IoU/{n}" for n in NAMES[1:]] + ["mean IoU (tumour classes)"]
    head = "| input | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols)
    lines = [head] + [
        f"| {k} | " + " | ".join("n/a" if not np.isfinite(v[c]) else f"{v[c]:.3f}" for c in cols) + " |" for k, v in rows.items()
    ]
    seed_lines = []
    if len(seeds) > 1:
        key_cols = ("mean Dice (tumour classes)", "Dice/whole tumour")
        seed_lines = [
            "Per seed (mean Dice over the tumour classes / whole-tumour Dice); the table above is the mean over seeds:",
            "",
            "| input | " + " | ".join(f"seed {sd}" for sd in seeds) + " |",
            "|---|" + "---|" * len(seeds),
        ]
        for name in inputs:
            seed_lines.append(f"| {name} | " + " | ".join(
                f"{r[key_cols[0]]:.3f} / {r[key_cols[1]]:.3f}" for r in per_seed[name]) + " |")
        bests = []
        for i in range(len(seeds)):
            bests.append("mean: " + max(inputs, key=lambda n: per_seed[n][i][key_cols[0]])
                         + ", whole: " + max(inputs, key=lambda n: per_seed[n][i][key_cols[1]]))
        seed_lines.append("| best input | " + " | ".join(bests) + " |")
        n_best = sum(max(inputs, key=lambda n: per_seed[n][i][key_cols[0]]) == "tdfusion" for i in range(len(seeds)))
        seed_lines += ["", f"TDFusion's fused image has the best tumour-class mean in {n_best} of {len(seeds)} seeds.", ""]
    training = runner.meta.get("training", {})
    text = "\n".join(
        [
            "# TDFusion on BraTS: does the task-driven fused image segment best?",
            "",
            "Generated by `python " + " ".join(["benchmarks/tdfusion_brats.py", *(argv if argv is not None else sys.argv[1:])]) + "`.",
            "",
            "Every input comes through the public API: each case's FLAIR and T1c NIfTI files fused whole by "
            "`napari_fusion.fuse(flair, t1c, 'tdfusion-brats', full=True)` (FLAIR, T1c and the fused image as the model "
            "saw them: its input mapping, unit range); the last row is that call's own labels. "
            f"Test data: the 2 BraTS 2015 test cases (DeepMedic split), every {args.stride}th axial slice with brain "
            f"({len(test['a'])} slices, 240x240), pooled over all slices. Training data: train + validation cases, "
            f"every {args.train_stride}th kept slice ({len(train['a'])} slices). Each row except the last trains the same U-Net segmenter "
            f"({sum(p.numel() for p in Segmenter(5).parameters())} parameters) for {args.steps} steps of "
            f"{args.batch} crops of {args.crop} px, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} "
            f"(the same crops and class weights for every input in one seed), on its input.",
            "",
            *lines,
            "",
            "Does the task-driven fused image segment best (same segmenter, same budget)?",
            "",
            *verdict(rows),
            "",
            *seed_lines,
            f"Shipped `tdfusion-brats` model: {training.get('steps', '?')} training steps, "
            f"{training.get('seconds', '?')} s on {training.get('device', '?')} (`{training.get('command', '?')}`).",
            f"Fusion net speed, one 480x640 pair: {ms_cpu:.0f} ms on CPU ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})"
            + (f", {ms_dev:.1f} ms on {device}" if ms_dev is not None else "")
            + ".",
            f"Benchmark wall time {time.time() - t_all:.0f} s on {device}; machine: {os.cpu_count()} CPU cores, "
            f"load average {os.getloadavg()[1]:.1f} over the last 5 minutes of the run (other jobs share it).",
            "",
            "Reading: per-class Dice of the rare classes (necrosis, non-enhancing tumour) is noisy with two test "
            "cases; the whole-tumour Dice and the tumour-class mean are the numbers to compare. The claim of the "
            "method is that the task-driven fused image segments better than either source or their average.",
        ]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from napari_fusion.io.atomic import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(text + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    main()
