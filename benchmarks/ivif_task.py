"""Does the task-driven fused image serve the task? MSRS objects (person, bicycle, car) from boxes.

The claim of task-driven fusion, measured as the task issue asks: ONE task model and ONE training
budget (steps, crops, batch, seed, the same box labels) trained on each input in turn, for each of
three task models (``--task-models``):

- ``det``: a detector, the shipped detection head's architecture on the input's filter features
  (``_task_detector``; boxes from object centres and sizes),
- ``forest``: an ilastik-style pixel random forest on the same filter features,
- ``unet``: the small U-Net of ``tdfusion`` (``methods.segmenter.Segmenter``) on the raw input,

the last two segmenting (weak box labels; boxes = connected components), and the inputs:

- ``ir`` / ``vi``: infrared alone, visible alone (gray / Y),
- ``stack``: both as two channels (the network sees both, no fusion),
- ``average`` / ``max``: the classical baselines,
- ``gifnet``: the task-agnostic learned fusion,
- ``tdfusion``: the task-driven fused image of the shipped ``tdfusion`` model (the claim's image),
- ``multitaskvif-ivif``: the fused image of the multi-task model trained with the boxes' labels,

on the 192 MSRS train-split pairs, scored on the 49 test-split pairs (``split.csv``): box mAP@0.5
(pycocotools through ``napari_fusion.boxes.box_map``) and inner-box pixel IoU (background,
person, car; a 4-pixel ring around each box ignored), for night and day pairs separately, over
``--seeds`` seeds (mean and spread). Every fused image comes from ``napari_fusion.fuse`` on the image
files as a user has them (visible RGB; the fused RGB result's Y is what the network sees).

Then the shipped task models end to end (``napari_fusion.detect``: fuse + segment + boxes):
``tdfusion`` and, when registered, ``multitaskvif-ivif``.

    python benchmarks/ivif_task.py --threads 1 --steps 1000 --crop 64 --seeds 0 1 2 --det-steps 1500
    python benchmarks/ivif_task.py --parts shipped          # only the end-to-end table

writes docs/results/ivif_task.md and .csv (one row per input and seed); per-run results are cached
in ``--cache`` (a folder) so a run split over several processes or interrupted resumes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, markdown_table, print_flush, write_csv, write_text

INPUTS = ("ir", "vi", "stack", "average", "max", "gifnet", "tdfusion", "multitaskvif-ivif")
TASK_MODELS = ("forest", "unet", "det")
FUSED = ("average", "max", "gifnet", "tdfusion", "multitaskvif-ivif")
TASK_DRIVEN = ("tdfusion", "multitaskvif-ivif")  # fused images shaped by a task loss on the MSRS boxes
IOU_CLASSES = (0, 1, 3)  # background, person, car (bicycles are too few in the test split for pixel IoU)
NAMES = {0: "background", 1: "person", 2: "bicycle", 3: "car"}


# ----------------------------------------------------------------------------- data
def msrs_root() -> Path:
    from napari_fusion.training.data import shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "ivif" / "MSRS" / "split.csv").is_file():
        sys.exit("MSRS with split.csv not found under ../shared/data (see its README)")
    return root / "ivif" / "MSRS"


def split_names(root: Path) -> dict[str, list[str]]:
    from napari_fusion.training.data import pair_split

    out: dict[str, list[str]] = {"train": [], "test": []}
    for name, part in sorted(pair_split(root / "ir").items()):
        out[part].append(name)
    return out


def truth_boxes(root: Path, name: str, shape) -> list:
    from napari_fusion.boxes import read_yolo

    return read_yolo(root / "boxes" / "fusion" / (Path(name).stem + ".txt"), shape, n_classes=3,
                     names=["person", "bicycle", "car"])


def y_unit(x: np.ndarray) -> np.ndarray:
    """A fused/visible image as the network sees it: unit gray, or the Y of an RGB image."""
    from napari_fusion.color import rgb_to_ycbcr

    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float32) / scale
    if x.ndim == 3:
        x = rgb_to_ycbcr(x[..., :3])[..., 0]
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _model_tag(method: str) -> str:
    """A short hash of a learned method's weights file (cache key: a retrained model is re-fused)."""
    from napari_fusion.methods.registry import WEIGHTS_DIR, get_method

    w = get_method(method).weights
    if not w:
        return "classical"
    return hashlib.sha1((WEIGHTS_DIR / w).read_bytes()).hexdigest()[:10]


