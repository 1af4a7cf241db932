"""Detector-driven TDFusion: what the detector gains against what the image loses.

Each candidate is a TDFusion model file written by ``python -m napari_fusion.training.tdfusion_det``
(its command, with the settings that differ, goes in ``LABEL=FILE``'s label). For each one, every
MSRS pair is fused through ``napari_fusion.fuse`` with the loaded model (the public path); the claim
benchmark's detector task model (``ivif_task.run_input_det``: same architecture, budget and seeds) is
trained on the fused train-split images and scored on the 49 test-split pairs; the fusion metrics of
``napari-fusion evaluate`` are taken on the same test pairs; and the loss module's mean infrared weight
is read on the test pairs' people, cars and background (box labels). Reference rows: the infrared and
visible images alone (detector and metrics of the source as its own "fused" image).

    python benchmarks/tdfusion_det_tradeoff.py --threads 1 \\
        --models "shipped (max term 2.0)=src/napari_fusion/weights/tdfusion_ivif.safetensors" \\
                 "max term 0=/tmp/tdf_det_mw0.safetensors"

Writes docs/results/tdfusion_det_tradeoff.md (``--no-write``: print only).
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from _common import REPO, RESULTS, environment, markdown_table, print_flush, write_text

QUALITY = ("EN", "SD", "Qabf", "VIF")
TRAINING_KEYS = ("steps", "max_weight", "grad_target", "seed", "seconds")
FIGURE = REPO / "docs" / "images" / "tdfusion_det_tradeoff.png"


def quality(sources: dict, test: list[str], images: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean fusion metrics of ``images`` ((1, H, W) unit Y per pair) against the pair's sources
    (``ivif_task.load_inputs``'s ``ir`` and ``vi``)."""
    from napari_fusion.metrics import fusion_metrics

    rows = []
    for n in test:
        ir, vi = (np.rint(sources[n][k][0] * 255) for k in ("ir", "vi"))
        rows.append(fusion_metrics(np.rint(images[n][0] * 255), ir, vi, which=QUALITY))
    return {k: float(np.mean([r[k] for r in rows])) for k in QUALITY}


