"""Shared helpers of the benchmark scripts: test pairs from ../shared/data, tables, CSV, fusion.

Scripts in this folder import it as ``from _common import ...`` (Python puts a script's own folder
first on ``sys.path``). Everything written goes through :mod:`napari_fusion.io.atomic`, so a killed
benchmark never leaves a half-written table behind.
"""
from __future__ import annotations

import csv
import io
import math
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"

__all__ = [
    "REPO",
    "RESULTS",
    "TestPair",
    "DATASETS",
    "dataset_names",
    "iter_pairs",
    "gray8",
    "msrs_test_names",
    "held_out_names",
    "markdown_table",
    "write_csv",
    "read_csv",
    "write_text",
    "fmt_number",
    "environment",
    "resolve_device",
    "fuse_gray",
    "method_names",
    "print_flush",
]


# ----------------------------------------------------------------------------- test pairs
@dataclass
class TestPair:
    """One registered test pair as 8-bit gray / Y images on one grid (how the field evaluates)."""

    __test__ = False  # not a pytest test class

    dataset: str
    name: str
    a: np.ndarray  # uint8 (H, W)
    b: np.ndarray  # uint8 (H, W)


@dataclass(frozen=True)
class Dataset:
    key: str
    title: str
    folder: str  # relative to the shared data folder
    kind: str  # "pairs" (same file name in two sub-folders) or "remote" (NAME/pan.tif + ms.tif)
    sub_a: str = ""
    sub_b: str = ""
    select: Callable[[Path], list[str]] | None = None  # which names of side A's folder are test pairs
    note: str = ""


def held_out_names(folder: Path) -> list[str]:
    """Held-out test pairs of a pair folder (its side A), as training leaves them out
    (``napari_fusion.training.data.pair_split``): MSRS's fixed ``split.csv``, elsewhere every 5th
    sorted name (index % 5 == 0). ``training.data.training_names`` gives the rest."""
    from napari_fusion.training.data import pair_split

    return [n for n, part in pair_split(folder).items() if part == "test"]


def msrs_test_names() -> list[str]:
    """The MSRS test-split pairs (``ivif/MSRS/split.csv``)."""
    return held_out_names(_data_root() / "ivif" / "MSRS" / "ir")


DATASETS: dict[str, Dataset] = {
    d.key: d
    for d in (
        Dataset(
            "roadscene", "RoadScene (IR / visible)", "ivif/RoadScene", "pairs", "ir", "vi", held_out_names,
            "held-out pairs: sorted index % 5 == 0",
        ),
        Dataset(
            "msrs", "MSRS test (IR / visible)", "ivif/MSRS", "pairs", "ir", "vi", held_out_names,
            "the test split of `split.csv`",
        ),
        Dataset(
            "mri_ct", "MRI / CT", "medical/MRI_CT", "pairs", "MRI", "CT", held_out_names,
            "held-out pairs: sorted index % 5 == 0",
        ),
        Dataset(
            "mri_pet", "MRI / PET", "medical/MRI_PET", "pairs", "MRI", "PET", held_out_names,
            "held-out pairs: sorted index % 5 == 0",
        ),
        Dataset(
            "pan_ms", "PAN / MS intensity", "remote", "remote",
            note="all scenes; A = PAN, B = luma of the MS RGB bands brought onto the PAN grid; "
            "the shipped weights saw no PAN/MS data",
        ),
    )
}

# 0-based indices of the red, green, blue bands of each MS scene (remote/SOURCE.md, 1-based there)
_RGB_BANDS = {"WV2_GRIP": (4, 2, 1), "GeoEye1_GRIP": (2, 1, 0), "IKONOS_GRIP": (2, 1, 0), "Landsat8_LC80200392015216": (2, 1, 0)}


def dataset_names() -> list[str]:
    return list(DATASETS)


def _data_root() -> Path:
    from napari_fusion.training.data import shared_data_dir

    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError("the test pairs live in ../shared/data (or $NAPARI_FUSION_DATA); neither was found")
    return root


def gray8(data: Any, rgb: bool, name: str) -> np.ndarray:
    """Image data -> uint8 gray/Y (rounded), as the field's evaluators read images."""
    from napari_fusion.metrics import as_gray255

    return as_gray255(np.asarray(data), rgb=rgb, name=name).astype(np.uint8)


