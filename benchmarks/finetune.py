"""Fine-tuning from painted strokes, measured (issue 8).

(brats) BraTS test cases: a script "paints" a few short strokes per class (~1% of pixels) from the
    ground truth of 3 test slices (background painted with value 5 = ``background_value``); each
    shipped segmenting model (``tdfusion-brats``, ``multitaskvif``) is fine-tuned on them; Dice/IoU on
    the OTHER test slices before / after.
(msrs) MSRS infrared/visible pair 00055D (480x640, a held-out pair: sorted index % 5 == 0): no ground
    truth exists, so strokes are drawn by a documented intensity/position rule (``msrs_strokes``:
    person = hottest IR pixels in the walkway band, road = bottom rows, sky = brightest visible pixels
    in the top part, foliage = dark visible pixels in the top part), ~1% of the pixels; a fifth of the
    STROKES is held out and the model is fine-tuned on the rest. One run per model, evaluated at
    checkpoints (``--msrs-steps``; the timer is paused while evaluating): seconds (wall and CPU),
    accuracy on the painted (training) and on the held-out stroke pixels, and the "visible change":
    the fraction of all pixels whose predicted class changed since before fine-tuning, the share of
    the largest predicted class (1.0 = one colour everywhere) and the mean absolute change of the
    fused image (0..255). ``tdfusion`` (the infrared/visible base, no segmenter) gets a fresh
    segmenter: "before" is that untrained segmenter; ``multitaskvif`` (BraTS classes) is re-taught.

    python benchmarks/finetune.py --device cpu --threads 1 --parts brats msrs
writes (or updates the sections it ran of) docs/results/finetune.md and prints them. Options
``--crop --batch --meta-every`` are the TDFusion fine-tuning knobs; ``--tag`` names a section so
that runs with other knobs can sit side by side.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_fusion.methods import registry
from napari_fusion.metrics import confusion_matrix, per_class_scores
from napari_fusion.methods.classes import BRATS_CLASSES
from napari_fusion.training.data import read_gray_unit, load_brats_split, shared_data_dir
from napari_fusion.training.finetune import _prepare_segmenter, finetune_steps

ROOT = Path(__file__).resolve().parents[1]
BG = 5  # painted value that means "background" (class 0) for the BraTS models


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



def _eval_mode(runner):
    for m in getattr(runner, "modules", {}).values():
        m.eval()
    return runner


def run_with_checkpoints(gen, at, evaluate):
    """Drive a fine-tuning generator to its end; at the steps in ``at`` call ``evaluate(model)`` on
    the model being trained (timers paused). Returns (final runner, [(step, wall s, cpu s, result)], progress)."""
    wall = cpu = 0.0
    rows, prog = [], []
    while True:
        t, c = time.perf_counter(), time.process_time()
        try:
            p = next(gen)
        except StopIteration as stop:
            wall += time.perf_counter() - t
            cpu += time.process_time() - c
            final = stop.value
            break
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        prog.append(p)
        if p.step in at and p.step < p.steps:
            # the generator's own runner (``new`` in both fine-tuning loops), between two steps
            inner = gen  # through the pass-through generator that notes an automatic rate
            while "new" not in inner.gi_frame.f_locals and inner.gi_yieldfrom is not None:
                inner = inner.gi_yieldfrom
            rows.append((p.step, wall, cpu, evaluate(_eval_mode(inner.gi_frame.f_locals["new"]))))
    rows.append((prog[-1].steps, wall, cpu, evaluate(final)))
    return final, rows, prog


def _tuning_kw(args, runner) -> dict:
    """The TDFusion knobs (MultiTaskVIF fine-tuning takes its own defaults through the dispatch)."""
    if getattr(runner, "family", None) != "TDFusion":
        return {}
    return {"crop": args.crop, "batch": args.batch, "meta_every": args.meta_every, "seed": args.seed}


def _usable(name: str, device) -> bool:
    try:
        registry.build_runner(name, device=str(device), cache=False)
        return True
    except Exception as err:  # noqa: BLE001 - weights not installed: say so in the output
        print(f"{name}: not usable here ({err})", file=sys.stderr)
        return False


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



def part_brats(args, device) -> list[str]:
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
    ea, eb, et = te["a"][evals], te["b"][evals], te["labels"][evals]
    cols = ["Dice/whole tumour", "mean Dice (tumour)", "mean IoU (tumour)"] + [f"Dice/{c[1]}" for c in BRATS_CLASSES[1:]]
    counts = {int(v): int((painted == v).sum()) for v in np.unique(painted) if v}
    lines = [
        f"## BraTS: strokes from the ground truth of 3 test slices, scored on the other test slices{args.tag and ' (' + args.tag + ')'}",
        "",
        f"Stroke slices: test case 0, axial z = {[int(te['z'][i]) for i in pick]} (as one 240x720 mosaic); "
        f"painted pixels per value {counts} ({100 * (painted > 0).mean():.2f}% of the mosaic; value {BG} = background). "
        f"Scored on {len(evals)} other test slices of both test cases (every {args.stride}th of the {len(te['z'])} "
        f"test slices, +-2 slices around the stroke slices excluded). lr {args.lr or 'auto'}; one run per model to "
        f"{max(args.brats_steps)} steps, scored at the steps listed (timer paused while scoring).",
        "",
        "| model | steps | fine-tune wall s | CPU s | " + " | ".join(cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols),
    ]
    notes = []
    for name in args.brats_models:
        if not _usable(name, device):
            lines.append(f"| {name} | weights not installed here | | | " + " | " * (len(cols) - 1) + " |")
            continue
        base = registry.build_runner(name, device=str(device), cache=False)
        before = brats_scores(base, ea, eb, et)
        steps = max(args.brats_steps)
        tuned, rows, prog = run_with_checkpoints(
            finetune_steps(base, a, b, painted, steps=steps, lr=args.lr, background_value=BG, device=str(device), **_tuning_kw(args, base)),
            set(args.brats_steps), lambda m: brats_scores(m, ea, eb, et),
        )
        choice = tuned.meta["finetune_history"][-1].get("lr_choice")
        if choice:
            notes.append(f"{name}: auto {choice}.")
        lines.append(f"| {name} (shipped) | 0 | | | " + " | ".join(f"{before[c]:.3f}" for c in cols) + " |")
        for step, wall, cpu, after in rows:
            lines.append(f"| {name} fine-tuned | {step} | {wall:.0f} | {cpu:.0f} | " + " | ".join(f"{after[c]:.3f}" for c in cols) + " |")
        notes.append(
            f"{name}: painted-pixel task loss {np.mean([p.task_loss for p in prog[:5]]):.3f} (first 5 steps) -> "
            f"{np.mean([p.task_loss for p in prog[-5:]]):.3f} (last 5)."
        )
        print("\n".join(lines[-len(rows) - 1:]), flush=True)
    return lines + [""] + notes


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



def part_msrs(args, device) -> list[str]:
    root = shared_data_dir() / "ivif" / "MSRS"
    name = "00055D.png"
    ir, vi = read_gray_unit(root / "ir" / name), read_gray_unit(root / "vi" / name)
    rng = np.random.default_rng(args.seed)
    lab, sid, names = msrs_strokes(ir, vi, rng, args.frac)
    ids = np.unique(sid[sid > 0])
    held_ids = rng.choice(ids, size=max(1, len(ids) // 5), replace=False)
    held = np.isin(sid, held_ids)
    train = np.where(held, 0, lab)
    trained = train > 0
    counts = {names[c]: int((lab == c).sum()) for c in names}
    lines = [
        f"## MSRS infrared/visible pair 00055D (480x640): interactive speed and held-out strokes{args.tag and ' (' + args.tag + ')'}",
        "",
        f"Strokes by the rule in `msrs_strokes` (benchmarks/finetune.py): {counts} painted pixels "
        f"({100 * (lab > 0).mean():.2f}% of 480x640) in {len(ids)} strokes of 15x3 px; {len(held_ids)} strokes (a fifth, "
        f"{int(held.sum())} px) held out, the model fine-tuned on the other {int(trained.sum())} px "
        f"({100 * trained.mean():.2f}%). lr {args.lr_ivif or 'auto'}; TDFusion knobs crop {args.crop}, batch {args.batch}, "
        f"meta_every {args.meta_every} (defaults of `finetune_steps` unless the command says otherwise); "
        f"MultiTaskVIF with its own defaults. Chance level {1 / len(names):.2f}.",
        "",
        "Columns: wall / CPU seconds of fine-tuning up to that step (evaluation excluded; CPU s = this process's CPU time, "
        "a better guess of an unloaded machine's wall time at this thread count); accuracy on the painted pixels "
        "trained on and on the held-out strokes; **changed** = fraction of all 480x640 pixels whose predicted class "
        "differs from before fine-tuning; **largest class** = share of the image given to the most frequent predicted "
        "class (1.00 = one colour everywhere); **|dF|** = mean absolute change of the fused image since before, on 0..255.",
        "",
        "| model | steps | wall s | CPU s | painted acc | held-out acc | held-out per class | changed | largest class | abs dF |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for mname in args.msrs_models:
        if not _usable(mname, device):
            lines.append(f"| {mname} | weights not installed here | | | | | | | | |")
            continue
        base = registry.build_runner(mname, device=str(device), cache=False)
        kw = _tuning_kw(args, base)
        before = base
        if getattr(base, "family", None) == "TDFusion" and not base.has_segmenter:
            # the segmenter fine-tuning starts from (same seed => same initial weights)
            before = base.copy()
            _prepare_segmenter(before, sorted(names), names, kw.get("seed", 0), False)
        t = time.perf_counter()
        f0, p0 = before.fuse_and_segment(ir, vi)
        t_inf = time.perf_counter() - t

        def evaluate(model):
            f, p = model.fuse_and_segment(ir, vi)
            per = {names[c]: float((p[held & (lab == c)] == c).mean()) for c in names if (held & (lab == c)).any()}
            share = np.bincount(p.ravel()).max() / p.size
            return {
                "painted": float((p[trained] == lab[trained]).mean()), "held": float((p[held] == lab[held]).mean()),
                "per": per, "changed": float((p != p0).mean()), "largest": float(share),
                "dF": float(np.abs(f.astype(np.float64) - f0).mean() * 255),
            }

        r0 = evaluate(before)
        rows_out = [(0, 0.0, 0.0, r0)]
        tuned, rows, prog = run_with_checkpoints(
            finetune_steps(base, ir, vi, train, steps=max(args.msrs_steps), lr=args.lr_ivif,
                           class_names=names, device=str(device), **kw),
            set(args.msrs_steps), evaluate,
        )
        choice = tuned.meta["finetune_history"][-1].get("lr_choice")
        if choice:
            notes.append(f"{mname}: auto {choice}.")
        for step, wall, cpu, r in rows_out + rows:
            lines.append(
                f"| {mname} | {step} | {wall:.1f} | {cpu:.1f} | {r['painted']:.3f} | {r['held']:.3f} | "
                + ", ".join(f"{k} {v:.2f}" for k, v in r["per"].items())
                + f" | {r['changed']:.3f} | {r['largest']:.2f} | {r['dF']:.2f} |"
            )
        notes.append(
            f"{mname}: one fuse + segment pass of 480x640 (to show the result) took {t_inf:.1f} s wall before fine-tuning; "
            f"painted-pixel task loss {np.mean([p.task_loss for p in prog[:3]]):.3f} (first 3 steps) -> "
            f"{np.mean([p.task_loss for p in prog[-3:]]):.3f} (last 3)."
        )
        print("\n".join(lines[-len(rows) - 1:]), flush=True)
    return lines + [""] + notes


PARTS = {"brats": part_brats, "msrs": part_msrs}


def _update_sections(path: Path, sections: dict[str, str], title: str) -> str:
    """Replace (or append) the marked sections ``key`` of the results file; keep the others."""
    text = path.read_text() if path.is_file() else f"{title}\n"
    for key, body in sections.items():
        block = f"<!-- section:{key} -->\n{body.rstrip()}\n<!-- end:{key} -->"
        pat = re.compile(rf"<!-- section:{re.escape(key)} -->.*?<!-- end:{re.escape(key)} -->", re.S)
        text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    return text


def _lr(text: str) -> float | None:
    return None if text == "auto" else float(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    ap.add_argument("--brats-models", nargs="+", default=["tdfusion-brats", "multitaskvif"])
    ap.add_argument("--msrs-models", nargs="+", default=["tdfusion", "multitaskvif"])
    ap.add_argument("--brats-steps", type=int, nargs="+", default=[10, 30, 60], help="BraTS checkpoints (the run goes to the largest)")
    ap.add_argument("--msrs-steps", type=int, nargs="+", default=[5, 10, 20, 30], help="MSRS checkpoints (the run goes to the largest)")
    ap.add_argument("--lr", type=_lr, default=None, help="BraTS learning rate, or auto (default: auto, training.finetune.auto_lr)")
    ap.add_argument("--lr-ivif", type=_lr, default=None, help="MSRS learning rate, or auto (default)")
    ap.add_argument("--crop", type=int, default=64, help="TDFusion fine-tuning crop")
    ap.add_argument("--batch", type=int, default=4, help="TDFusion fine-tuning batch")
    ap.add_argument("--meta-every", type=int, default=3, help="TDFusion fine-tuning meta step every N steps")
    ap.add_argument("--frac", type=float, default=0.01, help="fraction of pixels painted")
    ap.add_argument("--stride", type=int, default=3, help="BraTS: score every Nth test slice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="section name suffix (runs with other knobs side by side)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "finetune.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_fusion.methods.torch_runner import resolve_torch_device

    device = resolve_torch_device(args.device)
    cmd = "python " + " ".join(["benchmarks/finetune.py", *(argv if argv is not None else sys.argv[1:])])
    sections = {}
    for part in args.parts:
        t0 = time.time()
        body = PARTS[part](args, device)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        sections[part + (f"-{args.tag}" if args.tag else "")] = "\n".join(
            body
            + [
                "",
                f"*Generated by `{cmd}` on {device} ({torch.get_num_threads()} thread(s), "
                f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, shared with other jobs: "
                f"load average {load:.1f} at the end; wall seconds are upper bounds). Section time {time.time() - t0:.0f} s.*",
            ]
        )
        print(sections[list(sections)[-1]], flush=True)
    from napari_fusion.io.atomic import atomic_path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = _update_sections(out, sections, "# Fine-tuning from painted labels\n\nWritten by `benchmarks/finetune.py` (issue 8); each section says the command that produced it.")
    with atomic_path(out) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
