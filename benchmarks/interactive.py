"""Paint -> result: the instant task head against an ilastik-style random forest, on the same strokes.

The peer (issue 15): ``skimage.feature.multiscale_basic_features`` (sigma 1..16) of each source,
stacked, and a scikit-learn ``RandomForestClassifier(n_estimators=50, max_depth=10)`` fitted on the
painted pixels. Ours: ``napari_fusion.finetune(model, a, b, strokes, steps=0|N)`` (the public API)
and the tuned model applied with ``napari_fusion.fuse(a, b, tuned, full=True).labels``. Both see
the sources as the engine prepares them (unit gray/Y; the BraTS models' own intensity mapping).

(strokes) MSRS 00055D: the stroke rule of ``benchmarks/finetune.py`` (person, road, sky, foliage),
    a fifth of the strokes held out; held-out stroke accuracy and seconds to the first result.
(boxes) MSRS object boxes: strokes drawn from the boxes of 4 train-split pairs (2 night, 2 day; one
    480x2560 mosaic to paint on): a short vertical stroke through each box's centre, short background
    strokes outside every box; scored on the test-split pairs (``split.csv``): inner-box pixel IoU of
    background, person and car (a 4-pixel ring around each box ignored), night and day. Variants:
    the head on IR/visible features only (no fused image), on the untuned fused image, and after
    ``--steps`` task-driven steps (the fusion adapts to the strokes).
(brats) BraTS: strokes from the ground truth of 3 test slices (a mosaic; background painted 5),
    scored on the other test slices: whole-tumour and mean tumour-class Dice; the shipped
    ``multitaskvif`` untuned, its instant head, and a head on a model that knows no tumour (gifnet).

    python benchmarks/interactive.py --parts strokes boxes brats --threads 1
updates the sections it ran of docs/results/interactive.md (+ .csv) and prints the tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, markdown_table, print_flush, read_csv, write_csv, write_text

IGNORE = 255
CLASSES = {0: "background", 1: "person", 3: "car"}  # scored (bicycle, label 2, is too rare to score)


# ----------------------------------------------------------------------------- the peer
def peer_features(*images: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    n = _threads()  # the peer gets the threads our head gets (--threads)
    return np.concatenate([multiscale_basic_features(x, sigma_min=1, sigma_max=16, workers=n) for x in images], -1)


def _threads() -> int:
    import torch

    return max(1, int(torch.get_num_threads()))


def fit_peer(feats: list[np.ndarray], strokes: list[np.ndarray], seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier

    x = np.concatenate([f[s > 0] for f, s in zip(feats, strokes)])
    y = np.concatenate([s[s > 0] for s in strokes])
    return RandomForestClassifier(n_estimators=50, max_depth=10, n_jobs=_threads(), random_state=seed).fit(x, y)


def peer_predict(rf, feats: np.ndarray) -> np.ndarray:
    return rf.predict(feats.reshape(-1, feats.shape[-1])).reshape(feats.shape[:2])


class Clock:
    """Wall and CPU seconds of this process (CPU: what an unloaded core would take, roughly)."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def prepared(model, a, b):
    """Unit A, B as the engine gives them to ``model``."""
    from napari_fusion.engine.pipeline import input_intensity_of, prepare_pair, resolve_runner
    from napari_fusion.task.loop import base_of

    runner, _, _ = resolve_runner(model, "cpu")
    p = prepare_pair(a, b, input_intensity=input_intensity_of(base_of(runner)))
    return p.a, p.b


def labels_of(tuned, a, b) -> np.ndarray:
    from napari_fusion import fuse

    return fuse(a, b, tuned, full=True, device="cpu").labels


