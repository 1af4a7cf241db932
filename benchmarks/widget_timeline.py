"""Timeline of the Fine-tune widget, as a user sees it (issue 15, "Timeline in the widget path").

A real napari viewer (under Xvfb), the shipped infrared/visible sample (RoadScene FLIR_00211,
301x496, RGB visible), strokes of three classes painted with the brush (simulated mouse drags: press,
moves, release, as napari's paint mode gets them), then the **Fine-tune** button clicked: seconds
from the click to the first update of the result Labels layer (its insertion), and to each later
update (the layer's ``events.data``). Per model (``gifnet``, ``tdfusion``): a first click with Steps
0 (labels head only), then one more stroke and a second click (``gifnet``: head only again, its
fusion is not trained; ``tdfusion``: ``--steps`` fusion steps after the instant result). Then
**Live**: a new stroke, and the seconds from the mouse release to the Labels update. The same on a
480x640 MSRS night pair opened from its files (strokes through its object boxes, ``multitaskvif-ivif``)
and on a 3-slice BraTS mosaic (FLAIR/T1c slices side by
side from the first ``labeled/BraTS2015_deepmedic/test`` case, read with
``napari_fusion.io.read_image``; strokes drawn from the ground truth) with ``multitaskvif``, when the
shared data folder is there.

Run::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/widget_timeline.py --steps 10 --threads 1

writes ``docs/results/widget_timeline.md`` (``--out``) with the command, the machine's load average
before and after, and one row per run. Times are wall seconds on the GUI thread (when the layer
changed, not when the screen was redrawn); "CPU s" is this process's CPU time over the same span.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("NAPARI_FUSION_DEVICE", "cpu")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-fusion"

# Strokes a user could paint on the RoadScene sample (301x496): (class, row, col0, col1).
IVIF_STROKES = (
    (1, 168, 270, 326), (1, 182, 268, 330), (1, 196, 272, 326), (1, 172, 35, 85),  # the two cars
    (2, 232, 40, 460), (2, 268, 90, 420), (2, 210, 120, 230), (2, 214, 360, 470),  # road
    (3, 35, 20, 470), (3, 105, 120, 250), (3, 118, 350, 470), (3, 70, 250, 480),  # sky and trees
)
IVIF_NAMES = {1: "car", 2: "road", 3: "sky & trees"}
IVIF_MORE = ((2, 250, 60, 200), (3, 20, 100, 400), (2, 284, 220, 420))  # painted between clicks
IVIF_LIVE_STROKE = (2, 290, 60, 440)  # one more road stroke, painted with Live on
BRATS_NAMES = {1: "necrosis", 2: "edema", 3: "non-enhancing", 4: "enhancing", 5: "healthy brain"}


# --------------------------------------------------------------------------------------------------
# the GUI side


def _spin(cond, timeout: float) -> bool:
    """Run Qt's event loop (idle between events, as napari's own) until ``cond()`` or the timeout;
    ``cond`` is checked every 20 ms."""
    from qtpy.QtCore import QEventLoop, QTimer

    end = time.perf_counter() + timeout
    if cond():
        return True
    loop, timer = QEventLoop(), QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: (cond() or time.perf_counter() > end) and loop.quit())
    timer.start()
    loop.exec()
    timer.stop()
    return bool(cond())


def _brush(layer, label: int, points, size: int = 3) -> None:
    """One brush stroke through ``points`` (data coordinates): press, moves, release."""
    from dataclasses import dataclass

    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    @dataclass
    class Event:
        type: str
        position: tuple
        is_dragging: bool = False
        dims_displayed: tuple = (0, 1)
        dims_point: tuple = (0, 0)
        view_direction: tuple | None = None
        pos: tuple = (0, 0)
        button: int = 1
        handled: bool = False

    layer.mode = "paint"
    layer.selected_label = int(label)
    layer.brush_size = size
    pts = [tuple(float(c) for c in p) for p in points]
    mouse_press_callbacks(layer, ReadOnlyWrapper(Event("mouse_press", pts[0])))
    for p in pts[1:]:
        mouse_move_callbacks(layer, ReadOnlyWrapper(Event("mouse_move", p, is_dragging=True)))
    mouse_release_callbacks(layer, ReadOnlyWrapper(Event("mouse_release", pts[-1])))


def _paint_rows(layer, strokes) -> None:
    for c, r, c0, c1 in strokes:
        _brush(layer, c, [(r + 1, x) for x in np.linspace(c0, c1, max(2, (c1 - c0) // 8))])


def _strokes_layer(viewer, shape, names: dict[int, str], name: str = "strokes"):
    import pandas as pd

    feats = pd.DataFrame({"index": [0, *names], "class": ["unlabelled", *names.values()]})
    return viewer.add_labels(np.zeros(shape, np.int32), name=name, features=feats)


def _new_scene(viewer, w, add_sources, names: dict[int, str], paint):
    """A new image for the widget: the viewer's layers removed, ``add_sources()`` (-> layers A, B),
    a strokes layer on A's grid painted by ``paint(layer)``, and the widget's combos set to them."""
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    la, lb = add_sources()
    strokes = _strokes_layer(viewer, la.data.shape[:2], names)
    paint(strokes)
    w.source_a.set_layer(la)
    w.source_b.set_layer(lb)
    w.strokes.set_layer(strokes)
    return strokes


def _is_result_labels(layer) -> bool:
    info = (getattr(layer, "metadata", None) or {}).get("napari_fusion") or {}
    return info.get("made_by") == "fine-tune" and info.get("role") == "labels"


class _Watch:
    """Seconds (since ``start``) of every change of the widget's result Labels layer(s)."""

    def __init__(self, viewer) -> None:
        self.viewer, self.t0, self.c0, self.times, self.cpu = viewer, 0.0, 0.0, [], []
        self._hooked: set[int] = set()
        viewer.layers.events.inserted.connect(self._inserted)
        for layer in viewer.layers:
            if _is_result_labels(layer):
                self._hook(layer)

    def start(self) -> None:
        self.t0, self.c0, self.times, self.cpu = time.perf_counter(), time.process_time(), [], []

    def _mark(self, *_):
        self.times.append(time.perf_counter() - self.t0)
        self.cpu.append(time.process_time() - self.c0)

    def _hook(self, layer) -> None:
        if id(layer) not in self._hooked:
            self._hooked.add(id(layer))
            layer.events.data.connect(self._mark)

    def _inserted(self, event) -> None:
        layer = event.value
        if _is_result_labels(layer):
            self._mark()
            self._hook(layer)


