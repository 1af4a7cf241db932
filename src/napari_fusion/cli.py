"""``napari-fusion`` command line: batch fusion, enhancement, segmentation, evaluation, the demo.

Every command walks the same pipeline as the API and the widgets. Examples::

    napari-fusion methods
    napari-fusion fuse ir/ vi/ --method laplacian --out fused/         # pairs by file name
    napari-fusion fuse RoadScene/ --out fused/ --workers 2              # a pair-layout folder, 2 local workers
    napari-fusion fuse-large pan.tif ms.tif fused.tif --tile 2048       # a huge scene, disk to disk
    napari-fusion evaluate ir/ vi/ fused/ --csv metrics.csv
    napari-fusion demo --out demo_out
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "format_table"]


def format_table(rows: list[dict[str, Any]], columns: Sequence[str], *, floats: str = "{:.4f}") -> str:
    """A plain fixed-width text table (what the commands print)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else floats.format(v)
        return str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(vals: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, disable=None, dynamic_ncols=True)


def _print_report(report) -> int:
    print(report.summary())
    return 0 if report.ok else 1


def _count_jobs(args) -> int:
    from .engine.batch import plan_jobs

    try:
        jobs, problems = plan_jobs(args.a_dir, args.b_dir, args.out, suffix=args.format)
        return len(jobs) + len(problems)
    except Exception:
        return 0


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def _cmd_fuse(args) -> int:
    from .engine.batch import fuse_folder

    if Path(args.a_dir).is_file():
        return _fuse_files(args)
    bar = _bar(_count_jobs(args), "fuse")

    def tick(o):
        bar.update(1)

    try:
        report = fuse_folder(
            args.a_dir, args.b_dir, args.out, args.method, device=args.device, tile=args.tile, overwrite=args.overwrite,
            workers=args.workers, scheduler=args.scheduler, retries=args.retries, processes=not args.threads,
            suffix=args.format, progress=tick,
        )
    finally:
        bar.close()
    return _print_report(report)


def _fuse_files(args) -> int:
    """``fuse A_FILE B_FILE --out OUT_DIR``: one pair."""
    from .engine.batch import BatchJob, file_stem, fuse_job, output_path, run_jobs

    if not args.b_dir or not Path(args.b_dir).is_file():
        print(f"error: {args.a_dir} is a file; give its partner file as B", file=sys.stderr)
        return 2
    a, b = Path(args.a_dir), Path(args.b_dir)
    job = BatchJob(file_stem(a), a, b, output_path(args.out, file_stem(a), a, args.format))
    import functools

    report = run_jobs([job], functools.partial(fuse_job, method=args.method, device=args.device, tile=args.tile, overwrite=args.overwrite), retries=args.retries)
    return _print_report(report)