# ----------------------------------------------------------------------------- (strokes) MSRS 00055D
def part_strokes(args) -> tuple[str, list]:
    from finetune import msrs_strokes
    from napari_fusion import finetune
    from napari_fusion.training.data import shared_data_dir

    root = shared_data_dir() / "ivif" / "MSRS"
    from napari_fusion.io import read_image

    ir, vi = read_image(root / "ir" / "00055D.png").data, read_image(root / "vi" / "00055D.png").data
    ua, ub = prepared("gifnet", ir, vi)
    rng = np.random.default_rng(args.seed)
    lab, sid, names = msrs_strokes(ua, ub, rng, 0.01)
    ids = np.unique(sid[sid > 0])
    held = np.isin(sid, rng.choice(ids, size=max(1, len(ids) // 5), replace=False))
    train = np.where(held, 0, lab)
    rows, csv_rows = [], []
    with Clock() as c:
        f = peer_features(ua, ub)
        rf = fit_peer([f], [train])
        pred = peer_predict(rf, f)
    acc = float((pred[held] == lab[held]).mean())
    rows.append(["peer: random forest on IR/visible filters", acc, c.wall, c.cpu])
    for model in args.models:
        from napari_fusion.engine.pipeline import resolve_runner

        runner, _, _ = resolve_runner(model, "cpu")
        runner.fuse(ua, ub)  # warm-up (first-call costs are not the method's)
        with Clock() as c:
            tuned = finetune(runner, ir, vi, train, steps=0, device="cpu")
            pred = labels_of(tuned, ir, vi)
        acc = float((pred[held] == lab[held]).mean())
        rows.append([f"head on {model} (instant)", acc, c.wall, c.cpu])
    for r in rows:
        csv_rows.append(["strokes", r[0], "held-out accuracy", r[1]])
        csv_rows.append(["strokes", r[0], "seconds", r[2]])
    text = f"""## MSRS 00055D: held-out strokes ({int((lab > 0).sum())} painted pixels in {len(ids)} strokes, {int(held.sum())} held out)

Seconds from the strokes to the labels on the whole 480x640 pair through the API (fit + predict; for
the head also the model's fused image, computed twice: once to fit, once by `fuse` applying the tuned
model). The Fine-tune widget keeps the fused image and features between clicks: its click-to-labels
times are in [widget_timeline.md](widget_timeline.md).

{markdown_table(["method", "held-out stroke accuracy", "seconds (wall)", "seconds (CPU)"], rows, digits=[0, 3, 2, 2])}
"""
    return text, csv_rows


# ----------------------------------------------------------------------------- (boxes) MSRS object boxes
def _msrs():
    from napari_fusion.training.data import pair_split, shared_data_dir

    root = shared_data_dir() / "ivif" / "MSRS"
    return root, pair_split(root / "ir")


def _load_pair(root, name):
    from napari_fusion.boxes import read_yolo
    from napari_fusion.io import read_image

    ir, vi = read_image(root / "ir" / name).data, read_image(root / "vi" / name).data
    boxes = read_yolo(root / "boxes" / "fusion" / (Path(name).stem + ".txt"), ir.shape[:2], n_classes=3)
    return ir, vi, boxes


def box_strokes(boxes, shape, rng, n_background: int = 30, length: int = 20) -> np.ndarray:
    """A vertical stroke (half the box's height, 2 px wide) through each box's centre; short
    horizontal background strokes (value 4) that touch no box or its 6-px ring."""
    from napari_fusion.boxes import weak_labels

    lab = np.zeros(shape, np.int32)
    H, W = shape
    for bx in boxes:
        cy, cx, h = (bx.y0 + bx.y1) / 2, (bx.x0 + bx.x1) / 2, bx.y1 - bx.y0
        lab[max(int(cy - h / 4), 0) : min(int(cy + h / 4) + 1, H), max(int(cx) - 1, 0) : int(cx) + 1] = bx.label
    taken = weak_labels(boxes, shape, ignore_ring=6, ignore_value=9) > 0
    k = tries = 0
    while k < n_background and tries < 10_000:
        tries += 1
        y, x = int(rng.integers(H)), int(rng.integers(W - length))
        if not taken[y, x : x + length].any() and not lab[y, x : x + length].any():
            lab[y, x : x + length] = 4
            k += 1
    return lab


def _iou_counts(pred, truth, counts):
    valid = truth != IGNORE
    for c in CLASSES:
        p, t = (pred == c) & valid, (truth == c) & valid
        counts[c][0] += int((p & t).sum())
        counts[c][1] += int((p | t).sum())


def part_boxes(args) -> tuple[str, list]:
    from napari_fusion import finetune
    from napari_fusion.boxes import weak_labels
    from napari_fusion.engine.pipeline import resolve_runner
    from napari_fusion.task import fit_head, pixel_features  # the ablation: a head on IR/visible only

    root, split = _msrs()
    train = sorted(n for n, s in split.items() if s == "train")
    test = sorted(n for n, s in split.items() if s == "test")
    if args.limit:
        test = test[: args.limit]

    def n_obj(n):
        c = [b.cls for b in _load_pair(root, n)[2]]
        return min(c.count(0), 3) + min(c.count(2), 3)

    picks = sorted((n for n in train if "N" in n), key=n_obj)[-2:] + sorted((n for n in train if "D" in n), key=n_obj)[-2:]
    rng = np.random.default_rng(args.seed)
    pairs = [_load_pair(root, n) for n in picks]
    ir = np.concatenate([p[0] for p in pairs], 1)
    vi = np.concatenate([p[1] for p in pairs], 1)
    strokes = np.concatenate([box_strokes(p[2], p[0].shape[:2], rng) for p in pairs], 1)
    net_strokes = np.where(strokes == 4, 5, strokes)  # background painted 5 (value 4 would be a class)
    print_flush(f"boxes: strokes on {picks}: {np.bincount(strokes.ravel())[1:].tolist()} px of classes 1..4")

    # seconds from the strokes to labels of the painted mosaic: "cold" computes everything (features;
    # for a model its fused image and labels too), "warm" refits with those kept, as the Fine-tune
    # widget's Live refit and a second click do (tune_steps' cache; the peer's features)
    variants: dict[str, object] = {}
    timing: dict[str, tuple[float, float]] = {}
    ua, ub = prepared("gifnet", ir, vi)
    peer_strokes = np.where(strokes == 4, 5, strokes)
    with Clock() as cold:
        f_peer = peer_features(ua, ub)
        rf = fit_peer([f_peer], [peer_strokes])
        peer_predict(rf, f_peer)
    with Clock() as warm:
        peer_predict(fit_peer([f_peer], [peer_strokes]), f_peer)
    del f_peer
    timing["peer: random forest on IR/visible filters"] = (cold.wall, warm.wall)
    variants["peer: random forest on IR/visible filters"] = ("peer", rf)
    for model in args.models:
        runner, _, _ = resolve_runner(model, "cpu")
        runner.fuse(ua[:64, :64], ub[:64, :64])  # warm-up (first-call costs are not the method's)
        names = {c.index: c.name for c in (getattr(runner, "classes", None) or ())}
        if names.get(1) == "person" and names.get(3) == "car":  # a model trained on the MSRS boxes
            variants[f"{model} as shipped (no strokes)"] = ("api", runner)
            timing[f"{model} as shipped (no strokes)"] = (float("nan"), float("nan"))
        cache: dict = {}
        with Clock() as cold:
            tuned = finetune(runner, ir, vi, net_strokes, steps=0, device="cpu", background_value=5, cache=cache)
        with Clock() as warm:
            finetune(runner, ir, vi, net_strokes, steps=0, device="cpu", background_value=5, cache=cache)
        del cache
        variants[f"head on {model} (instant)"] = ("api", tuned)
        timing[f"head on {model} (instant)"] = (cold.wall, warm.wall)
    if args.steps:
        with Clock() as c:
            variants[f"head on tdfusion after {args.steps} task-driven steps"] = (
                "api", finetune("tdfusion", ir, vi, net_strokes, steps=args.steps, device="cpu", background_value=5))
        timing[f"head on tdfusion after {args.steps} task-driven steps"] = (c.wall, float("nan"))
    # ablation: the same head on IR/visible features only (no fused image)
    with Clock() as cold:
        f_ab = pixel_features(ua, ub)
        head_ab = fit_head(f_ab, net_strokes, background_value=5)
    with Clock() as warm:
        fit_head(f_ab, net_strokes, background_value=5)
    del f_ab
    timing["head on IR/visible only (ablation)"] = (cold.wall, warm.wall)
    variants["head on IR/visible only (ablation)"] = ("ab", head_ab)

    counts = {k: {part: {c: [0, 0] for c in CLASSES} for part in ("night", "day", "all")} for k in variants}
    t_apply = {k: 0.0 for k in variants}
    for i, name in enumerate(test):
        a, b, boxes = _load_pair(root, name)
        truth = weak_labels(boxes, a.shape[:2], ignore_ring=4, ignore_value=IGNORE)
        ta, tb = prepared("gifnet", a, b)
        part = "night" if "N" in name else "day"
        for k, (kind, m) in variants.items():
            t0 = time.perf_counter()
            if kind == "peer":
                pred = peer_predict(m, peer_features(ta, tb))
                pred = np.where(pred == 5, 0, pred)
            elif kind == "ab":
                pred = m.predict(pixel_features(ta, tb))
            else:
                pred = labels_of(m, a, b)
            t_apply[k] += time.perf_counter() - t0
            for p in (part, "all"):
                _iou_counts(pred, truth, counts[k][p])
        if (i + 1) % 10 == 0:
            print_flush(f"boxes: {i + 1}/{len(test)} test pairs")
    rows, csv_rows = [], []
    peer_warm = timing["peer: random forest on IR/visible filters"][1]
    for k in variants:
        row = [k]
        for part in ("all", "night", "day"):
            ious = [counts[k][part][c][0] / max(counts[k][part][c][1], 1) for c in CLASSES]
            row += ([float(np.mean(ious))] + ious) if part == "all" else [float(np.mean(ious))]
            csv_rows += [["boxes", k, f"IoU {part} {CLASSES[c]}", v] for c, v in zip(CLASSES, ious)]
        row += [*timing[k], timing[k][1] / peer_warm if peer_warm else float("nan"), t_apply[k] / len(test)]
        rows.append(row)
        csv_rows += [["boxes", k, "seconds to labels cold", timing[k][0]], ["boxes", k, "seconds to labels warm", timing[k][1]]]
    headers = ["method", "mean IoU", "IoU background", "IoU person", "IoU car", "mean IoU night", "mean IoU day",
               "s to labels, cold", "s to labels, warm", "warm / peer warm", "s per test pair"]
    n_night = sum("N" in n for n in test)
    text = f"""## MSRS object boxes: strokes from 4 train pairs, inner-box IoU on {len(test)} test pairs ({n_night} night)

Stroke pairs {", ".join(picks)} (one 480x2560 mosaic), {int((strokes > 0).sum())} painted pixels. Truth:
the boxes of `boxes/fusion` as weak labels (inside a box its class, the smaller box wins; a 4-px ring
ignored). IoU pooled over the test pairs. Seconds (wall, one thread) from the strokes to labels of
the whole painted mosaic: *cold* computes everything (the filter features; for a model its fused
image and labels of the mosaic too; for the task-driven row its training steps), *warm* refits with
those kept, as the Fine-tune widget's Live refit and a second click do (the peer keeps its features).
"s per test pair": applying the fitted model to one 480x640 test pair.

{markdown_table(headers, rows, digits=[0, 3, 3, 3, 3, 3, 3, 1, 1, 2, 2], bold_max=range(1, 7))}
"""
    return text, csv_rows


# ----------------------------------------------------------------------------- (brats)
def part_brats(args) -> tuple[str, list]:
    sys.path.insert(0, str(Path(__file__).parent))
    from _brats import read_case, test_cases
    from finetune import draw_strokes
    from napari_fusion import finetune
    from napari_fusion.engine.pipeline import resolve_runner

    cases = test_cases()
    flair, t1c, seg, z = read_case(cases[0])
    order = sorted(z, key=lambda k: -int((seg[k] > 0).sum()))
    pick: list[int] = []
    for k in order:
        if all(abs(k - j) >= 6 for j in pick):
            pick.append(int(k))
        if len(pick) == 3:
            break
    fa, fb = np.asarray(flair.data), np.asarray(t1c.data)
    ma, mb = np.concatenate([fa[k] for k in pick], 1), np.concatenate([fb[k] for k in pick], 1)
    truth_m = np.concatenate([seg[k] for k in pick], 1)
    rng = np.random.default_rng(args.seed)
    masks = {v: truth_m == c for c, v in ((0, 5), (1, 1), (2, 2), (3, 3), (4, 4))}
    strokes, _ = draw_strokes(masks, 0.01 / 5, rng)
    evals = []  # (flair slice, t1c slice, truth) of both cases, every 3rd kept slice, +-2 around the stroke slices out
    for ci, case in enumerate(cases):
        f2, t2, s2, z2 = (flair, t1c, seg, z) if ci == 0 else read_case(case)
        for k in z2[:: args.stride]:
            if ci == 0 and any(abs(k - j) <= 2 for j in pick):
                continue
            evals.append((np.asarray(f2.data[k]), np.asarray(t2.data[k]), s2[k]))
    print_flush(f"brats: strokes on case 0 slices {pick}; scoring {len(evals)} slices")

    def score(predict):
        cm = np.zeros((5, 5), np.int64)
        for a, b, t in evals:
            p = predict(a, b)
            cm += np.bincount(t.ravel().astype(np.int64) * 5 + p.ravel().astype(np.int64), minlength=25).reshape(5, 5)
        dice = [2 * cm[c, c] / max(cm[c, :].sum() + cm[:, c].sum(), 1) for c in range(5)]
        wt = 2 * cm[1:, 1:].sum() / max(cm[1:, :].sum() + cm[:, 1:].sum(), 1)
        return [float(wt), float(np.mean(dice[1:]))] + [float(d) for d in dice[1:]]

    rows, csv_rows = [], []
    mt, _, _ = resolve_runner("multitaskvif", "cpu")
    # the peer on the same unit images the shipped model sees
    pa, pb = prepared(mt, ma, mb)
    with Clock() as c:
        rf = fit_peer([peer_features(pa, pb)], [strokes])
    rows.append(["peer: random forest on FLAIR/T1c filters", *score(lambda a, b: np.where((p := peer_predict(rf, peer_features(*prepared(mt, a, b)))) == 5, 0, p)), c.wall])
    rows.append(["multitaskvif as shipped (untuned)", *score(lambda a, b: labels_of(mt, a, b)), 0.0])
    for model in ("multitaskvif", "gifnet"):
        with Clock() as c:
            tuned = finetune(model, ma, mb, strokes, steps=0, device="cpu", background_value=5)
        rows.append([f"head on {model} (instant)", *score(lambda a, b: labels_of(tuned, a, b)), c.wall])
    for r in rows:
        csv_rows += [["brats", r[0], "Dice whole tumour", r[1]], ["brats", r[0], "mean Dice tumour classes", r[2]]]
    text = f"""## BraTS: strokes on 3 test slices, Dice on {len(evals)} other test slices

Strokes from the ground truth of case {cases[0].name}, axial slices {pick} (one 240x720 mosaic; ~1% of
the pixels; background painted 5), every slice given to the API on its own (as exported 2-D slices).
`multitaskvif` knows the tumour classes already: its instant head reads its labels too and keeps them
where nothing is painted (2% replay). `gifnet` knows no tumour: the head learns from the strokes alone.

{markdown_table(["method", "Dice whole tumour", "mean Dice tumour classes", "necrosis", "oedema", "non-enhancing", "enhancing", "seconds to fit"], rows, digits=[0, 3, 3, 3, 3, 3, 3, 1], bold_max=range(1, 7))}
"""
    return text, csv_rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["strokes", "boxes", "brats"], choices=["strokes", "boxes", "brats"])
    ap.add_argument("--models", nargs="+", default=["gifnet", "tdfusion", "multitaskvif"])
    ap.add_argument("--steps", type=int, default=10, help="task-driven steps of the boxes section's tdfusion row (0: skip)")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N test pairs of the boxes section")
    ap.add_argument("--stride", type=int, default=3, help="BraTS: every k-th kept slice is scored")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "interactive"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sections, csv_rows = [], []
    for part in args.parts:
        text, rows = {"strokes": part_strokes, "boxes": part_boxes, "brats": part_brats}[part](args)
        print_flush(text)
        sections.append(text)
        csv_rows += rows
    out = Path(args.out)
    command = f"`python benchmarks/interactive.py {' '.join(sys.argv[1:] if argv is None else argv)}` ({environment('cpu')})"
    sections = [t.replace("\n\n", f"\n\nWritten by {command}.\n\n", 1) for t in sections]
    write_sections(out, sections, csv_rows)
    return 0


HEADER = """# Paint -> result: the instant task head vs an ilastik-style random forest

Each section is written by the command it names (a run updates the sections it ran and keeps the
others); rerun them rather than editing this file. The protocols: `benchmarks/interactive.py`.
"""


def write_sections(out: Path, sections: list[str], csv_rows: list) -> None:
    """Replace the sections (by their ``## `` heading's first words) of ``out``.md and their rows of
    ``out``.csv; keep the others."""
    md, csv_path = out.with_suffix(".md"), out.with_suffix(".csv")
    old = md.read_text(encoding="utf-8").split("\n## ")[1:] if md.is_file() else []
    key = lambda text: " ".join(text.lstrip("# ").split()[:2])  # noqa: E731 - "MSRS 00055D:", "MSRS object", "BraTS: strokes"
    new_keys = {key(t) for t in sections}
    kept = ["## " + t.rstrip("\n") + "\n" for t in old if key(t) not in new_keys]
    write_text(md, HEADER + "\n" + "\n".join(kept + [t.rstrip("\n") + "\n" for t in sections]))
    ran = {r[0] for r in csv_rows}
    rows = [[r["section"], r["method"], r["quantity"], r["value"]] for r in read_csv(csv_path) if r["section"] not in ran] if csv_path.is_file() else []
    write_csv(csv_path, ["section", "method", "quantity", "value"], rows + csv_rows)


if __name__ == "__main__":
    sys.exit(main())
