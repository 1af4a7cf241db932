"""Screenshots of the napari-fusion widgets, taken from a real viewer on the shipped sample pairs.

Run (needs a display; Xvfb works)::

    xvfb-run -a python docs/make_screenshots.py            # all, into docs/screenshots/
    xvfb-run -a python docs/make_screenshots.py fusion_ivif evaluate   # some

Every widget runs through its real buttons' code path (jobs inline: ``NAPARI_FUSION_SYNC=1``), so
what the pictures show is what a user gets. Learned methods are used when their weights are
installed; otherwise the script falls back to a classical method and says so.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NAPARI_FUSION_SYNC", "1")  # jobs run inline: deterministic pictures
os.environ.setdefault("NAPARI_FUSION_DEVICE", "cpu")

import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parent / "screenshots"
SIZE = (1400, 860)  # window size in pixels
PLUGIN = "napari-fusion"


def _usable(name: str) -> bool:
    """Whether a registered method can be built here (weights installed)."""
    from napari_fusion.methods.registry import build_runner, get_method

    try:
        get_method(name)
        build_runner(name, device="cpu")
        return True
    except Exception:  # noqa: BLE001
        return False


def _first_usable(*names: str) -> str:
    for n in names:
        if _usable(n):
            return n
    raise RuntimeError(f"none of {names} is usable")


def _viewer(key: str | None = None):
    import napari

    viewer = napari.Viewer(show=True, title="napari-fusion")
    viewer.window.resize(*SIZE)
    layers = list(viewer.open_sample(PLUGIN, key)) if key else []
    return viewer, layers


def _settle(viewer, wait: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.time() + wait
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def _dock(viewer, name: str):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return dock, widget


def _shoot(viewer, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer.reset_view()
    _settle(viewer, 0.6)
    path = OUT / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")
    return path


def _run(widget, start) -> None:
    """Start a widget job and wait for it (inline in sync mode; a worker otherwise)."""
    from qtpy.QtWidgets import QApplication

    task = start()
    app = QApplication.instance()
    while widget.running:
        app.processEvents()
        time.sleep(0.02)
    if task is None:
        raise RuntimeError(f"{type(widget).__name__} refused to start")
    if widget.progress.format() != "done":
        raise RuntimeError(f"{type(widget).__name__}: {widget.progress.format()} {getattr(widget, 'status', None) and widget.status.text()}")


def _fusion_method() -> str:
    return _first_usable("gifnet", "tdfusion", "laplacian")


# --------------------------------------------------------------------------------------------------
def shot_fusion_ivif() -> None:
    viewer, (ir, vi) = _viewer("ivif")
    _, w = _dock(viewer, "Fusion")
    w.method.select(_fusion_method())
    _run(w, w.fuse)
    vi.visible = False
    _shoot(viewer, "fusion_ivif")
    viewer.close()


def shot_fusion_mri_pet() -> None:
    viewer, (mri, pet) = _viewer("mri_pet")
    _, w = _dock(viewer, "Fusion")
    w.method.select(_fusion_method())
    _run(w, w.fuse)
    pet.visible = False
    mri.visible = False
    _shoot(viewer, "fusion_mri_pet")
    viewer.close()


def shot_fusion_volume() -> None:
    viewer, (t2, t2s) = _viewer("volume")
    _, w = _dock(viewer, "Fusion")
    w.method.select("laplacian")
    _run(w, w.fuse)
    t2s.visible = False
    t2.visible = False
    # a sagittal plane through the middle of the cord: S vertical, P horizontal
    viewer.dims.order = (2, 0, 1)
    lo, hi, _ = viewer.dims.range[2]
    viewer.dims.set_point(2, (lo + hi) / 2)
    _shoot(viewer, "fusion_volume")
    viewer.close()


# Strokes a user could paint on the RoadScene sample FLIR_00211 (301x496): (class, row, col0, col1).
IVIF_STROKES = (
    (1, 168, 270, 326), (1, 182, 268, 330), (1, 196, 272, 326), (1, 172, 35, 85),  # the two cars
    (2, 232, 40, 460), (2, 268, 90, 420), (2, 210, 120, 230), (2, 214, 360, 470),  # road
    (3, 35, 20, 470), (3, 105, 120, 250), (3, 118, 350, 470), (3, 70, 250, 480),  # sky and trees
)
IVIF_CLASSES = (("car", "#ff3b30"), ("road", "#8e8e93"), ("sky & trees", "#34c759"))


def _ivif_strokes(shape: tuple[int, int]) -> np.ndarray:
    """Horizontal strokes, 2 px thick, of three classes: ~2% of the pixels painted."""
    lab = np.zeros(shape, np.int32)
    for c, r, c0, c1 in IVIF_STROKES:
        lab[r : r + 2, c0:c1] = c
    return lab


def shot_finetune() -> dict:
    from napari_fusion.methods.registry import ClassInfo
    from napari_fusion.widgets._common import class_features, labels_colormap

    viewer, (ir, vi) = _viewer("ivif")
    _, w = _dock(viewer, "Fine-tune")
    w.source_a.set_layer(ir)
    w.source_b.set_layer(vi)
    base = _first_usable("tdfusion", "multitaskvif")
    w.model.select(base)
    classes = tuple(ClassInfo(i + 1, n, c) for i, (n, c) in enumerate(IVIF_CLASSES))
    strokes = viewer.add_labels(
        _ivif_strokes(ir.data.shape),
        name="strokes",
        colormap=labels_colormap(classes),
        features=class_features(classes),
    )
    w.strokes.set_layer(strokes)
    w.steps.setValue(int(os.environ.get("SCREENSHOT_FINETUNE_STEPS", "60")))
    t0 = time.time()
    _run(w, w.finetune)
    seconds = time.time() - t0
    vi.visible = False
    _shoot(viewer, "finetune")
    info = {"steps": w.steps.value(), "seconds": round(seconds, 1), "losses": w.losses[-1] if w.losses else None}
    print("fine-tune:", info)
    viewer.close()
    return info


def _tcga_glioma() -> tuple[Path, Path] | None:
    """FLAIR and T1c of TCGA-FG-6692 (TCGA-LGG, TCIA, CC BY 3.0) in the shared data folder, if present."""
    from napari_fusion.training.data import shared_data_dir

    root = shared_data_dir()
    case = root / "volumes" / "TCGA-FG-6692" if root else None
    if case is None or not (case / "flair.nii.gz").is_file():
        return None
    return case / "flair.nii.gz", case / "t1c.nii.gz"


def shot_segment() -> None:
    """The tumour segmenter on a glioma case (FLAIR + T1c on different grids) when the shared data
    is here; else on the shipped MRI/CT slice (a healthy brain: not what the model was trained for)."""
    seg = _first_usable("multitaskvif", "tdfusion-brats")
    pair = _tcga_glioma()
    if pair is not None:
        viewer, _ = _viewer(None)
        layers = [viewer.open(str(p), plugin=PLUGIN)[0] for p in pair]
        layers[0].name, layers[1].name = "FLAIR", "T1c"
    else:
        viewer, layers = _viewer("mri_ct")
    _, w = _dock(viewer, "Segment")
    w.method.select(seg)
    w.source_a.set_layer(layers[0])
    w.source_b.set_layer(layers[1])
    _run(w, w.segment)
    for layer in layers:
        layer.visible = False
    lab = viewer.layers[f"{seg} labels"]
    if lab.ndim == 3:  # show the slice with the most tumour
        z = int(np.argmax((np.asarray(lab.data) > 0).reshape(lab.data.shape[0], -1).sum(1)))
        viewer.dims.set_point(0, lab.data_to_world((z, 0, 0))[0])
    _shoot(viewer, "segment")
    viewer.close()


def shot_evaluate() -> None:
    viewer, (ir, vi) = _viewer("ivif")
    _, fw = _dock(viewer, "Fusion")
    methods = ["average", "laplacian"] + [m for m in ("tdfusion", "gifnet") if _usable(m)]
    for m in methods:
        fw.method.select(m)
        _run(fw, fw.fuse)
    viewer.window.remove_dock_widget(viewer.window.dock_widgets[f"Fusion ({PLUGIN})"]) if hasattr(
        viewer.window, "dock_widgets"
    ) else None
    _, ew = _dock(viewer, "Evaluate")
    for m in methods:
        ew.fused.set_layer(f"{m} (ir + vi)")
        _run(ew, ew.evaluate)
    for layer in viewer.layers:
        layer.visible = layer.name == f"{methods[-1]} (ir + vi)"
    _shoot(viewer, "evaluate")
    viewer.close()


SHOTS = {
    "fusion_ivif": shot_fusion_ivif,
    "fusion_mri_pet": shot_fusion_mri_pet,
    "fusion_volume": shot_fusion_volume,
    "segment": shot_segment,
    "evaluate": shot_evaluate,
    "finetune": shot_finetune,
}


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("SCREENSHOT_THREADS", "1")))
    names = argv or list(SHOTS)
    unknown = [n for n in names if n not in SHOTS]
    if unknown:
        print(f"unknown screenshot(s) {unknown}; known: {', '.join(SHOTS)}", file=sys.stderr)
        return 2
    failed = []
    for n in names:
        try:
            SHOTS[n]()
        except Exception as err:  # noqa: BLE001 - report and go on with the others
            print(f"{n}: {type(err).__name__}: {err}", file=sys.stderr)
            failed.append(n)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
