"""``napari-fusion segment`` and ``detect``: labels of fused images or pairs, objects as YOLO boxes."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .common import format_table, print_report, progress_bar, writes_any_suffix

__all__ = ["cmd_segment", "cmd_detect"]


def _segment_one(job, method: str, device: str, tile: int | None, overwrite: bool):
    """Fused image -> labels file (one job of ``segment FUSED_DIR``)."""
    import time

    from ..api import segment
    from ..engine.batch import PairOutcome
    from ..io import read_image, write_image

    t0 = time.perf_counter()
    if job.out.exists() and not overwrite:
        return PairOutcome(job.name, "skipped", job.out)
    img = read_image(job.path_a)
    lab = segment(img, None, method, device=device, tile=tile)
    if job.out.suffix.lower() == ".png":
        import numpy as np

        lab = lab.astype(np.uint8 if lab.max(initial=0) < 256 else np.uint16)
    write_image(job.out, lab, like=img, grid=img.grid, rgb=False)
    return PairOutcome(job.name, "done", job.out, seconds=time.perf_counter() - t0)


def cmd_segment(args) -> int:
    import functools

    from ..engine.batch import BatchJob, file_stem, fuse_folder, images_by_name, output_path, run_jobs

    method = args.method
    if args.b_dir:  # two source folders: fuse and segment, labels under OUT/labels/
        report = fuse_folder(args.in_dir, args.b_dir, args.out, method, device=args.device, tile=args.tile, overwrite=args.overwrite, suffix=args.format)
        return print_report(report)
    clashes: list = []  # two files with one name: reported, not guessed between
    files = images_by_name(Path(args.in_dir), clashes)
    if not files and not clashes:
        print(f"error: no images in {args.in_dir}", file=sys.stderr)
        return 2
    suffix = args.format or ".png"
    jobs = [BatchJob(file_stem(p), p, None, output_path(args.out, file_stem(p), p, suffix if writes_any_suffix(p) else ".tif")) for p in files.values()]
    bar = progress_bar(len(jobs), "segment")
    fn = functools.partial(_segment_one, method=method, device=args.device, tile=args.tile, overwrite=args.overwrite)
    try:
        report = run_jobs(jobs, fn, progress=lambda o: bar.update(1))
    finally:
        bar.close()
    report.outcomes += clashes
    return print_report(report)


def _detect_one(job, runner: Any, min_area: int, device: str, tile: int | None, overwrite: bool, scores: bool, found: dict):
    """One pair -> ``OUT/NAME.txt`` (YOLO boxes); the boxes and A's shape go into ``found`` for scoring."""
    import time

    from ..api import detect
    from ..boxes import read_yolo, write_yolo
    from ..engine.batch import PairOutcome
    from ..io import Pair, read_image, read_pair

    t0 = time.perf_counter()
    if job.out.exists() and not overwrite:
        shape = tuple(read_image(job.path_a).grid.shape)
        found[job.name] = (read_yolo(job.out, shape, with_score=True), shape)
        return PairOutcome(job.name, "skipped", job.out)
    a, b = read_pair(Pair(job.name, job.path_a, job.path_b, job.modality_a or "A", job.modality_b or "B"))
    boxes = detect(a, b, runner, min_area=min_area, device=device, tile=tile)
    shape = tuple(a.grid.shape)
    write_yolo(job.out, boxes, shape, with_score=scores)
    found[job.name] = (boxes, shape)
    return PairOutcome(job.name, "done", job.out, seconds=time.perf_counter() - t0)


def _score_detections(found: dict, truth_dir: str | os.PathLike, names: list[str]) -> tuple[Any, list[str]]:
    """mAP@0.5 of the detections against ``TRUTH_DIR/NAME.txt``; truth classes are matched to the
    method's by name when ``classes.txt`` lies in TRUTH_DIR or its parent, else by id."""
    from ..boxes import box_map, read_class_names, read_yolo, relabel

    truth_dir = Path(truth_dir)
    if not truth_dir.is_dir():
        raise NotADirectoryError(f"{truth_dir}: not a folder")
    cls_file = next((p for p in (truth_dir / "classes.txt", truth_dir.parent / "classes.txt") if p.is_file()), None)
    truth_names = read_class_names(cls_file) if cls_file is not None else None
    mapping: dict[int, int] = {}
    all_names = dict(enumerate(names))
    for t, tn in enumerate(truth_names or ()):
        mapping[t] = names.index(tn) if tn in names else len(names) + t
        all_names.setdefault(mapping[t], tn)
    preds, truths, errors = [], [], []
    for name, (boxes, shape) in sorted(found.items()):
        path = truth_dir / f"{name}.txt"
        if not path.is_file():
            errors.append(f"{name}: no truth file {path}")
            continue
        try:
            tb = read_yolo(path, shape, n_classes=len(truth_names) if truth_names else len(names), names=truth_names or names)
        except ValueError as err:
            errors.append(f"{name}: {err}")
            continue
        truths.append(relabel(tb, mapping, all_names))
        preds.append(boxes)
    return box_map(preds, truths, names=all_names), errors


def cmd_detect(args) -> int:
    import functools

    from ..boxes import class_names_of, write_class_names
    from ..engine.batch import plan_jobs, run_jobs
    from ..engine.pipeline import resolve_runner

    runner, mname, _ = resolve_runner(args.method, args.device)  # unknown method: fail before any work
    labels = class_names_of(runner.classes)
    if not runner.segments or not any(v > 0 for v in labels):
        from ..methods.registry import list_methods

        segs = ", ".join(m.name for m in list_methods(segmenting_only=True)) or "none"
        raise ValueError(f"method {mname!r} does not segment, so it finds no objects; segmenting methods: {segs}")
    names = [labels.get(v, f"class {v}") for v in range(1, max(labels) + 1)]
    jobs, problems = plan_jobs(args.a_dir, args.b_dir, args.out, suffix=".txt")
    found: dict = {}
    fn = functools.partial(_detect_one, runner=runner, min_area=args.min_area, device=args.device, tile=args.tile,
                           overwrite=args.overwrite, scores=args.scores, found=found)
    bar = progress_bar(len(jobs), "detect")
    try:
        report = run_jobs(jobs, fn, progress=lambda o: bar.update(1))
    finally:
        bar.close()
    report.outcomes = problems + report.outcomes
    if jobs:
        write_class_names(Path(args.out) / "classes.txt", names)
    rc = print_report(report)
    n = sum(len(b) for b, _ in found.values())
    print(f"{n} boxes in {len(found)} images ({mname}; classes: {', '.join(names)}) in {args.out}")
    if args.truth:
        score, errors = _score_detections(found, args.truth, names)
        rows = score.rows()
        print(format_table(rows, list(rows[0])))
        print(f"mAP@0.5 = {score.mean:.4f} over {len(score.per_class)} classes with truth boxes")
        for e in errors:
            print(f"FAILED {e}", file=sys.stderr)
        rc = rc or (1 if errors else 0)
    return rc
