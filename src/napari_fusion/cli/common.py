"""What the commands share: the printed table, the progress bar, the batch report, CSV files."""
from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["format_table", "progress_bar", "print_report", "count_jobs", "mean_row", "write_csv", "writes_any_suffix"]


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


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr counting pairs (off when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, disable=None, dynamic_ncols=True)


def print_report(report) -> int:
    """Print a batch report's summary; the exit code (1 when a pair failed)."""
    print(report.summary())
    return 0 if report.ok else 1


def count_jobs(args) -> int:
    """How many pairs a fuse command will go through (0 when the folders cannot be planned)."""
    from ..engine.batch import plan_jobs

    try:
        jobs, problems = plan_jobs(args.a_dir, args.b_dir, args.out, suffix=args.format)
        return len(jobs) + len(problems)
    except Exception:
        return 0


def writes_any_suffix(p: Path) -> bool:
    """Whether a result may keep the format of ``p`` (labels of NIfTI files are written as TIFF)."""
    return not p.name.lower().endswith((".nii", ".nii.gz"))


def mean_row(rows: list[dict], cols: Sequence[str], label: str = "mean") -> dict:
    """A table row of the column means (NaN left out)."""
    import numpy as np

    return {"image": label, **{c: float(np.nanmean([r[c] for r in rows])) for c in cols}}


def write_csv(path: str | os.PathLike, rows: list[dict], columns: Sequence[str]) -> Path:
    """Write ``rows`` to a CSV file atomically (floats with 6 significant digits)."""
    from ..io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path