def _ms_intensity(ms: Any, scene: str) -> np.ndarray:
    """BT.601 luma of the MS RGB bands (or the band mean when unknown), as float32, native grid."""
    data = np.moveaxis(np.asarray(ms.data, dtype=np.float32), ms.channel_axis or 0, 0)
    rgb = _RGB_BANDS.get(scene)
    if rgb is None or max(rgb) >= data.shape[0]:
        return data.mean(axis=0)
    r, g, b = (data[i] for i in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def iter_pairs(dataset: str, limit: int | None = None) -> Iterator[TestPair]:
    """The test pairs of a dataset (see :data:`DATASETS`), at most ``limit``, in name order."""
    from napari_fusion.io import read_image

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    d = DATASETS[dataset]
    root = _data_root() / d.folder
    if d.kind == "pairs":
        fa, fb = root / d.sub_a, root / d.sub_b
        names = sorted(p.name for p in fa.iterdir() if (fb / p.name).is_file())
        if d.select:
            test = set(d.select(fa))
            names = [n for n in names if n in test]
        for n in names[:limit] if limit else names:
            a, b = read_image(fa / n), read_image(fb / n)
            yield TestPair(
                dataset, Path(n).stem, gray8(a.data, a.rgb, f"{d.sub_a}/{n}"), gray8(b.data, b.rgb, f"{d.sub_b}/{n}")
            )
    else:
        from napari_fusion.geometry import bring_onto

        scenes = sorted(p.name for p in root.iterdir() if (p / "pan.tif").is_file() and (p / "ms.tif").is_file())
        for s in scenes[:limit] if limit else scenes:
            pan, ms = read_image(root / s / "pan.tif"), read_image(root / s / "ms.tif")
            inten = bring_onto(_ms_intensity(ms, s), ms.grid, pan.grid, order=3)
            yield TestPair(dataset, s, gray8(pan.data, False, f"{s}/pan.tif"), gray8(inten, False, f"{s}/ms.tif"))


# ----------------------------------------------------------------------------- fusion
def method_names() -> list[str]:
    from napari_fusion.methods.registry import list_methods

    return [m.name for m in list_methods()]


def resolve_device(device: str) -> str:
    """'auto' -> the engine's choice (CUDA, MPS, CPU) when it exists, else CUDA or CPU."""
    try:
        from napari_fusion.engine.device import resolve_device as engine_resolve

        return str(engine_resolve(device))
    except ImportError:
        pass
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _pipeline():
    try:
        from napari_fusion.engine.pipeline import fuse_arrays
    except ImportError:
        return None
    return fuse_arrays


def fuse_gray(method: str, a: np.ndarray, b: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, str]:
    """Fuse two uint8 gray images; returns (uint8 fused, path used: 'pipeline' or 'runner').

    Goes through ``engine.pipeline.fuse_arrays`` (the path every user entry point takes) when it
    exists; before it landed, through the registry runner on unit images directly.
    """
    fuse_arrays = _pipeline()
    if fuse_arrays is not None:
        res = fuse_arrays(a, b, method, device=device)
        fused = np.asarray(res.fused)
        if fused.ndim == 3 and fused.shape[-1] in (3, 4):
            from napari_fusion.metrics import as_gray255

            fused = as_gray255(fused)
        if fused.dtype != np.uint8:
            fused = np.clip(np.rint(fused), 0, 255)
        return fused.astype(np.uint8), "pipeline"
    from napari_fusion.methods.registry import build_runner

    runner = build_runner(method, device=device)
    f = runner.fuse(a.astype(np.float32) / 255.0, b.astype(np.float32) / 255.0)
    return np.clip(np.rint(np.asarray(f, np.float64) * 255.0), 0, 255).astype(np.uint8), "runner"


# ----------------------------------------------------------------------------- tables and files
def fmt_number(v: Any, digits: int = 3) -> str:
    """Numbers for tables: fixed decimals for floats, '—' for missing/NaN, ints as is."""
    if v is None:
        return "—"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "—"
    return f"{f:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | Sequence[int] = 3, bold_max: Sequence[int] = ()) -> str:
    """A GitHub markdown table; numeric columns right-aligned; ``bold_max`` columns mark their best value."""
    ncol = len(headers)
    dig = [digits] * ncol if isinstance(digits, int) else list(digits)
    best = {}
    for c in bold_max:
        vals = [float(r[c]) for r in rows if isinstance(r[c], (int, float, np.floating)) and not math.isnan(float(r[c]))]
        if len(vals) > 1:
            best[c] = max(vals)
    cells = []
    for r in rows:
        line = []
        for c, v in enumerate(r):
            s = fmt_number(v, dig[c])
            if c in best and s != "—" and float(v) == best[c]:
                s = f"**{s}**"
            line.append(s)
        cells.append(line)
    numeric = [all(isinstance(r[c], (int, float, np.integer, np.floating)) or r[c] is None for r in rows) and rows for c in range(ncol)]
    sep = ["---:" if numeric[c] else "---" for c in range(ncol)]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(out)


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    from napari_fusion.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_csv(path: str | Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV atomically (full precision floats, empty cells for missing values)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    for r in rows:
        w.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in r])
    return write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV as dicts ([] when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def environment(device: str | None = None) -> str:
    """One line saying where and when numbers were measured (for the header of a results file)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    parts = [
        datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        f"commit {commit}",
        f"Python {platform.python_version()}",
        f"{platform.machine()} {platform.system()}",
    ]
    try:
        import torch

        parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
        if device and device.startswith("cuda") and torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    if device:
        parts.append(f"device {device}")
    return ", ".join(parts)


def print_flush(*args: Any) -> None:
    print(*args, flush=True)
    sys.stdout.flush()