def weight_means(root, sources: dict, test: list[str], runner) -> dict[str, float]:
    """The loss module's mean infrared weight on the test pairs' people, cars and background."""
    from napari_fusion.training.data import box_labels

    acc: dict[str, list[float]] = {"person": [], "car": [], "background": []}
    for n in test:
        ir, vi = sources[n]["ir"][0], sources[n]["vi"][0]
        w = runner.intensity_weights(ir, vi)[0]
        lab = box_labels(root / "boxes" / "fusion" / (Path(n).stem + ".txt"), ir.shape)
        for k, v in (("person", 1), ("car", 3), ("background", 0)):
            if (lab == v).any():
                acc[k].append(float(w[lab == v].mean()))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def figure(rows: list[tuple[str, list[np.ndarray]]], path: Path) -> None:
    """One row per pair: its images side by side (half size), white gaps; written atomically."""
    from skimage import io as skio

    from napari_fusion.io.atomic import atomic_path

    lines = []
    for _, images in rows:
        gap = np.ones((images[0].shape[0], 8), np.float32)
        lines.append(np.concatenate([x for im in images for x in (np.clip(im, 0, 1), gap)][:-1], axis=1)[::2, ::2])
    sep = np.ones((6, lines[0].shape[1]), np.float32)
    mosaic = np.concatenate([x for r in lines for x in (r, sep)][:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        skio.imsave(str(tmp), (mosaic * 255).round().astype(np.uint8), check_contrast=False, extension=".png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, metavar="LABEL=FILE", help="candidate TDFusion model files")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--det-steps", type=int, default=1500)
    ap.add_argument("--det-crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "napari-fusion-bench" / "ivif_task"))
    ap.add_argument("--figure-pairs", nargs="*", default=None, help="test pairs of the figure (default: first night and day)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import ivif_task as it
    import napari_fusion as nf

    models = []
    for spec in args.models:
        label, sep, file = spec.rpartition("=")
        if not sep or not label or not Path(file).is_file():
            raise SystemExit(f"--models {spec!r}: give LABEL=FILE with an existing model file")
        models.append((label, Path(file)))
    t0 = time.perf_counter()
    root, cache = it.msrs_root(), Path(args.cache)
    split = it.split_names(root)
    names = split["train"] + split["test"]
    sources = it.load_inputs(root, names, cache, args.device, inputs=("ir", "vi"))
    rows, trained, shown = [], {}, {}
    for inp in ("ir", "vi"):
        runs = it.cached_runs("det", root, split, sources, inp, "source", cache, args)[0]
        q = quality(sources, split["test"], {n: sources[n][inp] for n in split["test"]})
        rows.append((f"{inp} alone", runs, q, None))
    for label, file in models:
        tag = hashlib.sha1(file.read_bytes()).hexdigest()[:10]
        runner = nf.load_model(file, device=args.device)
        fused = it.fused_cached(root, names, cache / f"fused_tdfusion_{tag}.npz", runner, args.device)
        data = {n: {"tdfusion": fused[n]} for n in names}
        shown[label] = fused
        runs = it.cached_runs("det", root, split, data, "tdfusion", tag, cache, args)[0]
        phases = [p["detector_driven"] for p in runner.meta.get("phases", []) if "detector_driven" in p]
        trained[label] = " then ".join(", ".join(f"{k} {p[k]}" for k in TRAINING_KEYS if k in p) for p in phases) \
            or "no detector-driven phase"
        rows.append((label, runs, quality(sources, split["test"], fused), weight_means(root, sources, split["test"], runner)))
        print_flush(f"{label}: mAP@0.5 {np.mean([r['all']['map50'] for r in runs]):.3f} ({time.perf_counter() - t0:.0f} s)")
    table = []
    for label, runs, q, w in rows:
        m = lambda part, k="map50": it.mean_sd([r[part][k] for r in runs])  # noqa: E731
        table.append([label, m("all"), m("night"), m("day"), m("all", "ap_person"), m("all", "ap_car")]
                     + [f"{q[k]:.3f}" for k in QUALITY]
                     + ([f"{w['person']:.2f} / {w['car']:.2f} / {w['background']:.2f}"] if w else ["—"]))
    text = (
        "# Detector-driven TDFusion: the detector's gain against the image's quality\n\n"
        f"Measured {environment(args.device)}; `python benchmarks/tdfusion_det_tradeoff.py --seeds "
        f"{' '.join(map(str, args.seeds))} --det-steps {args.det_steps} --det-crop {args.det_crop} --models ...` "
        f"({time.perf_counter() - t0:.0f} s with the cache).\n\n"
        "Each row's image (every MSRS pair fused through `napari_fusion.fuse` with that model file) trains the "
        f"claim benchmark's detector ({args.det_steps} steps, seeds {', '.join(map(str, args.seeds))}; "
        "[ivif_task.md](ivif_task.md)), scored on the 49 test-split pairs: mAP@0.5 mean ± std over "
        "seeds. Fusion metrics (as `napari-fusion evaluate`) on the same test pairs; the quality bar of the task issue "
        "is EN ≥ 6.6 and SD ≥ 40. Last column: the loss module's mean infrared weight on people / cars / background "
        "of the test pairs (0.5: neutral).\n\n"
        + markdown_table(["image", "mAP@0.5", "night", "day", "AP person", "AP car", *QUALITY, "w_IR people / cars / bg"],
                         table)
        + "\n\nModel files (their detector-driven training phases, from the files' metadata); each trained on the CPU "
        "from the shipped file by `python -m napari_fusion.training.tdfusion_det --model "
        "src/napari_fusion/weights/tdfusion_ivif.safetensors --out FILE --steps 600 --threads 1 --max-weight M` "
        "(plus `--grad-target weighted` where named; the +1050-steps file from the max-term-0 file with "
        "`--steps 1050 --seed 1`):\n\n"
        + "".join(f"- {label}: `{file.name}` ({trained[label]})\n" for label, file in models)
    )
    print_flush(text)
    if not args.no_write:
        test = split["test"]
        picks = args.figure_pairs or [next(n for n in test if Path(n).stem.endswith("N")),
                                      next(n for n in test if not Path(n).stem.endswith("N"))]
        figure([(n, [sources[n]["ir"][0], sources[n]["vi"][0]] + [shown[label][n][0] for label, _ in models]) for n in picks],
               FIGURE)
        write_text(RESULTS / "tdfusion_det_tradeoff.md", text.rstrip("\n") + "\n\n"
                   + f"![infrared, visible, then each model's fused image, pairs {', '.join(picks)}](../images/{FIGURE.name})\n")


if __name__ == "__main__":
    main()
