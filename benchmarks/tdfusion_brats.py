"""Does the task-driven fused image segment best? BraTS test cases, Dice/IoU per tumour class.

For a fair comparison the SAME segmenter architecture (methods/segmenter.py) is trained with the SAME
budget (steps, crops, batch, seed, class weights) on each input:

- ``tdfusion``: slices fused by the shipped ``tdfusion-brats`` fusion net,
- ``flair`` alone, ``t1c`` alone,
- ``average``: the mean of FLAIR and T1c,

on the BraTS train + validation cases, and measured on the 2 test cases (pooled confusion over all
kept test slices). The shipped model's own jointly-trained segmenter on its fused slices is reported
too. Also: ms per 480x640 pair for the fusion net on this machine.

    python benchmarks/tdfusion_brats.py --steps 300 --device cpu
writes docs/results/tdfusion_brats.md (and prints the table).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_fusion.methods import registry
from napari_fusion.methods._torch import resolve_torch_device
from napari_fusion.methods.segmenter import Segmenter
from napari_fusion.metrics import confusion_matrix, per_class_scores
from napari_fusion.training.data import BRATS_CLASSES, load_brats_split
from napari_fusion.training.losses import class_weights_from_counts
from napari_fusion.training.tdfusion import BratsSampler, segmenter_step

ROOT = Path(__file__).resolve().parents[1]
NAMES = [c[1] for c in BRATS_CLASSES]


@torch.no_grad()
def fuse_slices(runner, a: np.ndarray, b: np.ndarray, device: torch.device, chunk: int = 8) -> np.ndarray:
    """Fused unit slices (N, H, W) by the runner's fusion net, in batches on ``device``."""
    net = runner.fusion.to(device).eval()
    out = np.empty(a.shape, np.float32)
    for i in range(0, len(a), chunk):
        ta = torch.from_numpy(a[i : i + chunk, None]).to(device)
        tb = torch.from_numpy(b[i : i + chunk, None]).to(device)
        out[i : i + chunk] = net(ta, tb)[:, 0].clamp(0, 1).cpu().numpy()
    return out


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
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stride", type=int, default=2, help="use every k-th test slice")
    ap.add_argument("--weights", default=None, help="tdfusion-brats model file (default: shipped)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "tdfusion_brats.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_torch_device(args.device)
    t_all = time.time()

    runner = registry.build_runner("tdfusion-brats", device="cpu", weights=args.weights, cache=False)
    tr, va, te = load_brats_split("train"), load_brats_split("validation"), load_brats_split("test")
    train = {k: np.concatenate([tr[k], va[k]]) for k in ("a", "b", "labels")}
    test = {k: te[k][:: args.stride] for k in ("a", "b", "labels")}
    print(f"train slices {len(train['a'])}, test slices {len(test['a'])} (every {args.stride}th)", flush=True)

    fused_train = fuse_slices(runner, train["a"], train["b"], device)
    fused_test = fuse_slices(runner, test["a"], test["b"], device)
    inputs = {
        "tdfusion": (fused_train, fused_test),
        "flair": (train["a"], test["a"]),
        "t1c": (train["b"], test["b"]),
        "average": (0.5 * (train["a"] + train["b"]), 0.5 * (test["a"] + test["b"])),
    }
    rows: dict[str, dict[str, float]] = {}
    for name, (xtr, xte) in inputs.items():
        t = time.time()
        seg = train_segmenter(xtr.astype(np.float32), train["labels"], args.steps, args.crop, args.batch, args.seed, device)
        rows[f"{name} (segmenter trained {args.steps} steps)"] = scores(predict(seg, xte.astype(np.float32), device), test["labels"])
        print(f"{name}: {time.time() - t:.0f} s, {json.dumps({k: round(v, 3) for k, v in rows[list(rows)[-1]].items()})}", flush=True)
    runner.to(device)
    shipped_pred = predict(runner.segmenter, fused_test, device)
    rows["tdfusion-brats shipped (joint segmenter)"] = scores(shipped_pred, test["labels"])
    ms_cpu = fusion_ms(runner, torch.device("cpu"))
    ms_dev = fusion_ms(runner, device) if device.type != "cpu" else None

    cols = ["Dice/whole tumour"] + [f"Dice/{n}" for n in NAMES[1:]] + ["mean Dice (tumour classes)"] + [f"IoU/{n}" for n in NAMES[1:]] + ["mean IoU (tumour classes)"]
    head = "| input | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols)
    lines = [head] + [
        f"| {k} | " + " | ".join("n/a" if not np.isfinite(v[c]) else f"{v[c]:.3f}" for c in cols) + " |" for k, v in rows.items()
    ]
    training = runner.meta.get("training", {})
    text = "\n".join(
        [
            "# TDFusion on BraTS: does the task-driven fused image segment best?",
            "",
            "Generated by `python " + " ".join(["benchmarks/tdfusion_brats.py", *(argv if argv is not None else sys.argv[1:])]) + "`.",
            "",
            f"Test data: the 2 BraTS 2015 test cases (DeepMedic split), every {args.stride}th axial slice with brain "
            f"({len(test['a'])} slices, 240x240), pooled over all slices. Training data: train + validation cases "
            f"({len(train['a'])} slices). Each row except the last trains the same U-Net segmenter "
            f"({sum(p.numel() for p in Segmenter(5).parameters())} parameters) for {args.steps} steps of "
            f"{args.batch} crops of {args.crop} px, seed {args.seed}, same crops and class weights, on its input.",
            "",
            *lines,
            "",
            f"Shipped `tdfusion-brats` model: {training.get('steps', '?')} training steps, "
            f"{training.get('seconds', '?')} s on {training.get('device', '?')} (`{training.get('command', '?')}`).",
            f"Fusion net speed, one 480x640 pair: {ms_cpu:.0f} ms on CPU ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})"
            + (f", {ms_dev:.1f} ms on {device}" if ms_dev is not None else "")
            + ".",
            f"Benchmark wall time {time.time() - t_all:.0f} s on {device}.",
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
