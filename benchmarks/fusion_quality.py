"""Fusion quality of every registered method on the real test pairs: EN, SD, SF, AG, MI, VIF, Qabf, SSIM, SCD.

For each dataset (RoadScene, MSRS held-out test pairs, MRI/CT, MRI/PET, PAN/MS scenes) and each
method, every pair is fused through the same path users take (``engine.pipeline.fuse_arrays``;
the registry runner directly until the engine exists), and the metrics are computed on the 8-bit
gray / Y images, as the field's evaluators do. Prints one markdown table of means per dataset and
writes ``docs/results/fusion_quality.md`` and ``.csv`` (atomically).

Rows of earlier runs are kept unless ``--fresh``: rerunning only the learned methods (e.g. on a GPU
machine) updates their rows and leaves the baselines' rows as they were.

    python benchmarks/fusion_quality.py                                   # everything
    python benchmarks/fusion_quality.py --methods average max laplacian --limit 5
    python benchmarks/fusion_quality.py --datasets msrs mri_pet --methods gifnet --device auto
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import (
    DATASETS,
    RESULTS,
    environment,
    fuse_gray,
    iter_pairs,
    markdown_table,
    method_names,
    print_flush,
    read_csv,
    resolve_device,
    write_csv,
    write_text,
)

from napari_fusion.metrics import METRIC_DESCRIPTIONS, METRIC_NAMES, fusion_metrics

KEY = ("dataset", "method")
HEADERS = ["dataset", "method", "pairs", *METRIC_NAMES, "fused_via", "device", "measured"]


def evaluate_method(pairs, method: str, device: str) -> tuple[dict[str, float], list[dict], str]:
    """Mean metrics of one method over pairs, the per-pair rows, and the fusion path used."""
    per_pair, via = [], ""
    for p in pairs:
        fused, via = fuse_gray(method, p.a, p.b, device=device)
        m = fusion_metrics(fused, p.a, p.b)
        per_pair.append({"dataset": p.dataset, "pair": p.name, "method": method, **m})
    means = {k: float(np.mean([r[k] for r in per_pair])) for k in METRIC_NAMES}
    return means, per_pair, via


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of ``old`` whose (dataset, method) was not measured now, then ``new``; ordered for reading."""
    fresh = {tuple(r[k] for k in KEY) for r in new}
    rows = [r for r in old if tuple(r[k] for k in KEY) not in fresh] + new
    ds_order = {d: i for i, d in enumerate(DATASETS)}
    try:
        m_order = {m: i for i, m in enumerate(method_names())}
    except Exception:  # a broken provider must not lose the table
        m_order = {}
    return sorted(rows, key=lambda r: (ds_order.get(r["dataset"], 99), m_order.get(r["method"], 99), r["method"]))


def _num(v) -> float | int | None:
    if v is None or v == "":
        return None
    if isinstance(v, (int, float)):
        return v
    try:
        return int(v)
    except ValueError:
        return float(v)


def dataset_table(rows: list[dict], dataset: str) -> str:
    body = [[r["method"], _num(r["pairs"]), *[_num(r[k]) for k in METRIC_NAMES]] for r in rows if r["dataset"] == dataset]
    return markdown_table(
        ["method", "pairs", *METRIC_NAMES], body, digits=[0, 0, *([3] * len(METRIC_NAMES))],
        bold_max=range(2, 2 + len(METRIC_NAMES)),
    )


