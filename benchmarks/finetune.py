"""Fine-tuning from painted strokes, measured (issue 8).

(a) BraTS: a script "paints" a few short strokes per class (~1% of pixels) from the ground truth of a
    few test slices (background painted with value 5 = ``background_value``); the shipped
    ``tdfusion-brats`` model is fine-tuned on them; Dice/IoU on the OTHER test slices before / after.
(b) MSRS infrared/visible pair 00055D (a held-out pair: sorted index % 5 == 0): no ground truth exists,
    so strokes are drawn by a documented intensity/position rule (person = hottest IR pixels in the
    walkway band, road = bottom rows, sky = brightest visible pixels in the top part, foliage = dark
    visible pixels in the top part); a fifth of the STROKES is held out, the ``tdfusion`` base model
    (no segmenter: fine-tuning creates one) is fine-tuned on the rest; accuracy on the held-out stroke
    pixels before (fresh segmenter) / after, and the seconds it takes on this machine.

    python benchmarks/finetune.py --device cpu
writes docs/results/finetune.md (and prints it).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_fusion.methods import registry
from napari_fusion.metrics import confusion_matrix, per_class_scores
from napari_fusion.training.data import BRATS_CLASSES, _read_gray_unit, load_brats_split, shared_data_dir
from napari_fusion.training.finetune import finetune_steps

ROOT = Path(__file__).resolve().parents[1]
BG = 5  # painted value that means "background" (class 0) for the BraTS model


def draw_strokes(masks: dict[int, np.ndarray], frac: float, rng: np.random.Generator, length: int = 15, width: int = 3):
    """Short straight strokes inside each class mask until ~``frac`` of the pixels per class are painted.

    Returns (painted label image, stroke-id image): stroke ids let whole strokes be held out.
    """
    shape = next(iter(masks.values())).shape
    lab = np.zeros(shape, np.int32)
    sid = np.zeros(shape, np.int32)
    target = frac * shape[0] * shape[1]
    n = 0
    for value, mask in masks.items():
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        painted = 0
        tries = 0
        while painted < target and tries < 500:
            tries += 1
            j = rng.integers(len(ys))
            ang = rng.uniform(0, np.pi)
            t = np.arange(-length // 2, length // 2 + 1)
            py = np.clip(np.rint(ys[j] + t * np.sin(ang)).astype(int), 0, shape[0] - 1)
            px = np.clip(np.rint(xs[j] + t * np.cos(ang)).astype(int), 0, shape[1] - 1)
            n += 1
            for dy in range(-(width // 2), width // 2 + 1):
                yy = np.clip(py + dy, 0, shape[0] - 1)
                ok = mask[yy, px] & (lab[yy, px] == 0)
                lab[yy[ok], px[ok]] = value
                sid[yy[ok], px[ok]] = n
                painted += int(ok.sum())
    return lab, sid


def run(gen):
    """Drive a fine-tuning generator; returns (runner, seconds, progress list)."""
    t = time.perf_counter()
    prog = []
    while True:
        try:
            prog.append(next(gen))
        except StopIteration as stop:
            return stop.value, time.perf_counter() - t, prog


def brats_scores(runner, a, b, truth) -> dict[str, float]:
    cm = np.zeros((5, 5), np.int64)
    for i in range(len(a)):
        _, pred = runner.fuse_and_segment(a[i], b[i])
        cm += confusion_matrix(pred.ravel(), truth[i].ravel(), n_classes=5)
    iou, dice = per_class_scores(cm)
    out = {f"Dice/{BRATS_CLASSES[c][1]}": float(dice[c]) for c in range(1, 5)}
    out["mean Dice (tumour)"] = float(np.nanmean(dice[1:]))
    out["mean IoU (tumour)"] = float(np.nanmean(iou[1:]))
    wt = cm[1:, 1:].sum()
    out["Dice/whole tumour"] = float(2 * wt / max(cm[1:, :].sum() + cm[:, 1:].sum(), 1))
    return out


def part_a(args, device) -> list[str]:
    te = load_brats_split("test")
    tumour = (te["labels"] > 0).reshape(len(te["labels"]), -1).sum(1)
    # stroke slices: the 3 slices of test case 0 with the most tumour, spaced >= 6 slices apart
    order = [int(i) for i in np.argsort(-tumour) if te["case"][i] == 0]
    pick: list[int] = []
    for i in order:
        if all(abs(te["z"][i] - te["z"][j]) >= 6 for j in pick):
            pick.append(i)
        if len(pick) == 3:
            break
    near = {i for i in range(len(te["z"])) for j in pick if te["case"][i] == te["case"][j] and abs(te["z"][i] - te["z"][j]) <= 2}
    evals = [i for i in range(0, len(te["z"]), args.stride) if i not in near]
    a = np.concatenate([te["a"][i] for i in pick], 1)  # a 240x720 mosaic: one pair to paint on
    b = np.concatenate([te["b"][i] for i in pick], 1)
    truth = np.concatenate([te["labels"][i] for i in pick], 1)
    rng = np.random.default_rng(args.seed)
    masks = {v: truth == c for c, v in ((0, BG), (1, 1), (2, 2), (3, 3), (4, 4))}
    painted, _ = draw_strokes(masks, args.frac / 5, rng)
    base = registry.build_runner("tdfusion-brats", device=str(device), cache=False)
    ea, eb, et = te["a"][evals], te["b"][evals], te["labels"][evals]
    before = brats_scores(base, ea, eb, et)
    tuned, secs, prog = run(
        finetune_steps(base, a, b, painted, steps=args.steps, lr=args.lr, background_value=BG, device=str(device), seed=args.seed)
    )
    after = brats_scores(tuned, ea, eb, et)
    cols = ["Dice/whole tumour", "mean Dice (tumour)", "mean IoU (tumour)"] + [f"Dice/{c[1]}" for c in BRATS_CLASSES[1:]]
    counts = {int(v): int((painted == v).sum()) for v in np.unique(painted) if v}
    lines = [
        "## (a) BraTS: strokes from the ground truth of 3 test slices, scored on the other test slices",
        "",
        f"Stroke slices: test case 0, axial z = {[int(te['z'][i]) for i in pick]} (as one 240x720 mosaic); "
        f"painted pixels per value {counts} ({100 * (painted > 0).mean():.2f}% of the mosaic; value {BG} = background). "
        f"Scored on {len(evals)} other test slices of both cases (every {args.stride}th, +-2 slices around the stroke slices excluded).",
        f"Fine-tuning: {args.steps} steps, lr {args.lr}, {secs:.1f} s on {device}.",
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
        "| tdfusion-brats (shipped) | " + " | ".join(f"{before[c]:.3f}" for c in cols) + " |",
        "| after fine-tuning | " + " | ".join(f"{after[c]:.3f}" for c in cols) + " |",
        "",
        f"Painted-pixel task loss over the run: first steps {np.mean([p.task_loss for p in prog[:5]]):.3f}, "
        f"last steps {np.mean([p.task_loss for p in prog[-5:]]):.3f}.",
    ]
    return lines


def msrs_strokes(ir: np.ndarray, vi: np.ndarray, rng, frac: float):
    """The documented stroke rule for MSRS 00055D (480x640)."""
    h, w = ir.shape
    yy = np.arange(h)[:, None] * np.ones((1, w))
    band = (yy > 170) & (yy < 320)
    person = band & (ir >= np.percentile(ir[band], 99))
    road = (yy > 340) & ~person
    top = yy < 190
    sky = top & (vi >= np.percentile(vi[top], 90))
    foliage = top & (vi <= np.percentile(vi[top], 40))
    masks = {1: person, 2: road, 3: sky, 4: foliage}
    names = {1: "person (hot)", 2: "road", 3: "sky", 4: "foliage"}
    lab, sid = draw_strokes(masks, frac / 4, rng)
    return lab, sid, names


def part_b(args, device) -> list[str]:
    root = shared_data_dir() / "ivif" / "MSRS"
    name = "00055D.png"
    ir, vi = _read_gray_unit(root / "ir" / name), _read_gray_unit(root / "vi" / name)
    rng = np.random.default_rng(args.seed)
    lab, sid, names = msrs_strokes(ir, vi, rng, args.frac)
    ids = np.unique(sid[sid > 0])
    held_ids = rng.choice(ids, size=max(1, len(ids) // 5), replace=False)
    held = np.isin(sid, held_ids)
    train = np.where(held, 0, lab)
    base = registry.build_runner("tdfusion", device=str(device), cache=False)
    rows = []
    timing = []
    for steps in args.msrs_steps:
        tuned, secs, prog = run(
            finetune_steps(base, ir, vi, train, steps=steps, lr=args.lr_ivif, class_names=names, device=str(device), seed=args.seed)
        )
        t = time.perf_counter()
        fused, pred = tuned.fuse_and_segment(ir, vi)
        t_infer = time.perf_counter() - t
        acc = float((pred[held] == lab[held]).mean())
        per = {names[c]: float((pred[held & (lab == c)] == c).mean()) for c in names if (held & (lab == c)).any()}
        w = tuned.intensity_weights(ir, vi)[0]
        rows.append((steps, acc, per, secs, t_infer, float(w.mean())))
        timing.append(prog)
    # "before": the same fresh segmenter with no training (what a user sees without fine-tuning)
    fresh, _, _ = run(finetune_steps(base, ir, vi, train, steps=1, lr=1e-12, class_names=names, device=str(device), seed=args.seed))
    pred0 = fresh.segment(fresh.fuse(ir, vi))
    acc0 = float((pred0[held] == lab[held]).mean())
    counts = {names[c]: int((lab == c).sum()) for c in names}
    lines = [
        "## (b) MSRS infrared/visible pair 00055D: held-out strokes",
        "",
        f"Strokes by the rule in `msrs_strokes` (benchmarks/finetune.py): {counts} painted pixels "
        f"({100 * (lab > 0).mean():.2f}% of 480x640), {len(ids)} strokes of which {len(held_ids)} (a fifth, "
        f"{int(held.sum())} px) held out. Base model `tdfusion` (no segmenter: fine-tuning creates one).",
        f"Chance level {1 / len(names):.2f}; fresh segmenter before any step: held-out accuracy {acc0:.3f}.",
        "",
        "| steps | held-out accuracy | per class | fine-tune s | fuse+segment 480x640 s | mean loss weight on IR |",
        "|---|---|---|---|---|---|",
    ]
    for steps, acc, per, secs, t_inf, wa in rows:
        lines.append(
            f"| {steps} | {acc:.3f} | " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()) + f" | {secs:.1f} | {t_inf:.1f} | {wa:.3f} |"
        )
    lines += [
        "",
        "The loss weight column is the loss generation module's mean weight on the infrared source "
        "(0.5 = its neutral start): how far the meta-learned fusion loss moved towards one source.",
    ]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps for BraTS")
    ap.add_argument("--msrs-steps", type=int, nargs="+", default=[15, 60], help="fine-tuning steps for MSRS")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-ivif", type=float, default=1e-3)
    ap.add_argument("--frac", type=float, default=0.01, help="fraction of pixels painted")
    ap.add_argument("--stride", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=("a", "b"), default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "finetune.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_fusion.methods._torch import resolve_torch_device

    device = resolve_torch_device(args.device)
    t0 = time.time()
    lines = [
        "# Fine-tuning from painted labels",
        "",
        "Generated by `python " + " ".join(["benchmarks/finetune.py", *(argv if argv is not None else sys.argv[1:])]) + "` "
        f"on {device} ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} logical CPUs; a shared machine, so seconds are upper bounds).",
        "",
    ]
    if args.skip != "a":
        lines += part_a(args, device) + [""]
        print("\n".join(lines), flush=True)
    if args.skip != "b":
        lines += part_b(args, device) + [""]
    lines.append(f"Total benchmark time {time.time() - t0:.0f} s.")
    text = "\n".join(lines)
    from napari_fusion.io.atomic import atomic_path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