def _finetune(viewer, w, watch, model: str, steps: int, timeout: float) -> dict:
    w.model.select(model)
    w.steps.setValue(steps)
    watch.start()
    w.finetune_button.click()
    if not _spin(lambda: not w.running, timeout):
        raise RuntimeError(f"{model}: still running after {timeout:.0f} s")
    total = time.perf_counter() - watch.t0
    if w.progress.format() != "done":
        raise RuntimeError(f"{model}: {w.progress.format()}: {w.status.text()}")
    entry = w.current_entry()
    return {
        "model": model, "steps": w.effective_steps(), "times": list(watch.times), "cpu": list(watch.cpu),
        "stages": [s for _, s in w.updates], "total": total, "losses": list(w.losses),
        "classes": [c.name for c in entry.runner.classes], "label": entry.label,
    }


def _live(viewer, w, watch, strokes, stroke, timeout: float) -> dict:
    """Live on (a first refit on the model just tuned), then one more stroke: release -> update."""
    watch.start()
    w.live.setChecked(True)
    _spin(lambda: bool(watch.times) and not w.live_running, timeout)
    first = watch.times[0] if watch.times else float("nan")
    _spin(lambda: False, 1.0)  # the user pauses
    c, r, c0, c1 = stroke
    watch.start()
    _paint_rows(strokes, [stroke])
    _spin(lambda: bool(watch.times) and not w.live_running, timeout)
    out = {"toggle": first, "stroke": watch.times[0] if watch.times else float("nan"),
           "stroke_cpu": watch.cpu[0] if watch.cpu else float("nan"), "status": w.status.text()}
    w.live.setChecked(False)
    return out