def render_markdown(rows: list[dict], env: str, failures: list[str], command: str = "", limit: int | None = None) -> str:
    out = [
        "# Fusion quality on the real test pairs",
        "",
        "Written by `python benchmarks/fusion_quality.py` (see `benchmarks/README.md`); do not edit by hand.",
        f"Last run: {env}. Rows from earlier runs are kept (CSV column `measured`).",
    ]
    if command:
        out.append(f"Command of the last run: `{command}`.")
    if limit:
        out.append(f"Subset: at most {limit} test pairs per dataset, the first in name order (column `pairs`).")
    out += [
        "",
        "Means over the pairs of each dataset; all metrics are higher-is-better; the best value of each",
        "column is bold. Computed on 8-bit gray / Y (BT.601) images, 0..255, as the field's evaluators do:",
        "MI, VIF, SSIM and SCD sum the two source terms. MI is in bits (nats x 1.4427); SSIM uses",
        "`data_range=255` (see `napari_fusion/metrics/fusion.py`). Test pairs are the held-out pairs",
        "(MSRS: the test split of split.csv; RoadScene, MRI/CT, MRI/PET: sorted index % 5 == 0): the shipped `gifnet` and",
        "`tdfusion` weights were trained on the other pairs only (`napari_fusion/training/pack.py`).",
        "PAN/MS: all four scenes, none of them used in training.",
        "",
    ]
    for key, d in DATASETS.items():
        if not any(r["dataset"] == key for r in rows):
            continue
        note = f" — {d.note}" if d.note else ""
        out += [f"## {d.title}{note}", "", dataset_table(rows, key), ""]
    out += ["## Metrics", ""] + [f"- **{k}**: {METRIC_DESCRIPTIONS[k]}" for k in METRIC_NAMES] + [""]
    if failures:
        out += ["## Not measured in the last run", ""] + [f"- {f}" for f in failures] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), metavar="NAME",
                    help=f"datasets to measure (default all: {' '.join(DATASETS)})")
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME", help="registered methods (default: all)")
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="at most N pairs per dataset")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", type=Path, default=RESULTS / "fusion_quality",
                    help="output path without suffix; .md and .csv are written (default docs/results/fusion_quality)")
    ap.add_argument("--per-pair", type=Path, default=None, metavar="CSV", help="also write every pair's metrics here")
    ap.add_argument("--fresh", action="store_true", help="drop rows of earlier runs instead of merging")
    args = ap.parse_args(argv)

    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
    except ImportError:
        pass
    known = method_names()
    methods = args.methods or known
    unknown = [m for m in methods if m not in known]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; registered methods: {', '.join(known)}")
    device = resolve_device(args.device)
    env = environment(device)
    stamp = env.split(", ")[0] + ", " + env.split(", ")[1]
    print_flush(f"# fusion quality: {env}")

    new_rows, per_pair_rows, failures = [], [], []
    for ds in args.datasets:
        t0 = time.perf_counter()
        try:
            pairs = list(iter_pairs(ds, args.limit))
        except (FileNotFoundError, OSError, ValueError) as err:
            failures.append(f"{ds}: could not load the pairs ({err})")
            print_flush(f"{ds}: skipped, {err}")
            continue
        ds_rows = []
        for method in methods:
            try:
                means, pp, via = evaluate_method(pairs, method, device)
            except Exception as err:  # one broken method must not stop the table
                failures.append(f"{method} on {ds}: {type(err).__name__}: {err}")
                print_flush(f"{ds} / {method}: FAILED {type(err).__name__}: {err}")
                continue
            row = {"dataset": ds, "method": method, "pairs": len(pairs), **means,
                   "fused_via": via, "device": device, "measured": stamp}
            ds_rows.append(row)
            per_pair_rows += pp
        new_rows += ds_rows
        print_flush(f"\n## {DATASETS[ds].title} ({len(pairs)} pairs, {time.perf_counter() - t0:.1f} s)\n")
        print_flush(dataset_table(ds_rows, ds))

    old = [] if args.fresh else read_csv(args.out.with_suffix(".csv"))
    rows = _merge(old, [{k: (str(v) if not isinstance(v, float) else repr(v)) for k, v in r.items()} for r in new_rows])
    write_csv(args.out.with_suffix(".csv"), HEADERS, [[r.get(h, "") for h in HEADERS] for r in rows])
    command = " ".join(["python benchmarks/fusion_quality.py", *(sys.argv[1:] if argv is None else argv)])
    write_text(args.out.with_suffix(".md"), render_markdown(rows, env, failures, command, args.limit))
    if args.per_pair:
        cols = ["dataset", "pair", "method", *METRIC_NAMES]
        write_csv(args.per_pair, cols, [[r[c] for c in cols] for r in per_pair_rows])
    print_flush(f"\nwrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.csv')}")
    return 1 if failures and not new_rows else 0


if __name__ == "__main__":
    sys.exit(main())