def fused_cached(root: Path, names: list[str], file: Path, method, device: str) -> dict[str, np.ndarray]:
    """{name: (1, H, W) float32 unit Y} of each MSRS pair fused by ``napari_fusion.fuse(ir, vi, method)``
    (``method``: a registered name or a loaded model), kept in ``file`` (8-bit) between runs."""
    import napari_fusion as nf

    file.parent.mkdir(parents=True, exist_ok=True)
    done = dict(np.load(file)) if file.is_file() else {}
    t0, n_new = time.perf_counter(), 0
    for n in names:
        if n not in done:
            fused = nf.fuse(str(root / "ir" / n), str(root / "vi" / n), method, device=device)
            done[n] = np.clip(np.rint(y_unit(fused) * 255), 0, 255).astype(np.uint8)
            n_new += 1
    if n_new:
        np.savez_compressed(file, **done)
        label = method if isinstance(method, str) else file.stem
        print_flush(f"fused {n_new} pairs with {label} through napari_fusion.fuse ({time.perf_counter() - t0:.0f} s)")
    return {n: done[n].astype(np.float32)[None] / 255.0 for n in names}


def load_inputs(root: Path, names: list[str], cache: Path, device: str, inputs=INPUTS) -> dict[str, dict[str, np.ndarray]]:
    """{name: {input: (C, H, W) float32 unit}} for every pair; fused ones via the public API (cached)."""
    from skimage import io as skio

    out: dict[str, dict[str, np.ndarray]] = {}
    for method in [m for m in FUSED if m in inputs]:
        for n, x in fused_cached(root, names, cache / f"fused_{method}_{_model_tag(method)}.npz", method, device).items():
            out.setdefault(n, {})[method] = x
    for n in names:
        ir = y_unit(skio.imread(str(root / "ir" / n)))
        vi = y_unit(skio.imread(str(root / "vi" / n)))
        out.setdefault(n, {}).update(ir=ir[None], vi=vi[None], stack=np.stack([ir, vi]))
    return out


def weak(root: Path, name: str, shape) -> np.ndarray:
    from napari_fusion.training.tdfusion import box_labels

    return box_labels(root / "boxes" / "fusion" / (Path(name).stem + ".txt"), shape)