def _cmd_fuse_large(args) -> int:
    from tqdm import tqdm

    from .engine.batch import fuse_file_tiled, refuse_output_over_source

    out = Path(args.out_file)
    refuse_output_over_source(out, args.a_file, args.b_file)  # ValueError: error exit, never "skipped"
    if out.exists() and not args.overwrite:
        print(f"{out} exists; skipped (use --overwrite)")
        return 0
    bars: dict[str, Any] = {}

    def tick(p):
        bar = bars.get(p.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[p.stage] = tqdm(total=p.total, desc=p.stage, file=sys.stderr, disable=None)
        bar.n = p.done
        bar.refresh()

    try:
        fuse_file_tiled(args.a_file, args.b_file, out, args.method, tile=args.tile, overlap=args.overlap, device=args.device, pyramid=not args.no_pyramid, progress=tick)
    except Exception as err:  # noqa: BLE001 - reported, exit code 1
        print(f"FAILED {out}: {err}", file=sys.stderr)
        return 1
    finally:
        for b in bars.values():
            b.close()
    print(f"wrote {out}")
    return 0


def _cmd_enhance(args) -> int:
    import functools

    from .engine.batch import BatchJob, enhance_job, file_stem, images_by_name, output_path, run_jobs

    src = Path(args.in_dir)
    clashes: list = []  # two files with one name: reported, not guessed between
    files = {src.name: src} if src.is_file() else images_by_name(src, clashes)
    if not files and not clashes:
        print(f"error: no images in {src}", file=sys.stderr)
        return 2
    jobs = [BatchJob(file_stem(p), p, None, output_path(args.out, file_stem(p), p, args.format)) for p in files.values()]
    bar = _bar(len(jobs), "enhance")
    fn = functools.partial(enhance_job, method=args.method, device=args.device, tile=args.tile, overwrite=args.overwrite)
    try:
        report = run_jobs(jobs, fn, workers=args.workers, scheduler=args.scheduler, retries=args.retries, processes=not args.threads, progress=lambda o: bar.update(1))
    finally:
        bar.close()
    report.outcomes += clashes
    return _print_report(report)


def _segment_one(job, method: str, device: str, tile: int | None, overwrite: bool):
    """Fused image -> labels file (one job of ``segment FUSED_DIR``)."""
    import time

    from .api import segment
    from .engine.batch import PairOutcome
    from .io import read_image, write_image

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


def _cmd_segment(args) -> int:
    import functools

    from .engine.batch import BatchJob, file_stem, fuse_folder, images_by_name, output_path, run_jobs

    method = args.method
    if args.b_dir:  # two source folders: fuse and segment, labels under OUT/labels/
        report = fuse_folder(args.in_dir, args.b_dir, args.out, method, device=args.device, tile=args.tile, overwrite=args.overwrite, suffix=args.format)
        return _print_report(report)
    clashes: list = []  # two files with one name: reported, not guessed between
    files = images_by_name(Path(args.in_dir), clashes)
    if not files and not clashes:
        print(f"error: no images in {args.in_dir}", file=sys.stderr)
        return 2
    suffix = args.format or ".png"
    jobs = [BatchJob(file_stem(p), p, None, output_path(args.out, file_stem(p), p, suffix if _suffix_ok(p) else ".tif")) for p in files.values()]
    bar = _bar(len(jobs), "segment")
    fn = functools.partial(_segment_one, method=method, device=args.device, tile=args.tile, overwrite=args.overwrite)
    try:
        report = run_jobs(jobs, fn, progress=lambda o: bar.update(1))
    finally:
        bar.close()
    report.outcomes += clashes
    return _print_report(report)


def _suffix_ok(p: Path) -> bool:
    return not p.name.lower().endswith((".nii", ".nii.gz"))


def evaluate_folders(a_dir: str | os.PathLike, b_dir: str | os.PathLike | None, fused_dir: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Fusion metrics of every fused file against its pair; returns (rows, problems)."""
    from .api import evaluate
    from .engine.batch import images_by_name, plan_jobs

    clashes: list = []  # fused/x.png and fused/x.tif: which one to score is unclear
    fused = images_by_name(Path(fused_dir), clashes)
    jobs, problems = plan_jobs(a_dir, b_dir, fused_dir)
    rows, errors = [], [f"{p.name}: {p.error}" for p in problems + clashes]
    jobs = [j for j in jobs if j.name not in {c.name for c in clashes}]
    for job in jobs:
        f = fused.get(job.name)
        if f is None:
            errors.append(f"{job.name}: no fused image named {job.name}.* in {fused_dir}")
            continue
        try:
            rows.append({"image": job.name, **evaluate(f, job.path_a, job.path_b)})
        except Exception as err:  # noqa: BLE001 - one bad file does not stop the table
            errors.append(f"{job.name}: {err}")
    return rows, errors


def _mean_row(rows: list[dict], cols: Sequence[str], label: str = "mean") -> dict:
    import numpy as np

    return {"image": label, **{c: float(np.nanmean([r[c] for r in rows])) for c in cols}}


def _write_csv(path: str | os.PathLike, rows: list[dict], columns: Sequence[str]) -> Path:
    from .io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _cmd_evaluate(args) -> int:
    from .metrics import METRIC_NAMES

    if args.fused_dir is None:  # evaluate PAIR_DIR FUSED_DIR
        a_dir, b_dir, fused_dir = args.a_dir, None, args.b_dir
    else:
        a_dir, b_dir, fused_dir = args.a_dir, args.b_dir, args.fused_dir
    rows, errors = evaluate_folders(a_dir, b_dir, fused_dir)
    cols = list(METRIC_NAMES)
    table = rows + ([_mean_row(rows, cols)] if rows else [])
    print(format_table(table, ["image", *cols]))
    if args.csv:
        _write_csv(args.csv, table, ["image", *cols])
        print(f"wrote {args.csv}")
    for e in errors:
        print(f"FAILED {e}", file=sys.stderr)
    return 1 if errors or not rows else 0


def _cmd_methods(args) -> int:
    from .methods.registry import list_methods

    rows = []
    for m in list_methods():
        status = "ok"
        if m.weights and not (m.weights_path and m.weights_path.is_file()):
            status = "weights missing"
        rows.append({"name": m.name, "family": m.family, "outputs": "+".join(m.outputs), "weights": status, "description": m.description})
    print(format_table(rows, ["name", "family", "outputs", "weights", "description"]))
    return 0


def _cmd_demo(args) -> int:
    from .api import evaluate
    from .engine.pipeline import fuse_arrays
    from .io import read_pair, write_image
    from .methods.registry import default_method
    from .metrics import METRIC_NAMES
    from .samples import sample_paths

    out = Path(args.out)
    try:  # an unwritable --out fails here, before any fusing, naming the folder
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create the output folder {out}: {err.strerror or err}", file=sys.stderr)
        return 1
    pa, pb = sample_paths("ivif")
    a, b = read_pair(pa, pb)
    names = [args.method or default_method()] + ["average", "max", "laplacian"]
    names = list(dict.fromkeys(names))
    rows, failed = [], []
    print(f"sample pair: {pa.name} (infrared {a.data.shape}, visible {b.data.shape}; RoadScene)")
    for name in names:
        try:
            res = fuse_arrays(a.data, b.data, name, grid_a=a.grid, grid_b=b.grid, rgb_a=a.rgb, rgb_b=b.rgb, device=args.device)
            scores = evaluate(res.fused, a, b)
        except FileNotFoundError as err:  # weights not installed: say so, show the baselines
            print(f"skipped {name}: {err}", file=sys.stderr)
            continue
        except Exception as err:  # noqa: BLE001 - the baselines still run
            failed.append(f"{name}: {err}")
            print(f"FAILED {name}: {err}", file=sys.stderr)
            continue
        try:
            path = write_image(out / f"{name}.png", res.fused, like=a, grid=res.grid, rgb=res.fused.ndim == 3)
        except OSError as err:  # the folder cannot take files: the others would fail the same way
            print(f"error: {err}", file=sys.stderr)
            return 1
        rows.append({"method": name, **scores, "file": path.name})
    cols = ["method", *METRIC_NAMES]
    print(format_table(rows, cols))
    if not rows:
        print(f"error: no method could run; nothing was written to {out}", file=sys.stderr)
        return 1
    _write_csv(out / "metrics.csv", rows, [*cols, "file"])
    print(f"wrote {len(rows)} fused images and metrics.csv to {out}")
    return 1 if failed else 0


def _detect_one(job, runner: Any, min_area: int, device: str, tile: int | None, overwrite: bool, scores: bool, found: dict):
    """One pair -> ``OUT/NAME.txt`` (YOLO boxes); the boxes and A's shape go into ``found`` for scoring."""
    import time

    from .api import detect
    from .boxes import read_yolo, write_yolo
    from .engine.batch import PairOutcome
    from .io import Pair, read_image, read_pair

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
    from .boxes import box_map, read_class_names, read_yolo, relabel

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


def _cmd_detect(args) -> int:
    import functools

    from .boxes import class_names_of, write_class_names
    from .engine.batch import plan_jobs, run_jobs
    from .engine.pipeline import resolve_runner

    runner, mname, _ = resolve_runner(args.method, args.device)  # unknown method: fail before any work
    labels = class_names_of(runner.classes)
    if not runner.segments or not any(v > 0 for v in labels):
        from .methods.registry import list_methods

        segs = ", ".join(m.name for m in list_methods(segmenting_only=True)) or "none"
        raise ValueError(f"method {mname!r} does not segment, so it finds no objects; segmenting methods: {segs}")
    names = [labels.get(v, f"class {v}") for v in range(1, max(labels) + 1)]
    jobs, problems = plan_jobs(args.a_dir, args.b_dir, args.out, suffix=".txt")
    found: dict = {}
    fn = functools.partial(_detect_one, runner=runner, min_area=args.min_area, device=args.device, tile=args.tile,
                           overwrite=args.overwrite, scores=args.scores, found=found)
    bar = _bar(len(jobs), "detect")
    try:
        report = run_jobs(jobs, fn, progress=lambda o: bar.update(1))
    finally:
        bar.close()
    report.outcomes = problems + report.outcomes
    if jobs:
        write_class_names(Path(args.out) / "classes.txt", names)
    rc = _print_report(report)
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


# ------------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------------
def _int_at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {text}")
        return n

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _tile_size(text: str) -> int | None:
    """argparse type for --tile: ``auto`` (None: automatic), 0 (never tile) or a size in pixels."""
    if text.strip().lower() == "auto":
        return None
    return _count(text)


def _common(p: argparse.ArgumentParser, method_default: str | None = None, batch: bool = True) -> None:
    p.add_argument("--method", "-m", default=method_default, help="registered method name (see `napari-fusion methods`)" + ("" if method_default else "; default: the default method"))
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU; $NAPARI_FUSION_DEVICE overrides), cpu, cuda, cuda:N, mps")
    p.add_argument("--tile", type=_tile_size, default=None, help="tile size in pixels; auto (default): above ~4 Mpx, or the method's preferred CPU tile; 0: never tile")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip them)")
    p.add_argument("--format", default=None, help="output extension, e.g. .tif (default: A's format; JPEG becomes PNG)")
    if batch:
        p.add_argument("--workers", type=_positive_int, default=0, help="run pairs on a local Dask cluster with N workers (default: in-process)")
        p.add_argument("--scheduler", default=None, help="run pairs on an existing Dask cluster, e.g. tcp://host:8786 (given up after 5 s)")
        p.add_argument("--retries", type=_count, default=0, help="retry a pair that failed for a transient reason (I/O, memory) N times")
        p.add_argument("--threads", action="store_true", help="local Dask workers as threads of this process instead of processes")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``napari-fusion`` (subcommands fuse, fuse-large, enhance, segment, detect, evaluate, methods, demo)."""
    ap = argparse.ArgumentParser(prog="napari-fusion", description="Fuse images from different sensors (infrared/visible, MRI/CT/PET, pan/MS, volumes).")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fuse", help="fuse folders of pairs (same file name in A_DIR and B_DIR, or one pair-layout folder)")
    p.add_argument("a_dir", help="folder of source A images (the reference grid), or a pair-layout folder (ir/+vi/, MRI/+CT/, NAME/pan.tif+ms.tif)")
    p.add_argument("b_dir", nargs="?", default=None, help="folder of source B images (omit for a pair-layout folder)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    _common(p)
    p.set_defaults(func=_cmd_fuse)

    p = sub.add_parser("fuse-large", help="fuse one huge scene disk to disk, tile by tile (zarr or tiled GeoTIFF out, with a pyramid)")
    p.add_argument("a_file")
    p.add_argument("b_file")
    p.add_argument("out_file", help="output .zarr folder or .tif file")
    p.add_argument("--method", "-m", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-pyramid", action="store_true", help="do not write the 2x multiscale levels")
    p.set_defaults(func=_cmd_fuse_large)

    p = sub.add_parser("enhance", help="single-image enhancement of every image in a folder")
    p.add_argument("in_dir")
    p.add_argument("--out", "-o", required=True)
    _common(p, "gifnet")
    p.set_defaults(func=_cmd_enhance)

    p = sub.add_parser("segment", help="labels of fused images (IN_DIR), or fuse+segment two source folders (IN_DIR B_DIR)")
    p.add_argument("in_dir")
    p.add_argument("b_dir", nargs="?", default=None)
    p.add_argument("--out", "-o", required=True)
    _common(p, "tdfusion-brats", batch=False)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("detect", help="objects as boxes: fuse+segment pairs, one YOLO text file of boxes per pair (optionally scored: mAP@0.5)")
    p.add_argument("a_dir", help="folder of source A images (the reference grid), or a pair-layout folder (ir/+vi/)")
    p.add_argument("b_dir", nargs="?", default=None, help="folder of source B images (omit for a pair-layout folder)")
    p.add_argument("--out", "-o", required=True, help="output folder: NAME.txt per pair (class cx cy w h, normalised) and classes.txt")
    p.add_argument("--method", "-m", default=None, help="a segmenting method (see `napari-fusion methods`); YOLO class k is its label k+1")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--tile", type=_tile_size, default=None, help="tile size in pixels; auto (default): automatic; 0: never tile")
    p.add_argument("--min-area", type=_count, default=16, help="drop objects smaller than this many pixels (default 16)")
    p.add_argument("--truth", default=None, help="folder of true YOLO boxes NAME.txt: print AP@0.5 per class and mAP@0.5")
    p.add_argument("--scores", action="store_true", help="write each box's score as a 6th column")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip them, reading them back for --truth)")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("evaluate", help="fusion metrics of fused images against their pairs: A_DIR B_DIR FUSED_DIR (or PAIR_DIR FUSED_DIR)")
    p.add_argument("a_dir")
    p.add_argument("b_dir")
    p.add_argument("fused_dir", nargs="?", default=None)
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("demo", help="fuse the shipped infrared/visible sample with the default method and the baselines; write PNGs + metrics.csv")
    p.add_argument("--out", "-o", default="demo_out")
    p.add_argument("--method", "-m", default=None, help="the learned method to show (default: the default method)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (1 if any pair/file failed)."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:  # a device that is not there: bad usage, before any work
            from .engine.device import resolve_device

            resolve_device(args.device)
        return int(args.func(args) or 0)
    except (KeyError, ValueError, FileNotFoundError, NotADirectoryError, RuntimeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable output, unreachable scheduler: said plainly, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
