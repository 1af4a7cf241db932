"""``napari-fusion evaluate``, ``methods`` and ``demo``: scores of fused folders, the method table, the shipped sample fused."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import format_table, mean_row, write_csv

__all__ = ["evaluate_folders", "cmd_evaluate", "cmd_methods", "cmd_demo"]


def evaluate_folders(a_dir: str | os.PathLike, b_dir: str | os.PathLike | None, fused_dir: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Fusion metrics of every fused file against its pair; returns (rows, problems)."""
    from ..api import evaluate
    from ..engine.batch import images_by_name, plan_jobs

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


def cmd_evaluate(args) -> int:
    from ..metrics import METRIC_NAMES

    if args.fused_dir is None:  # evaluate PAIR_DIR FUSED_DIR
        a_dir, b_dir, fused_dir = args.a_dir, None, args.b_dir
    else:
        a_dir, b_dir, fused_dir = args.a_dir, args.b_dir, args.fused_dir
    rows, errors = evaluate_folders(a_dir, b_dir, fused_dir)
    cols = list(METRIC_NAMES)
    table = rows + ([mean_row(rows, cols)] if rows else [])
    print(format_table(table, ["image", *cols]))
    if args.csv:
        write_csv(args.csv, table, ["image", *cols])
        print(f"wrote {args.csv}")
    for e in errors:
        print(f"FAILED {e}", file=sys.stderr)
    return 1 if errors or not rows else 0


def cmd_methods(args) -> int:
    from ..methods.registry import list_methods

    rows = []
    for m in list_methods():
        status = "ok"
        if m.weights and not (m.weights_path and m.weights_path.is_file()):
            status = "weights missing"
        rows.append({"name": m.name, "family": m.family, "outputs": "+".join(m.outputs), "weights": status, "description": m.description})
    print(format_table(rows, ["name", "family", "outputs", "weights", "description"]))
    return 0


def cmd_demo(args) -> int:
    from ..api import evaluate
    from ..engine.pipeline import fuse_arrays
    from ..io import read_pair, write_image
    from ..methods.registry import default_method
    from ..metrics import METRIC_NAMES
    from ..samples import sample_paths

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
    write_csv(out / "metrics.csv", rows, [*cols, "file"])
    print(f"wrote {len(rows)} fused images and metrics.csv to {out}")
    return 1 if failed else 0
