"""Training data: BraTS FLAIR/T1c slices with labels, IR/visible and medical pairs as unit images.

Everything is turned into float32 arrays in [0, 1] (sources) and int64 label maps, optionally packed
into one ``.npz`` so training can run on a machine without nibabel or the shared data folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "shared_data_dir",
    "pair_split",
    "training_names",
    "load_brats_case",
    "load_brats_split",
    "load_brats_training",
    "load_pair_folder",
    "load_training_data",
    "box_labels",
    "BOX_IGNORE_RING",
    "unit_to_u8",
    "pack_dataset",
    "load_packed",
    "random_crops",
]

#: pixels just outside a box that the task loss skips (box edges are where a box label is least sure)
BOX_IGNORE_RING = 4


def shared_data_dir() -> Path | None:
    """``$NAPARI_FUSION_DATA`` or ``../shared/data`` beside the repository, if it exists."""
    env = os.environ.get("NAPARI_FUSION_DATA")
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve()
    cands += [p / "shared" / "data" for p in here.parents[:6]]
    for c in cands:
        if c.is_dir() and (c / "README.md").exists():
            return c
    return None


def pair_split(folder: str | Path) -> dict[str, str]:
    """``{file name: "train" | "test"}`` for the files of one side of a pair folder.

    A dataset that ships a fixed split (``split.csv`` of ``name,split`` rows beside its ``ir``/``vi``
    folders, as MSRS does) uses it; files it does not list are left out. Other folders hold out
    every 5th sorted name (index % 5 == 0) for testing.
    """
    import csv

    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    fixed = folder.parent / "split.csv"
    if fixed.is_file():
        with fixed.open(newline="") as fh:
            given = {r[0].strip(): r[1].strip() for r in csv.reader(fh) if len(r) == 2 and r[1].strip() in ("train", "test")}
        return {n: given[n] for n in names if n in given}
    return index_split(names)


def index_split(names) -> dict[str, str]:
    """``{name: "train" | "test"}`` of a collection without a fixed split: every 5th sorted name
    (index % 5 == 0) is held out for testing (pair folders, remote-sensing scene folders)."""
    return {n: "test" if i % 5 == 0 else "train" for i, n in enumerate(sorted(names))}


def training_names(folder: Path) -> list[str]:
    """Sorted file names of a pair folder that are used for training (:func:`pair_split`:
    MSRS's ``split.csv``, elsewhere sorted index % 5 != 0)."""
    return [n for n, part in pair_split(folder).items() if part == "train"]


def unit_to_u8(x: np.ndarray) -> np.ndarray:
    """A unit image ([0, 1]) as uint8 (rounded)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _unit_in_mask(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    vals = vol[mask]
    lo, hi = np.percentile(vals, (0.5, 99.5)) if vals.size else (0.0, 1.0)
    out = np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    out[~mask] = 0
    return out


def load_brats_case(case_dir: str | Path, min_brain: float = 0.08) -> dict[str, np.ndarray]:
    """Axial slices of one BraTS case: ``a`` FLAIR, ``b`` T1c (unit), ``labels`` 0..4, ``z`` index."""
    import nibabel as nib

    case_dir = Path(case_dir)
    load = lambda n: np.asarray(nib.load(str(case_dir / f"{n}.nii.gz")).dataobj)  # noqa: E731
    mask = load("brainmask") > 0
    flair = _unit_in_mask(load("flair").astype(np.float32), mask)
    t1c = _unit_in_mask(load("t1c").astype(np.float32), mask)
    seg = load("seg").astype(np.int64)
    if seg.min() < 0 or seg.max() > 4:
        raise ValueError(f"{case_dir}: labels outside 0..4 (found {seg.min()}..{seg.max()})")
    keep = [z for z in range(mask.shape[2]) if mask[:, :, z].mean() >= min_brain]
    # axial slice z is (x, y) in the files' LPS order; (y, x) rows are the NIfTI reader's display
    # order (anterior at the top, patient's right on the left). Before 2026-11-30 the rows were
    # reversed; the models trained then saw flips and rotations, so they work either way.
    take = lambda v: np.ascontiguousarray(np.transpose(v[:, :, keep], (2, 1, 0)))  # noqa: E731
    return {"a": take(flair), "b": take(t1c), "labels": take(seg), "z": np.asarray(keep)}


def load_brats_split(split: str, root: str | Path | None = None, min_brain: float = 0.08) -> dict[str, np.ndarray]:
    """All slices of a BraTS split ('train', 'validation', 'test'), stacked, with a ``case`` index."""
    root = Path(root) if root else (shared_data_dir() or Path("missing")) / "labeled" / "BraTS2015_deepmedic"
    cases = sorted(p for p in (root / split).glob("*") if p.is_dir())
    if not cases:
        raise FileNotFoundError(f"no BraTS cases in {root / split}")
    parts = [load_brats_case(c, min_brain) for c in cases]
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("a", "b", "labels", "z")}
    out["case"] = np.concatenate([np.full(len(p["z"]), i) for i, p in enumerate(parts)])
    return out


def load_brats_training(root: str | Path | None = None) -> dict[str, np.ndarray]:
    """The BraTS train + validation slices (the test cases are held out): ``a``, ``b`` uint8, ``labels`` int64."""
    tr, va = load_brats_split("train", root=root), load_brats_split("validation", root=root)
    return {
        "a": unit_to_u8(np.concatenate([tr["a"], va["a"]])),
        "b": unit_to_u8(np.concatenate([tr["b"], va["b"]])),
        "labels": np.concatenate([tr["labels"], va["labels"]]).astype(np.int64),
    }


def read_gray_unit(path: Path) -> np.ndarray:
    from skimage import io as skio

    from ..color import rgb_to_ycbcr

    x = skio.imread(str(path))
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit image, got {x.dtype}")
    x = x.astype(np.float32) / 255.0
    if x.ndim == 3:
        x = rgb_to_ycbcr(x[..., :3])[..., 0]
    return x


def load_pair_folder(folder_a: str | Path, folder_b: str | Path, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Registered pairs (same file name in both folders) as unit gray/Y images."""
    fa, fb = Path(folder_a), Path(folder_b)
    names = sorted(p.name for p in fa.iterdir() if (fb / p.name).exists())
    if not names:
        raise FileNotFoundError(f"no pairs with the same name in {fa} and {fb}")
    names = names[:limit] if limit else names
    return [(read_gray_unit(fa / n), read_gray_unit(fb / n)) for n in names]


def random_crops(pairs, size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random (2, size, size) crops from a list of (a, b) pairs (padded by reflection if small)."""
    out = np.empty((n, 2, size, size), np.float32)
    for i in range(n):
        a, b = pairs[rng.integers(len(pairs))]
        if min(a.shape) < size:
            pad = [(0, max(0, size - a.shape[0])), (0, max(0, size - a.shape[1]))]
            a, b = np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect")
        y = rng.integers(a.shape[0] - size + 1)
        x = rng.integers(a.shape[1] - size + 1)
        out[i, 0], out[i, 1] = a[y : y + size, x : x + size], b[y : y + size, x : x + size]
    return out


def pack_dataset(out: str | Path, **arrays: np.ndarray) -> Path:
    """Write arrays into one compressed ``.npz`` (atomically) for training elsewhere."""
    from ..io.atomic import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return out


def load_packed(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of a packed ``.npz`` (no pickled objects allowed)."""
    with np.load(str(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def box_labels(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """Weak int64 labels from a YOLO box file (0 background, 1 person, 2 bicycle, 3 car; a ring of
    ``BOX_IGNORE_RING`` pixels around each box ``IGNORE_INDEX``); None when the file does not exist."""
    from ..boxes import read_yolo, weak_labels
    from ..methods.classes import IVIF_CLASSES
    from .losses import IGNORE_INDEX

    if not path.is_file():
        return None
    boxes = read_yolo(path, shape, n_classes=len(IVIF_CLASSES) - 1)
    return weak_labels(boxes, shape, ignore_ring=BOX_IGNORE_RING, ignore_value=IGNORE_INDEX, dtype=np.int64)


def load_training_data(task: str, data: str | Path = "auto") -> dict:
    """Training arrays for ``task`` ('brats' | 'ivif') from ``../shared/data`` (``auto``) or a packed npz.

    brats: ``{"a", "b", "labels"}`` (N, H, W), train + validation cases (the test cases are held out).
    ivif: ``{"pairs": [(a, b), ...]}`` uint8, MSRS + RoadScene training files (:func:`pair_split`), with
    ``"labels"`` (weak labels of the MSRS boxes, None for pairs without) when there are any.
    ``data`` may also be a folder: for brats a BraTS root with ``train/`` and ``validation/`` cases, for
    ivif a pair folder (``ir/`` + ``vi/``, or any two sub-folders with files of the same names), all used.
    """
    if task not in ("brats", "ivif"):
        raise ValueError(f"unknown task {task!r}; expected 'brats' or 'ivif'")
    if str(data) != "auto" and Path(data).is_dir():
        return _load_folder(task, Path(data))
    if str(data) != "auto":
        return _load_packed_task(task, Path(data))
    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError("no ../shared/data found for --data auto; set NAPARI_FUSION_DATA or pass a packed .npz")
    if task == "brats":
        return load_brats_training() | {"source": f"{root}/labeled/BraTS2015_deepmedic train+validation"}
    pairs, labels = [], []
    for sub in ("MSRS", "RoadScene"):
        fa, fb = root / "ivif" / sub / "ir", root / "ivif" / sub / "vi"
        if not fa.is_dir():
            raise FileNotFoundError(f"training folder {fa} does not exist")
        names = [n for n in training_names(fa) if (fb / n).exists()]
        if not names:
            raise FileNotFoundError(f"no training pairs in {fa} and {fb}")
        for n in names:
            a, b = unit_to_u8(read_gray_unit(fa / n)), unit_to_u8(read_gray_unit(fb / n))
            pairs.append((a, b))
            labels.append(box_labels(fa.parent / "boxes" / "fusion" / (Path(n).stem + ".txt"), a.shape))
    n_lab = sum(x is not None for x in labels)
    out = {"pairs": pairs, "source": f"{root}/ivif MSRS+RoadScene training split ({len(pairs)} pairs, {n_lab} with MSRS boxes)"}
    if n_lab:
        out["labels"] = labels
    return out


def _load_packed_task(task: str, path: Path) -> dict:
    """:func:`load_training_data` from a packed ``.npz`` (``a``, ``b``, ``labels`` or ``a_i``, ``b_i``, ``l_i``)."""
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist (expected 'auto', a packed .npz or a folder)")
    z = load_packed(path)
    if task == "brats":
        missing = {"a", "b", "labels"} - set(z)
        if missing:
            raise ValueError(f"{path} lacks BraTS arrays {sorted(missing)} (has {sorted(z)})")
        return {"a": z["a"], "b": z["b"], "labels": z["labels"].astype(np.int64), "source": str(path)}
    n = sum(1 for k in z if k.startswith("a_"))
    if n == 0:
        raise ValueError(f"{path} holds no image pairs (expected keys a_0, b_0, a_1, ...; has {sorted(z)[:6]})")
    out = {"pairs": [(z[f"a_{i}"], z[f"b_{i}"]) for i in range(n)], "source": str(path)}
    if any(f"l_{i}" in z for i in range(n)):  # box labels packed beside some pairs
        out["labels"] = [z[f"l_{i}"].astype(np.int64) if f"l_{i}" in z else None for i in range(n)]
    return out


def _load_folder(task: str, folder: Path) -> dict:
    """Training data from a folder given on the command line (clear errors when it is empty)."""
    if task == "brats":
        return load_brats_training(folder) | {"source": str(folder)}
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    named = {p.name.lower(): p for p in subs}
    if "ir" in named and "vi" in named:
        fa, fb = named["ir"], named["vi"]
    elif len(subs) == 2:
        fa, fb = subs
    else:
        raise FileNotFoundError(
            f"training folder {folder} holds no pair sub-folders (expected ir/ and vi/, or two folders of same-named images)"
        )
    pairs = load_pair_folder(fa, fb)  # FileNotFoundError naming both folders when empty
    return {"pairs": [(unit_to_u8(x), unit_to_u8(y)) for x, y in pairs], "source": f"{folder} ({len(pairs)} pairs)"}