# ----------------------------------------------------------------------------- one task network
def train_net(images: list[np.ndarray], labels: list[np.ndarray], steps: int, crop: int, batch: int, seed: int, lr: float = 2e-3):
    """The benchmark's task network: fixed architecture, budget, seed; only the input differs."""
    from napari_fusion.methods.segmenter import Segmenter
    from napari_fusion.training.losses import IGNORE_INDEX, class_weights_from_counts, task_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Segmenter(4, in_channels=images[0].shape[0])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    counts = sum(np.bincount(lab[lab >= 0].ravel(), minlength=4)[:4] for lab in labels)
    cw = class_weights_from_counts(counts)
    objects = [np.flatnonzero(lab.ravel() > 0) for lab in labels]
    with_obj = [i for i, o in enumerate(objects) if len(o)]
    seen = np.zeros(4)
    net.train()
    for _ in range(steps):
        X = np.empty((batch, images[0].shape[0], crop, crop), np.float32)
        Y = np.empty((batch, crop, crop), np.int64)
        for k in range(batch):
            if rng.random() < 0.5 and with_obj:  # half the crops near an object, as tdfusion trains
                i = with_obj[int(rng.integers(len(with_obj)))]
                H, W = labels[i].shape
                y, x = divmod(int(objects[i][int(rng.integers(len(objects[i])))]), W)
                y0 = int(np.clip(y - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, H - crop))
                x0 = int(np.clip(x - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, W - crop))
            else:
                i = int(rng.integers(len(images)))
                H, W = labels[i].shape
                y0, x0 = int(rng.integers(H - crop + 1)), int(rng.integers(W - crop + 1))
            x_ = images[i][:, y0 : y0 + crop, x0 : x0 + crop]
            y_ = labels[i][y0 : y0 + crop, x0 : x0 + crop]
            if rng.random() < 0.5:  # horizontal flips only: street scenes have an up
                x_, y_ = x_[..., ::-1], y_[..., ::-1]
            X[k], Y[k] = x_, y_
        seen += np.bincount(Y[Y >= 0].ravel(), minlength=4)[:4]
        logits = net(torch.from_numpy(X))
        loss = task_loss(logits, torch.from_numpy(Y), IGNORE_INDEX, cw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # the crops were re-balanced (object-centred, class weights): move the logits back to the class
    # prior of whole images (post-hoc logit adjustment at half strength, as multitaskvif-ivif ships)
    from napari_fusion.training.multitask import prior_adjustment

    net.eval()
    net.offsets = torch.tensor(prior_adjustment(counts, seen, cw.numpy(), PRIOR_STRENGTH), dtype=torch.float32).view(1, 4, 1, 1)
    return net


PRIOR_STRENGTH = 0.5


@torch.no_grad()
def predict(net, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) and class probabilities (4, H, W) of one (C, H, W) image (padded to 8)."""
    C, H, W = image.shape
    ph, pw = (-H) % 8, (-W) % 8
    x = np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    logits = net(torch.from_numpy(np.ascontiguousarray(x))[None]) + net.offsets
    p = torch.softmax(logits, 1)[0, :, :H, :W].numpy()
    return p.argmax(0).astype(np.int32), p


# ----------------------------------------------------------------------------- a pixel forest (the peer task model)
FOREST_PIXELS = 300  # pixels of each class sampled from each train pair (class-balanced)


def input_features(image: np.ndarray) -> np.ndarray:
    """(C, H, W) unit input -> (H, W, 20 C) filter features (the interactive head's filter bank)."""
    from napari_fusion.task.features import pixel_features

    return pixel_features(*image)


def train_forests(images: list[np.ndarray], labels: list[np.ndarray], seeds) -> dict:
    """An ilastik-style pixel classifier per seed: scikit-learn's random forest (50 trees, depth 10,
    as the interactive peer) on filter features of the input, fitted on class-balanced pixel samples
    of every train pair; its probabilities are moved half-way to the whole-image class prior (the
    samples were re-balanced), as the U-Net's logits are."""
    from sklearn.ensemble import RandomForestClassifier

    from napari_fusion.training.multitask import prior_adjustment

    rngs = {s: np.random.default_rng(s) for s in seeds}
    xs, ys = {s: [] for s in seeds}, {s: [] for s in seeds}
    counts = np.zeros(4)
    for image, lab in zip(images, labels):
        f = input_features(image)
        counts += np.bincount(lab[lab >= 0].ravel(), minlength=4)[:4]
        for s in seeds:
            for c in range(4):
                idx = np.flatnonzero(lab.ravel() == c)
                if len(idx):
                    pick = rngs[s].choice(idx, min(len(idx), FOREST_PIXELS), replace=False)
                    xs[s].append(f.reshape(-1, f.shape[-1])[pick])
                    ys[s].append(np.full(len(pick), c))
    out = {}
    for s in seeds:
        x, y = np.concatenate(xs[s]), np.concatenate(ys[s])
        rf = RandomForestClassifier(n_estimators=50, max_depth=10, n_jobs=1, random_state=s).fit(x, y)
        seen = np.bincount(y, minlength=4)[:4]
        out[s] = (rf, prior_adjustment(counts, seen, None, PRIOR_STRENGTH))
    return out


def forest_predict(model, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) and class probabilities (4, H, W) of the forest on (H, W, F) features."""
    rf, offsets = model
    H, W, F = feats.shape
    p = np.zeros((H * W, 4), np.float64)
    p[:, rf.classes_] = rf.predict_proba(feats.reshape(-1, F))
    p = p * np.exp(offsets)[None]
    p /= p.sum(1, keepdims=True).clip(min=1e-12)
    p = p.T.reshape(4, H, W).astype(np.float32)
    return p.argmax(0).astype(np.int32), p


def run_input_forest(root, split, data, inp: str, seeds, args) -> list[dict]:
    from napari_fusion.boxes import boxes_from_labels
    from napari_fusion.methods.tdfusion import IVIF_CLASSES

    train = split["train"]
    t0 = time.perf_counter()
    models = train_forests([data[n][inp] for n in train], [weak(root, n, data[n][inp].shape[1:]) for n in train], seeds)
    secs = (time.perf_counter() - t0) / len(seeds)
    preds = {s: {} for s in seeds}
    for n in split["test"]:
        f = input_features(data[n][inp])
        for s in seeds:
            lab, prob = forest_predict(models[s], f)
            preds[s][n] = (lab, boxes_from_labels(lab, IVIF_CLASSES, probs=prob, min_area=args.min_area))
    return [{"input": inp, "seed": s, "task_model": "forest", "train_seconds": round(secs, 1)}
            | score_predictions(root, split["test"], preds[s]) for s in seeds]


# ----------------------------------------------------------------------------- scores
def scores(preds: dict[str, tuple[np.ndarray, list]], truths: dict[str, tuple[np.ndarray, list]], names: list[str]) -> dict:
    """mAP@0.5 (mean and per class) and inner-box IoU (per class, mean) over ``names``."""
    from napari_fusion.boxes import box_map

    m = box_map([preds[n][1] for n in names], [truths[n][1] for n in names], names=["person", "bicycle", "car"])
    inter = np.zeros(4)
    union = np.zeros(4)
    for n in names:
        lab, truth = preds[n][0], truths[n][0]
        valid = truth >= 0
        for c in IOU_CLASSES:
            p, t = (lab == c) & valid, (truth == c) & valid
            inter[c] += np.logical_and(p, t).sum()
            union[c] += np.logical_or(p, t).sum()
    iou = {NAMES[c]: float(inter[c] / union[c]) if union[c] else float("nan") for c in IOU_CLASSES}
    out = {"map50": float(m.mean), "iou_mean": float(np.nanmean(list(iou.values())))}
    out |= {f"ap_{k}": float(v) for k, v in m.per_class.items()}
    out |= {f"iou_{k}": v for k, v in iou.items()}
    return out


def score_predictions(root, test, preds) -> dict:
    truths = {}
    for n in test:
        shape = preds[n][0].shape
        truths[n] = (weak(root, n, shape), truth_boxes(root, n, shape))
    night = [n for n in test if Path(n).stem.upper().endswith("N")]
    day = [n for n in test if n not in night]
    return {"all": scores(preds, truths, test), "night": scores(preds, truths, night), "day": scores(preds, truths, day)}


def run_input(root, split, data, inp: str, seed: int, args) -> dict:
    from napari_fusion.boxes import boxes_from_labels
    from napari_fusion.methods.tdfusion import IVIF_CLASSES

    train = split["train"]
    imgs = [data[n][inp] for n in train]
    labs = [weak(root, n, data[n][inp].shape[1:]) for n in train]
    t0 = time.perf_counter()
    net = train_net(imgs, labs, args.steps, args.crop, args.batch, seed)
    secs = time.perf_counter() - t0
    preds = {}
    for n in split["test"]:
        lab, prob = predict(net, data[n][inp])
        preds[n] = (lab, boxes_from_labels(lab, IVIF_CLASSES, probs=prob, min_area=args.min_area))
    return {"input": inp, "seed": seed, "train_seconds": round(secs, 1)} | score_predictions(root, split["test"], preds)


def run_file(model: str, inp: str, tag: str, seed: int, args) -> str:
    """The cache file of one run (its name holds everything the result depends on)."""
    if model == "unet":
        return f"run_{inp}_{tag}_s{seed}_{args.steps}x{args.batch}x{args.crop}_a{args.min_area}_p{PRIOR_STRENGTH}.json"
    if model == "forest":
        return f"run_forest_{inp}_{tag}_s{seed}_px{FOREST_PIXELS}_a{args.min_area}_p{PRIOR_STRENGTH}.json"
    return f"run_detf_{inp}_{tag}_s{seed}_{args.det_steps}x{args.batch}x{args.det_crop}.json"


def run_input_det(root, split, data, inp: str, seeds, args) -> list[dict]:
    """The detector task model (``_task_detector``) trained on one input's filter features, one per
    seed, scored on the test split; its IoU is that of its shown boxes (score >=
    ``boxes.SHOW_MIN_SCORE``) painted as weak labels."""
    import _task_detector as det
    from napari_fusion.boxes import SHOW_MIN_SCORE, weak_labels

    train, test = split["train"], split["test"]
    shapes = {n: data[n][inp].shape[1:] for n in train + test}
    tgts = det.targets([truth_boxes(root, n, shapes[n]) for n in train], [shapes[n] for n in train])
    feats = {n: det.filter_features(data[n][inp]) for n in train + test}
    out = []
    for seed in seeds:
        t0 = time.perf_counter()
        model = det.train([feats[n] for n in train], tgts, args.det_steps, args.det_crop, args.batch, seed)
        secs = time.perf_counter() - t0
        preds = {}
        for n in test:
            boxes = det.predict(model, feats[n], shapes[n])
            shown = [b for b in boxes if b.score >= SHOW_MIN_SCORE]
            preds[n] = (weak_labels(shown, shapes[n]), boxes)
        out.append({"input": inp, "seed": seed, "task_model": "det", "train_seconds": round(secs, 1)}
                   | score_predictions(root, test, preds))
    return out


def cached_runs(model: str, root, split, data, inp: str, tag: str, cache: Path, args,
                compute: bool = True) -> tuple[list[dict], list[int]]:
    """One task model's runs on one input, one per seed of ``args.seeds``, from their cache files
    (``run_file``); the missing ones are run and cached first (``compute=False``: only listed).
    Returns (runs in seed order, seeds still missing)."""
    files = {seed: cache / run_file(model, inp, tag, seed, args) for seed in args.seeds}
    todo = [seed for seed, f in files.items() if not f.is_file()]
    if todo and compute:
        if model in ("forest", "det"):
            new = (run_input_forest if model == "forest" else run_input_det)(root, split, data, inp, todo, args)
        else:
            new = [run_input(root, split, data, inp, seed, args) for seed in todo]
        cache.mkdir(parents=True, exist_ok=True)
        for r in new:
            files[r["seed"]].write_text(json.dumps(r))
    return ([json.loads(f.read_text()) for f in files.values() if f.is_file()],
            [seed for seed, f in files.items() if not f.is_file()])


def shipped(root, split, args) -> list[dict]:
    """The shipped task models end to end through ``napari_fusion.detect`` (fuse + segment + boxes)."""
    import napari_fusion as nf
    from napari_fusion.methods.registry import list_methods

    names = [m.name for m in list_methods(segmenting_only=True) if m.name in ("tdfusion", "multitaskvif-ivif")]
    rows = []
    for method in names:
        preds, t = {}, []
        for n in split["test"]:
            # the boxes as a user gets them (napari_fusion.detect: a detection head's, else the
            # labels' components); the labels (for the IoU) from fuse, timed apart
            ir, vi = str(root / "ir" / n), str(root / "vi" / n)
            t0 = time.perf_counter()
            boxes = nf.detect(ir, vi, method, min_area=args.min_area, device=args.device)
            t.append(time.perf_counter() - t0)
            res = nf.fuse(ir, vi, method, full=True, segment=True, device=args.device)
            preds[n] = (np.asarray(res.labels), boxes)
        rows.append({"input": method, "seed": "shipped", "seconds_per_pair": round(float(np.median(t)), 2)}
                    | score_predictions(root, split["test"], preds))
        print_flush(f"shipped {method}: mAP@0.5 {rows[-1]['all']['map50']:.3f}, IoU {rows[-1]['all']['iou_mean']:.3f}")
    return rows


# ----------------------------------------------------------------------------- tables
def mean_sd(vals: list[float]) -> str:
    v = [x for x in vals if x is not None and not math.isnan(x)]
    if not v:
        return "–"
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def tables(runs: list[dict], ship: list[dict], args) -> str:
    lines = []
    for part in ("all", "night", "day") if runs else ():
        rows = []
        for inp in [i for i in INPUTS if any(r["input"] == i for r in runs)]:
            rs = [r for r in runs if r["input"] == inp]
            rows.append([inp, len(rs)] + [mean_sd([r[part].get(k, float("nan")) for r in rs]) for k in
                        ("map50", "ap_person", "ap_bicycle", "ap_car", "iou_mean", "iou_person", "iou_car")])
        lines.append(f"### {part} test pairs\n")
        lines.append(markdown_table(["input", "seeds", "mAP@0.5", "AP person", "AP bicycle", "AP car", "IoU mean", "IoU person", "IoU car"], rows))
        lines.append("")
    if ship:
        rows = [[r["input"], r["seconds_per_pair"]] + [f"{r[p]['map50']:.3f}" for p in ("all", "night", "day")]
                + [f"{r[p]['iou_mean']:.3f}" for p in ("all", "night", "day")] for r in ship]
        lines.append("### the shipped task models end to end (`napari_fusion.detect`)\n")
        lines.append("Boxes as `detect` gives them: from a model's detection head where it has one (`multitaskvif-ivif`: "
                     "object centres and sizes), else connected components of its labels; IoU from `fuse(..., full=True)` "
                     "labels; seconds: `detect` per pair.\n")
        lines.append(markdown_table(["model", "s per pair", "mAP@0.5", "night", "day", "IoU mean", "night", "day"], rows))
        lines.append("")
    return "\n".join(lines)


def verdict(runs: list[dict]) -> str:
    """The claim, said plainly: does each task-driven fused image beat ir, vi, average and gifnet?"""
    by = {i: float(np.mean([r["all"]["map50"] for r in runs if r["input"] == i])) for i in INPUTS if any(r["input"] == i for r in runs)}
    compared = ("ir", "vi", "average", "gifnet")
    if any(k not in by for k in compared):
        return ("Not every input the claim compares with was measured in this run (missing: "
                + ", ".join(k for k in compared if k not in by) + "): no verdict.")
    text = ("Mean mAP@0.5 (all test pairs): " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])) + ". ")
    for fused in [f for f in TASK_DRIVEN if f in by]:
        lost = [k for k in compared if by[fused] <= by[k]]
        beaten = [k for k in compared if k not in lost]
        if not lost:
            text += f"**The claim holds for `{fused}`**: its fused image beats infrared, visible, average and gifnet-fused on mean mAP@0.5. "
        else:
            text += (f"**The claim does not hold for `{fused}`**: its fused image does not beat {', '.join(lost)}"
                     + (f" (it beats {', '.join(beaten)}). " if beaten else ". "))
    if not any(f in by for f in TASK_DRIVEN):
        text += "No task-driven fused image was measured in this run. "
    return text + f"Best input: `{max(by, key=by.get)}`."


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["claim", "shipped"], choices=["claim", "shipped"])
    ap.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--task-models", nargs="+", default=list(TASK_MODELS), choices=TASK_MODELS)
    ap.add_argument("--det-steps", type=int, default=1500, help="training steps of the detector task model")
    ap.add_argument("--det-crop", type=int, default=96, help="crop side of the detector task model (even)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-area", type=int, default=20, help="smallest component kept as a box (pixels)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "napari-fusion-bench" / "ivif_task"))
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--only-cached", nargs="*", choices=TASK_MODELS, default=None,
                    help="tables from the runs already in --cache (runs of other processes) for these task models "
                         "(none named: all); missing ones are listed")
    args = ap.parse_args(argv)
    cached_only = set() if args.only_cached is None else set(args.only_cached or TASK_MODELS)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = msrs_root()
    split = split_names(root)
    cache = Path(args.cache)
    runs: dict[str, list[dict]] = {}
    missing: list[str] = []
    if "claim" in args.parts:
        data = load_inputs(root, split["train"] + split["test"], cache, args.device, args.inputs)
        for model in args.task_models:
            runs[model] = []
            for inp in args.inputs:
                tag = _model_tag(inp) if inp in FUSED else "source"
                done, todo = cached_runs(model, root, split, data, inp, tag, cache, args, compute=model not in cached_only)
                missing += [f"{model} {inp} seed {seed}" for seed in todo]
                for r in done:
                    runs[model].append(r)
                    print_flush(f"{model} {inp} seed {r['seed']}: mAP@0.5 {r['all']['map50']:.3f} (night {r['night']['map50']:.3f}, "
                                f"day {r['day']['map50']:.3f}), IoU {r['all']['iou_mean']:.3f} ({r['train_seconds']} s)")
    ship = shipped(root, split, args) if "shipped" in args.parts else []
    sections = []
    for model, rs in runs.items():
        if not rs:
            continue
        what = {
            "unet": f"**Task network: the small U-Net** of `tdfusion`, {args.steps} steps of {args.batch} crops of "
                    f"{args.crop} px (half near an object, class-weighted cross-entropy)",
            "forest": f"**Task model: a pixel random forest** (scikit-learn, 50 trees, depth 10, as the interactive peer) on "
                      f"20 filter features per input channel, {FOREST_PIXELS} pixels of each class from each train pair",
            "det": f"**Task model: a detector** — the shipped detection head's architecture (four dilated convolutions; "
                   f"CenterNet heat map per object class + log box size at 1/2 resolution; its targets, loss and decoding) "
                   f"on the 20 filter features per input channel (at 1/2 resolution, standardised), {args.det_steps} steps "
                   f"of {args.batch} crops of {args.det_crop} px (half around an object); boxes are its peaks, IoU that of "
                   f"its boxes with score >= 0.3 painted as labels",
        }[model]
        sections.append(f"## {what}\n\n" + verdict(rs) + "\n\n" + tables(rs, [], args))
    text = (
        "# Task-driven fusion on MSRS objects (person, bicycle, car)\n\n"
        f"Measured {environment(args.device)}; `python benchmarks/ivif_task.py "
        f"--steps {args.steps} --batch {args.batch} --crop {args.crop} --seeds {' '.join(map(str, args.seeds))} "
        f"--task-models {' '.join(args.task_models)} --det-steps {args.det_steps} --det-crop {args.det_crop}`.\n"
        f"{len(split['train'])} train-split pairs, {len(split['test'])} test-split pairs (MSRS `split.csv`). Each task model, "
        "with one budget, is trained on each input in turn; the segmenting ones' boxes = connected components of the "
        "predicted labels (score = mean class probability; scores moved half-way to the whole-image class prior, "
        "as the training pixels were re-balanced), the detector's = its heat-map peaks; mAP@0.5 by pycocotools; IoU = inner-box pixel IoU "
        "(background, person, car; a 4-pixel ring around each box ignored). Mean ± spread (std) over seeds.\n\n"
        + (f"Not run (time): {', '.join(missing)}.\n\n" if missing else "")
        + "\n".join(sections)
        + (tables([], ship, args) if ship else "")
    )
    print_flush(text)
    if not args.no_write:
        write_text(RESULTS / "ivif_task.md", text)
        flat = []
        for r in [r for rs in runs.values() for r in rs] + ship:
            for part in ("all", "night", "day"):
                flat.append([r.get("task_model", "unet" if r["seed"] != "shipped" else "end to end"), r["input"], r["seed"], part] + [r[part].get(k) for k in
                            ("map50", "ap_person", "ap_bicycle", "ap_car", "iou_mean", "iou_background", "iou_person", "iou_car")])
        write_csv(RESULTS / "ivif_task.csv", ["task_model", "input", "seed", "pairs", "map50", "ap_person", "ap_bicycle", "ap_car",
                                              "iou_mean", "iou_background", "iou_person", "iou_car"], flat)


if __name__ == "__main__":
    main()