# --------------------------------------------------------------------------------------------------
# BraTS mosaic


def _brats_mosaic(n: int = 3):
    """(flair, t1c, strokes) of ``n`` axial slices of the first test case side by side, and the case name."""
    from napari_fusion.io import read_image
    from napari_fusion.training.data import shared_data_dir
    from scipy import ndimage as ndi

    root = shared_data_dir()
    if root is None:
        return None
    cases = sorted(p for p in (root / "labeled" / "BraTS2015_deepmedic" / "test").glob("*") if p.is_dir())
    if not cases:
        return None
    case = cases[0]
    flair, t1c = (np.asarray(read_image(case / f"{m}.nii.gz").data, np.float32) for m in ("flair", "t1c"))
    seg = np.asarray(read_image(case / "seg.nii.gz").data).astype(np.int32)
    brain = np.asarray(read_image(case / "brainmask.nii.gz").data) > 0
    area = (seg > 0).reshape(len(seg), -1).sum(1)
    k = int(np.argmax(area))
    zs = [z for z in (k - 8, k, k + 8) if 0 <= z < len(seg)][:n]
    fa, fb = np.concatenate([flair[z] for z in zs], 1), np.concatenate([t1c[z] for z in zs], 1)
    truth = np.concatenate([np.where(brain[z] & (seg[z] == 0), 5, seg[z]) for z in zs], 1)
    strokes = []  # short horizontal strokes through each class region (2 rows per class and slice)
    w = flair.shape[2]
    for j in range(len(zs)):
        part = truth[:, j * w : (j + 1) * w]
        for c in BRATS_NAMES:
            m = ndi.binary_erosion(part == c, iterations=2)
            rows = np.flatnonzero(m.sum(1) >= 6)
            for r in rows[[len(rows) // 3, 2 * len(rows) // 3]] if len(rows) >= 2 else []:
                cols = np.flatnonzero(m[r])
                run = cols[: min(len(cols), 40)]
                strokes.append((c, int(r) - 1, j * w + int(run[0]), j * w + int(run[-1]) + 1))
    return fa, fb, strokes, f"{case.name} z={zs}"


# --------------------------------------------------------------------------------------------------
# MSRS 480x640 pair with object boxes


MSRS_NAMES = {1: "person", 2: "bicycle", 3: "car", 4: "background"}


def _msrs_pair(n_background: int = 16, length: int = 30):
    """(ir path, vi path, brush strokes, extra stroke, name) of the MSRS test-split night pair with the
    most people (up to 3) and cars: a vertical stroke through each box's centre (half its height) and
    short horizontal background strokes that touch no box or its 6-px ring, as a user marks objects."""
    from napari_fusion.boxes import read_yolo, weak_labels
    from napari_fusion.io import read_image
    from napari_fusion.training.data import pair_split, shared_data_dir

    root = shared_data_dir()
    msrs = None if root is None else root / "ivif" / "MSRS"
    if msrs is None or not (msrs / "boxes" / "fusion").is_dir():
        return None
    split = pair_split(msrs / "ir")
    night = sorted(n for n, s in split.items() if s == "test" and "N" in n)
    boxes_of = {n: read_yolo(msrs / "boxes" / "fusion" / (Path(n).stem + ".txt"), (480, 640), n_classes=3) for n in night}
    name = max(night, key=lambda n: (min(sum(b.cls == 0 for b in boxes_of[n]), 3) + min(sum(b.cls == 2 for b in boxes_of[n]), 2), n))
    shape = read_image(msrs / "ir" / name).data.shape[:2]
    boxes = read_yolo(msrs / "boxes" / "fusion" / (Path(name).stem + ".txt"), shape, n_classes=3)
    strokes = []  # (class, [(row, col), ...])
    for bx in boxes:
        cy, cx, h = (bx.y0 + bx.y1) / 2, (bx.x0 + bx.x1) / 2, bx.y1 - bx.y0
        strokes.append((bx.label, [(y, cx) for y in np.linspace(cy - h / 4, cy + h / 4, max(2, int(h / 8)))]))
    taken = weak_labels(boxes, shape, ignore_ring=6, ignore_value=9) > 0
    rng, bg = np.random.default_rng(0), []
    while len(bg) < n_background + 2:
        y, x = int(rng.integers(4, shape[0] - 4)), int(rng.integers(0, shape[1] - length))
        if not taken[max(y - 3, 0) : y + 4, x : x + length].any():
            bg.append((4, [(y, x), (y, x + length / 2), (y, x + length)]))
    y, x = bg[-1][1][0]
    live = (4, int(y) - 1, int(x), int(x) + length)  # the Live stroke, as _paint_rows takes it
    return msrs / "ir" / name, msrs / "vi" / name, strokes + bg[:-2], bg[-2], live, f"MSRS {name} (test, night)"


def _paint_paths(layer, strokes) -> None:
    for c, pts in strokes:
        _brush(layer, c, pts)


# --------------------------------------------------------------------------------------------------
# report


def _fmt(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.1f}"


def _row(image: str, r: dict) -> str:
    t = r["times"]
    first = t[0] if t else float("nan")
    gaps = ", ".join(_fmt(b - a) for a, b in zip(t, t[1:])) or "–"
    loss = f"{r['losses'][0][1]:.3f} → {r['losses'][-1][1]:.3f}" if r["losses"] else "–"
    return (f"| {image} | `{r['model']}` | {r.get('when', 'first click on the model')} | {r['steps']} | **{_fmt(first)}** ({_fmt(r['cpu'][0] if r['cpu'] else None)}) "
            f"| {len(t)} | {gaps} | {_fmt(r['total'])} | {loss} | {', '.join(r['classes'])} |")


def _report(args, runs, lives, load0, load1, extra: list[str]) -> str:
    import napari
    import torch

    import napari_fusion

    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except Exception:  # noqa: BLE001
            return ""

    dirty = sorted({line[3:] for line in git("status", "--porcelain", "--", "src").splitlines() if len(line) > 3})
    code = f"commit {git('rev-parse', '--short', 'HEAD').strip() or '?'}" + (
        f" with uncommitted changes in {', '.join(dirty)}" if dirty else ""
    )
    cmd = "xvfb-run -a -s \"-screen 0 1600x1000x24\" python benchmarks/widget_timeline.py " + " ".join(sys.argv[1:])
    lines = [
        "# Fine-tune widget: timeline in the widget path",
        "",
        f"Written by `{cmd.strip()}` (issue 15).",
        "",
        f"**Machine.** {os.cpu_count()} CPU cores shared with other jobs: load average "
        f"{load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} (1 / 5 / 15 min) before the run, "
        f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} after; torch {torch.__version__} with "
        f"{args.threads} thread(s), CPU only; napari {napari.__version__}, napari-fusion "
        f"{napari_fusion.__version__} ({code}), Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "**What is timed.** A napari viewer under Xvfb; strokes painted with the brush (simulated mouse "
        "drags, one undoable paint per stroke); the **Fine-tune** button clicked; the seconds from the click "
        "to each change of the result Labels layer (its insertion, then each `events.data`), taken on the GUI "
        "thread. The first change is the *instant* result (the model's fused image, filter features of A, B "
        "and the fused image, a pixel head fitted on the strokes); the later ones are the *refreshed* results "
        "while the fusion trains (at most every 5 s, then the final one). In brackets: this process's CPU "
        "seconds over the same span (all threads; the other jobs on the machine make wall time longer). The "
        "dock was opened before the data, as from the Plugins menu (the widget then imports in the background "
        "what the first fit needs). The first click on a model includes loading its weights and fusing the "
        "pair; a click after one more stroke on the same model reuses its fused image and features (cached per "
        "model and pair), so its first labels cost the head fit only; the steps then train a copy of the "
        "fusion (the tuned model's first refresh fuses again). A stroke painted with Live off starts that "
        "preparation in the background (0.2 s after the stroke): on the MSRS pair the second click comes "
        "after it, with the cache emptied before the stroke, as after choosing another model.",
        "",
        "| image | model | click | steps | click → first labels, s (CPU s) | updates | seconds between updates | click → done, s | task loss (first → last step) | tuned classes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(img, r) for img, r in runs]
    if lives:
        lines += [
            "",
            "**Live** (after the run above, on the model it tuned): turning Live on refits at once (the first "
            "refit of a newly tuned model fuses once more; then the fused image and the features are cached per "
            "model and pair); then one more stroke, painted and released: seconds from the mouse release to the "
            "Labels update (0.5 s of it is the debounce that waits for the user to pause).",
            "",
            "| image | model | Live on → labels, s | stroke release → labels, s (CPU s) |",
            "|---|---|---|---|",
        ]
        lines += [f"| {img} | `{m}` | {_fmt(x['toggle'])} | **{_fmt(x['stroke'])}** ({_fmt(x['stroke_cpu'])}) |" for img, m, x in lives]
    lines += ["", *extra, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="fusion steps of the trainable models (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--models", nargs="+", default=["gifnet", "tdfusion"],
                   help="models on the IR/visible sample: each clicked with Steps 0, then after one more stroke with --steps")
    p.add_argument("--brats-model", default="multitaskvif")
    p.add_argument("--no-brats", action="store_true")
    p.add_argument("--msrs-model", default="multitaskvif-ivif", help="model on the MSRS 480x640 pair")
    p.add_argument("--no-msrs", action="store_true")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per job before giving up")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "widget_timeline.md")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import napari

    load0 = os.getloadavg()
    viewer = napari.Viewer(show=True, title="napari-fusion widget timeline")
    viewer.window.resize(1400, 900)
    runs, lives, extra = [], [], []

    # as a user: the dock first (Plugins menu), then the sample, then strokes with the brush
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    ir, vi = viewer.open_sample(PLUGIN, "ivif")
    shape = ir.data.shape[:2]
    strokes = _strokes_layer(viewer, shape, IVIF_NAMES)
    _paint_rows(strokes, IVIF_STROKES)
    w.source_a.set_layer(ir)
    w.source_b.set_layer(vi)
    w.strokes.set_layer(strokes)
    watch = _Watch(viewer)
    more = iter(IVIF_MORE)
    for model in args.models:
        image = f"RoadScene sample {shape[0]}x{shape[1]}, {np.count_nonzero(strokes.data)} px painted"
        r = _finetune(viewer, w, watch, model, 0, args.timeout)
        r["when"] = "first click on the model"
        runs.append((image, r))
        print(_row(image, r), flush=True)
        _paint_rows(strokes, [next(more)])  # the user paints one more stroke and clicks again
        image = f"RoadScene sample {shape[0]}x{shape[1]}, {np.count_nonzero(strokes.data)} px painted"
        w.steps.setValue(args.steps)
        r = _finetune(viewer, w, watch, w.model.label(), w.effective_steps(), args.timeout)
        r["when"] = "one more stroke, click again (model's fused image cached)"
        runs.append((image, r))
        print(_row(image, r), flush=True)
    lives.append((image, w.current_entry().label, _live(viewer, w, watch, strokes, IVIF_LIVE_STROKE, args.timeout)))
    print(lives[-1], flush=True)

    msrs = None if args.no_msrs else _msrs_pair()
    if msrs is None and not args.no_msrs:
        extra.append("MSRS: the shared data folder (`../shared/data`, `$NAPARI_FUSION_DATA`) was not found; no 480x640 row.")
    if msrs is not None:
        ir_path, vi_path, mstrokes, mextra, mlive, what = msrs
        ml = _new_scene(viewer, w, lambda: (viewer.open(str(ir_path), plugin=PLUGIN)[0], viewer.open(str(vi_path), plugin=PLUGIN)[0]),
                        MSRS_NAMES, lambda layer: _paint_paths(layer, mstrokes))
        shape = ml.data.shape
        image = f"{what} {shape[0]}x{shape[1]}, {np.count_nonzero(ml.data)} px painted"
        r = _finetune(viewer, w, watch, args.msrs_model, 0, args.timeout)
        runs.append((image, r))
        print(_row(image, r), flush=True)
        # as a user who chose the tuned model and paints one more stroke: the widget prepares the
        # model's work in the background after the stroke; the click comes once that is done
        w._cache.clear()
        t_stroke = time.perf_counter()
        _paint_paths(ml, [mextra])
        _spin(lambda: "features" in w._cache.tune and not (w._prepare_thread and w._prepare_thread.is_alive()), args.timeout)
        prep = time.perf_counter() - t_stroke
        image = f"{what} {shape[0]}x{shape[1]}, {np.count_nonzero(ml.data)} px painted"
        r = _finetune(viewer, w, watch, w.model.label(), args.steps, args.timeout)
        r["when"] = f"one more stroke, click once prepared (nothing cached before the stroke; prepared {prep:.1f} s after it)"
        runs.append((image, r))
        print(_row(image, r), flush=True)
        lives.append((image, w.current_entry().label, _live(viewer, w, watch, ml, mlive, args.timeout)))
        print(lives[-1], flush=True)
        extra.append(
            "MSRS strokes: a vertical stroke through the centre of each object box (half its height) and 16 short "
            "horizontal background strokes that touch no box or its 6-px ring, drawn from `boxes/fusion` of the pair; "
            "classes person, bicycle, car and one named background (class 0 of the result)."
        )

    mosaic = None if args.no_brats else _brats_mosaic()
    if mosaic is None and not args.no_brats:
        extra.append("BraTS: the shared data folder (`../shared/data`, `$NAPARI_FUSION_DATA`) was not found; no mosaic row.")
    if mosaic is not None:
        fa, fb, bstrokes, what = mosaic
        bl = _new_scene(viewer, w, lambda: (viewer.add_image(fa, name="flair"), viewer.add_image(fb, name="t1c")),
                        BRATS_NAMES, lambda layer: _paint_rows(layer, bstrokes))
        image = f"BraTS {what}, FLAIR + T1c {fa.shape[0]}x{fa.shape[1]}, {np.count_nonzero(bl.data)} px painted"
        r = _finetune(viewer, w, watch, args.brats_model, args.steps, args.timeout)
        runs.append((image, r))
        print(_row(image, r), flush=True)
        extra_stroke = next(s for s in bstrokes if s[0] == 5)
        extra_stroke = (5, extra_stroke[1] + 6, extra_stroke[2], extra_stroke[3])
        lives.append((image, w.current_entry().label, _live(viewer, w, watch, bl, extra_stroke, args.timeout)))
        print(lives[-1], flush=True)
        extra.append(
            "BraTS strokes: two short horizontal strokes (at most 40 px) through each class region of each slice, "
            "drawn from the ground truth (eroded by 2 px); value 5 is the brain outside the tumour."
        )

    load1 = os.getloadavg()
    text = _report(args, runs, lives, load0, load1, extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
